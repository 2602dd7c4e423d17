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
