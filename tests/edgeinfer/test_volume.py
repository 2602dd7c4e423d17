"""A series as a volume: slices in any order come out sorted along the normal with their HU; a missing slice
and a duplicated one are said; mixed orientations, a gantry tilt and mixed sizes are refused with a reason."""
from __future__ import annotations

import random

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from edgeinfer.errors import SeriesError
from edgeinfer.phantom.ct_head import generate_ct
from edgeinfer.volume import SliceHeader, plan_series, read_volume


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    out = tmp_path_factory.mktemp("ct_volume") / "ct"
    rows = generate_ct(out, 1, seed=8, size=64)
    return sorted((out / rows[0]["folder"] / "series02").glob("*.dcm")), np.load(out / rows[0]["mask"])


def _copy(files, tmp_path, change=None):
    """The series rewritten into ``tmp_path``; ``change(k, ds)`` may alter slice k's header."""
    out = []
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        if change is not None:
            change(k, ds)
        p = tmp_path / f.name
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


def test_slices_in_any_order_make_the_volume_in_order_with_their_hounsfield_units(series):
    files, mask = series
    shuffled = files[:]
    random.Random(1).shuffle(shuffled)
    v = read_volume(shuffled)
    assert v.values.shape == mask.shape and v.values.dtype == np.float32
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    assert v.plan.positions == pytest.approx(sorted(z)) and v.plan.notes == [] and v.plan.gaps == []
    for k in (0, len(files) // 2, len(files) - 1):
        ds = pydicom.dcmread(files[k])
        assert np.array_equal(v.values[k], apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
    assert v.sop_uids == [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    assert v.voxel_mm[0] == pytest.approx(z[1] - z[0]) and v.plan.normal == pytest.approx((0, 0, 1))


def test_a_missing_slice_is_a_gap_said_and_a_duplicate_is_kept_once(series, tmp_path):
    files, _ = series
    gap = read_volume(files[:5] + files[6:])
    assert len(gap.plan.gaps) == 1 and "a slice may be missing" in gap.plan.notes[0]
    (a, b), = gap.plan.gaps
    assert b - a == pytest.approx(2 * gap.plan.slice_spacing)
    dup = tmp_path / "dup.dcm"
    ds = pydicom.dcmread(files[3])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(dup, enforce_file_format=True)
    twice = read_volume([*files, dup])
    assert twice.values.shape[0] == len(files) and twice.plan.duplicates == [str(dup)]
    assert "repeat the position of another" in twice.plan.notes[0]


@pytest.mark.parametrize("change, words", [
    (lambda k, ds: setattr(ds, "ImagePositionPatient",
                           [ds.ImagePositionPatient[0], float(ds.ImagePositionPatient[1]) + 0.4 * k,
                            ds.ImagePositionPatient[2]]), "gantry tilt"),
    (lambda k, ds: k == 4 and setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]), "mixes image orientations"),
    (lambda k, ds: k == 2 and setattr(ds, "PixelSpacing", [0.9, 0.9]), "differ in size or pixel spacing"),
    (lambda k, ds: k == 1 and delattr(ds, "ImagePositionPatient"), "no usable Image Orientation"),
])
def test_a_geometry_the_runtime_will_not_use_is_refused_with_a_reason(series, tmp_path, change, words):
    files, _ = series
    with pytest.raises(SeriesError, match=words) as info:
        read_volume(_copy(files, tmp_path, change))
    assert info.value.code == "series-geometry"


def test_plan_series_on_headers_alone():
    def h(z, key=None, iop=(1, 0, 0, 0, 1, 0)):
        return SliceHeader(key or f"s{z}", f"1.2.{int(z * 10)}", iop, (-10.0, -10.0, z), (8, 8), (0.5, 0.5))

    plan = plan_series([h(5), h(0), h(2.5), h(10)])                       # 7.5 missing
    assert plan.positions == [0, 2.5, 5, 10] and plan.order == [1, 2, 0, 3] and plan.gaps == [(5.0, 10.0)]
    # a coronal series: the normal is anterior-posterior and the order follows it
    cor = [SliceHeader(f"c{y}", "1.2", (1, 0, 0, 0, 0, -1), (0.0, y, 0.0), (8, 8), (1, 1)) for y in (3, 1, 2)]
    assert plan_series(cor).order == [1, 2, 0]
    with pytest.raises(SeriesError, match="at least 2 slices"):
        plan_series([h(0)])
    with pytest.raises(SeriesError, match="same position"):
        plan_series([h(0, "a"), h(0, "b")])


# --- a real study's awkward series, each with its stated outcome ------------------------------------------
@pytest.fixture(scope="module")
def head():
    from edgeinfer.phantom.ct_head import make_head_ct

    return make_head_ct(np.random.default_rng([9, 1]), index=1, finding="iph", size=64, thickness=5.0)


def _write(datasets, folder):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(datasets):
        p = folder / f"{k:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def _by_series(datasets):
    out = {}
    for ds in datasets:
        out.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return out


def test_the_axial_brain_series_is_chosen_over_the_scout_and_the_bone_reconstruction(head):
    from edgeinfer.phantom.ct_head import awkward_series
    from edgeinfer.volume import SeriesRule, choose_series

    rng = np.random.default_rng(3)
    study = head.datasets + awkward_series(head, "scout", rng) + awkward_series(head, "bone", rng)
    chosen, passed = choose_series(_by_series(study), SeriesRule())
    assert chosen == head.series_uid and len(passed) == 2
    assert sorted(passed.values()) == sorted(["Image Type lacks AXIAL (a localizer)", "a 'bone' reconstruction"])
    none, why = choose_series(_by_series(study), SeriesRule(modalities=("MR",)))
    assert none is None and set(why.values()) == {"modality CT, not MR"}
    thin, why = choose_series(_by_series(head.datasets), SeriesRule(thickness=(0.5, 2.5)))
    assert thin is None and "slices of 5 mm, outside 0.5-2.5 mm" in why.values()


@pytest.mark.parametrize("kind", ["missing", "duplicate", "shuffled", "tilt", "mixed"])
def test_each_awkward_series_has_its_stated_outcome(head, tmp_path, kind):
    from edgeinfer.phantom.ct_head import AWKWARD, awkward_series

    paths = _write(awkward_series(head, kind, np.random.default_rng(4)), tmp_path / kind)
    n = len(head.datasets)
    if kind in ("tilt", "mixed"):
        with pytest.raises(SeriesError, match="gantry tilt" if kind == "tilt" else "mixes image orientations"):
            read_volume(paths)
        assert "refused" in AWKWARD[kind]
        return
    v = read_volume(paths)
    if kind == "missing":
        assert v.values.shape[0] == n - 1 and len(v.plan.gaps) == 1
    elif kind == "duplicate":
        assert v.values.shape[0] == n and len(v.plan.duplicates) == 1
    else:
        assert v.values.shape[0] == n and v.plan.notes == []
        assert v.sop_uids == [str(d.SOPInstanceUID) for d in head.datasets]       # back in order
    m = head.mask.astype(bool)
    assert v.values.shape[1:] == m.shape[1:]


def test_slices_are_brought_to_the_model_s_pixel_size_as_they_are_read_and_windowed(series):
    from edgeinfer.volume import windows

    files, mask = series
    full = read_volume(files)
    half = read_volume(files, pixel_mm=2 * full.plan.spacing[0])
    assert half.values.shape == (mask.shape[0], mask.shape[1] // 2, mask.shape[2] // 2)
    assert half.plan.spacing == pytest.approx((2 * full.plan.spacing[0], 2 * full.plan.spacing[1]))
    # area averaging: each output pixel is the mean of its 2 x 2 block
    k = mask.shape[0] // 2
    block = full.values[k].reshape(half.values.shape[1], 2, half.values.shape[2], 2).mean(axis=(1, 3))
    assert np.allclose(half.values[k], block, atol=1e-3)
    ch = windows(full.values[k:k + 1], [(40, 80), (600, 2800)])
    assert ch.shape == (2, 1, *mask.shape[1:]) and ch.min() >= 0 and ch.max() <= 1
    brain = (full.values[k] > 20) & (full.values[k] < 60)
    assert np.allclose(ch[0, 0][brain], (full.values[k][brain] - 0) / 80, atol=1e-6)
    assert (ch[0, 0][full.values[k] > 200] == 1).all() and (ch[0, 0][full.values[k] < -100] == 0).all()
    with pytest.raises(ValueError, match="width must be positive"):
        windows(full.values[:1], [(40, 0)])


def test_slices_are_interpolated_to_the_model_s_spacing_as_they_stream_past(series):
    files, _ = series
    native = read_volume(files)
    dz = native.voxel_mm[0]
    half = read_volume(files, slice_mm=dz / 2)                      # twice as many slices
    assert half.values.shape[0] == 2 * native.values.shape[0] - 1 and half.voxel_mm[0] == pytest.approx(dz / 2)
    assert np.allclose(half.values[::2], native.values)                                  # the source slices
    assert np.allclose(half.values[1::2], (native.values[:-1] + native.values[1:]) / 2, atol=1e-3)  # midway
    coarse = read_volume(files, slice_mm=2 * dz)
    assert np.allclose(coarse.values, native.values[::2]) and coarse.positions == pytest.approx(native.positions[::2])
    assert native.positions == pytest.approx(native.plan.positions)
