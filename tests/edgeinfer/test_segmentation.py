"""Segmentation postprocessing: 3-D components across slices, small ones removed, volumes in mL against the
phantom's truth, and priorities from volumes."""
from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.segmentation import VolumePolicy, clean, components, to_source, volume_ml


def test_a_blob_spanning_slices_is_one_component_and_separate_blobs_are_not():
    m = np.zeros((5, 20, 20), bool)
    m[0:4, 2:6, 2:6] = True                 # one blob over 4 slices
    m[1, 14:16, 14:16] = True               # a small one on its own
    m[3, 10:12, 2:4] = True                 # touches nothing on slices 2 or 4
    m[2, 8:10, 8:10] = m[3, 9:11, 9:11] = True   # two pieces overlapping from one slice to the next: one
    labels, n = components(m)
    assert n == 4 and labels[m].min() >= 1 and (labels[~m] == 0).all()
    assert len(np.unique(labels[0:4, 2:6, 2:6])) == 1
    assert labels[2, 8, 8] == labels[3, 10, 10] != labels[1, 14, 14]
    # a U-shape that meets only on a later slice is one component too
    u = np.zeros((3, 10, 10), bool)
    u[0, 2, 2] = u[0, 2, 7] = True
    u[1, 2, 2] = u[1, 2, 7] = True
    u[2, 2, 2:8] = True
    assert components(u)[1] == 1


def test_small_components_go_and_volumes_are_in_ml():
    m = np.zeros((4, 10, 10), bool)
    m[0:2, 0:3, 0:3] = True                   # 18 voxels
    m[3, 8, 8] = True                         # 1 voxel
    kept, n = clean(m, 5)
    assert kept.sum() == 18 and not kept[3, 8, 8] and n == 1
    assert volume_ml(kept, (2.5, 0.5, 0.5)) == pytest.approx(18 * 0.625 / 1000)
    mask, _ = to_source(np.array([[[0.2, 0.5, 0.9]]], np.float32), [0.0], [0.0], (1, 3), 0.5)
    assert mask.tolist() == [[[False, True, True]]]


def test_the_phantom_s_volume_is_its_mask_s():
    from edgeinfer.phantom.ct_head import make_head_ct

    ct = make_head_ct(np.random.default_rng([2, 2]), index=2, finding="iph", size=64, thickness=2.5)
    assert volume_ml(ct.mask, (ct.thickness, ct.spacing, ct.spacing)) == pytest.approx(ct.volume_ml, abs=1e-3)
    assert components(ct.mask)[1] >= 1


def test_priority_from_volumes():
    p = VolumePolicy()
    assert p.priority({"bleed": 0.6}) == "STAT" and p.priority({"bleed": 0.2}) == "URGENT"
    assert p.priority({"bleed": 0.0}) == "ROUTINE" and p.priority({}) == "ROUTINE"
    only = VolumePolicy(rules=(("STAT", "sdh", 1.0),), otherwise="ROUTINE")
    assert only.priority({"iph": 50.0, "sdh": 0.5}) == "ROUTINE" and only.priority({"sdh": 1.0}) == "STAT"


# --- back to the source grid, and the mask a study record carries ------------------------------------
def test_to_source_maps_model_slices_onto_source_positions_and_sizes():
    from edgeinfer.segmentation import to_source

    probs = np.zeros((3, 8, 8), np.float32)       # model slices at 0, 2, 4 mm, 8x8 pixels
    probs[1, 2:6, 2:6] = 1.0
    mask, peak = to_source(probs, [0.0, 2.0, 4.0], [0.0, 1.0, 2.0, 3.0, 4.0], (16, 16), 0.5)
    assert mask.shape == (5, 16, 16) and mask.dtype == bool
    assert not mask[0].any() and not mask[4].any()          # no bleed on the first and last model slice
    assert mask[2, 4:12, 4:12].all() and not mask[2, :3].any()   # the square, twice the size
    assert peak.tolist() == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])  # halfway between model slices
    # at the threshold, linear interpolation halfway keeps the pixel (>=), just below it does not
    assert mask[1].any() and not to_source(probs, [0.0, 2.0, 4.0], [0.9], (8, 8), 0.5)[0].any()
    same, _ = to_source(probs, [0.0, 2.0, 4.0], [0.0, 2.0, 4.0], (8, 8), 0.5)
    assert (same == (probs >= 0.5)).all()                    # same grid: a plain threshold


def test_a_packed_mask_comes_back_bit_for_bit_and_a_bad_one_is_refused():
    from edgeinfer.segmentation import pack_mask, unpack_mask

    rng = np.random.default_rng(3)
    m = rng.random((2, 7, 13, 11)) > 0.8                      # sizes that are not multiples of 8
    packed = pack_mask(m)
    assert packed["shape"] == [2, 7, 13, 11] and isinstance(packed["data"], str)
    assert (unpack_mask(packed) == m).all()
    big = np.zeros((300, 512, 512), bool)
    big[100:140, 200:260, 200:260] = True
    assert len(pack_mask(big)["data"]) < 20_000               # a 300-slice CT's bleed is a few kB in a record
    for bad in ({"shape": [4]}, {**packed, "encoding": "png"}, {**packed, "shape": [3, 7, 13, 11]},
                {**packed, "data": "not base64 zlib"}):
        with pytest.raises(ValueError, match="not a packed mask"):
            unpack_mask(bad)


def test_the_segmentation_spec_reads_the_bundle_block():
    import json

    from edgeinfer.segmentation import SegmentationSpec
    from tests.helpers import ROOT

    block = json.loads((ROOT / "export" / "configs" / "phantom-ct-head.json").read_text())["segmentation"]
    spec = SegmentationSpec.from_manifest(block)
    assert spec.windows == ((40.0, 80.0), (80.0, 200.0), (600.0, 2800.0)) and spec.pixel_mm == 1.0
    assert spec.slice_mm is None and spec.roi == (256, 256) and spec.series.image_type == ("AXIAL",)
    assert spec.policy.priority({"hemorrhage": 0.6}) == "STAT" and spec.policy.priority({"hemorrhage": 0.2}) == "URGENT"
    assert spec.policy.priority({"hemorrhage": 0.0}) == "ROUTINE" and spec.keep_empty_frames


def test_clean_keeps_the_same_components_as_the_whole_volume_labelling():
    rng = np.random.default_rng(11)
    for _ in range(5):
        m = rng.random((12, 24, 24)) > 0.93                 # many small components, some joined across slices
        m[3:9, 5:12, 5:12] = True                            # and one big one
        labels, n = components(m)
        sizes = np.bincount(labels.ravel())
        for min_voxels in (1, 2, 4, 50):
            kept = sizes >= min_voxels
            kept[0] = False
            got, count = clean(m, min_voxels)
            assert (got == kept[labels]).all() and count == int(kept.sum())
    assert clean(np.zeros((3, 4, 4), bool), 2)[1] == 0
