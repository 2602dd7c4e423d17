"""Heatmaps placed on the stored image: the preprocessing's resize and letterbox undone, peaks in source
pixels, agreement measures, the overlay."""
from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.heatmap import (colour_overlay, image_heatmaps, normalise, peak_distance_mm, peak_rc, pearson,
                               spacing_mm, to_source, CamOutput)
from edgeinfer.preprocess import PreprocessSpec, content_box, resize


def _hot(grid=(8, 8), at=(2, 5)):
    g = np.zeros(grid, np.float32)
    g[at] = 5.0
    return g


@pytest.mark.parametrize("keep_aspect", [False, True])
@pytest.mark.parametrize("shape", [(1000, 800), (600, 1200), (256, 256)])
def test_a_hot_cell_lands_where_that_part_of_the_model_input_came_from(shape, keep_aspect):
    """Put a bright square in the stored image, preprocess its geometry (the same resize and letterbox), find
    the grid cell it falls in: the cell's peak, mapped back, lies in the square."""
    spec = PreprocessSpec(target_size=(256, 256), keep_aspect=keep_aspect)
    rows, cols = shape
    img = np.zeros(shape, np.float32)
    r0, c0 = int(rows * 0.30), int(cols * 0.62)
    img[r0:r0 + rows // 8, c0:c0 + cols // 8] = 1.0
    model_input = resize(img, spec)                                   # the runtime's own resize
    cell = np.unravel_index(np.argmax(model_input.reshape(8, 32, 8, 32).mean(axis=(1, 3))), (8, 8))
    r, c = peak_rc(_hot(at=cell), shape, spec)
    assert 0 <= r < rows and 0 <= c < cols
    assert abs(r - (r0 + rows / 16)) <= rows / 8 + 1 and abs(c - (c0 + cols / 16)) <= cols / 8 + 1, (r, c)
    on_source = to_source(_hot(at=cell), shape, spec)
    assert on_source.shape == shape
    assert on_source[int(r), int(c)] == pytest.approx(on_source.max(), rel=0.02)   # the same peak, resampled


def test_the_letterbox_is_cut_off_before_the_map_is_stretched_back():
    spec = PreprocessSpec(target_size=(256, 256), keep_aspect=True)
    assert content_box((1000, 500), spec) == (0, 64, 256, 128)
    assert content_box((500, 1000), spec) == (64, 0, 128, 256)
    assert content_box((500, 1000), PreprocessSpec(target_size=(256, 256))) == (0, 0, 256, 256)
    # a map hot only in the letterbox's left band never reaches the image
    g = np.zeros((8, 8), np.float32)
    g[:, 0] = 1.0
    assert to_source(g, (1000, 500), spec).max() < 0.05


def test_a_scaled_copy_has_the_asked_size():
    spec = PreprocessSpec(target_size=(256, 256))
    assert to_source(_hot(), (3000, 2500), spec, size=(600, 500)).shape == (600, 500)


def test_agreement_measures():
    a = np.random.default_rng(0).standard_normal((8, 8))
    assert pearson(a, a) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    assert pearson(a, 3 * a + 2) == pytest.approx(1.0)
    assert pearson(np.ones((8, 8)), a) is None
    with pytest.raises(ValueError, match="different shapes"):
        pearson(a, a[:4])
    assert peak_distance_mm((10, 10), (13, 14), [0.5, 0.5]) == pytest.approx(2.5)
    assert peak_distance_mm((10, 10), (13, 14), None) is None


def test_display_scale_and_overlay():
    assert normalise(np.array([-2.0, 0.0, 1.0, 4.0])).tolist() == [0.0, 0.0, 0.25, 1.0]
    assert normalise(np.array([-2.0, -1.0])).tolist() == [0.0, 0.0]
    grey = np.full((64, 64), 0.5, np.float32)
    heat = np.zeros((64, 64), np.float32)
    heat[20:30, 20:30] = 1.0
    out = colour_overlay(grey, heat)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (out[0, 0] == 127).all()                  # no heat: the grey image, untouched
    assert len(set(out[25, 25].tolist())) > 1        # heat: coloured


def test_spacing_from_the_header():
    from pydicom import Dataset

    ds = Dataset()
    assert spacing_mm(ds) is None
    ds.ImagerPixelSpacing = [0.2, 0.25]
    assert spacing_mm(ds) == [0.2, 0.25]
    ds.PixelSpacing = [0.1, 0.1]
    assert spacing_mm(ds) == [0.1, 0.1]
    ds.PixelSpacing = [0, 0.1]                       # unusable: the next one
    assert spacing_mm(ds) == [0.2, 0.25]


def test_one_heatmap_per_urgent_label_at_or_above_the_threshold_highest_first():
    cam_out = CamOutput("cam", ("a", "b", "c"), (8, 8))
    cam = np.stack([_hot(at=(1, 1)), _hot(at=(6, 6)), _hot(at=(3, 3))])
    spec = PreprocessSpec(target_size=(256, 256))
    maps = image_heatmaps(cam, {"a": 0.6, "b": 0.95, "c": 0.99}, cam_out, ["a", "b"], 0.5, (512, 512), spec,
                          [0.2, 0.2])
    assert [m["label"] for m in maps] == ["b", "a"]           # c is not urgent
    assert len(maps[0]["grid"]) == 8 and maps[0]["grid"][6][6] == 5.0
    assert maps[0]["peak_rc"] == list(peak_rc(cam[1], (512, 512), spec)) and maps[0]["spacing_mm"] == [0.2, 0.2]
    assert image_heatmaps(cam, {"a": 0.4, "b": None}, cam_out, ["a", "b"], 0.5, (512, 512), spec, None) == []
    cam[0, 0, 0] = np.nan                                     # a non-finite map is left out, not shown
    assert image_heatmaps(cam, {"a": 0.9}, cam_out, ["a"], 0.5, (512, 512), spec, None) == []
