"""Preprocessing agrees with pydicom's LUT functions and handles the edge cases of RELIABILITY item 7."""
import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from edgeinfer.errors import PreprocessError
from edgeinfer.preprocess import (PreprocessSpec, Window, apply_window, modality_lut, preprocess_pixels,
                                  select_frame)

CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"
SPEC = PreprocessSpec(target_size=(64, 64), window_sources=("voi_lut", "header", "auto"), mean=0.5, std=0.25)


def _pydicom_range(ds):
    """pydicom's windowing output range (see apply_windowing)."""
    if ds.PixelRepresentation == 0:
        lo, hi = 0, 2 ** ds.BitsStored - 1
    else:
        lo, hi = -(2 ** (ds.BitsStored - 1)), 2 ** (ds.BitsStored - 1) - 1
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        lo, hi = lo * float(ds.RescaleSlope) + float(ds.RescaleIntercept), hi * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return lo, hi


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "liver_1frame.dcm", "rtdose_1frame.dcm"])
def test_modality_lut_matches_pydicom(name):
    ds = pydicom.dcmread(CORPUS / name)
    arr = ds.pixel_array
    ours = modality_lut(arr, ds)
    ref = apply_modality_lut(arr, ds)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("function, center, width", [
    (f, c, w) for f in ("LINEAR", "LINEAR_EXACT", "SIGMOID") for c, w in ((600, 1600), (40, 400), (-100, 50))
] + [("LINEAR", 1000, 1)])
def test_window_matches_pydicom(function, center, width):
    ds = pydicom.dcmread(CORPUS / "CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    values = apply_modality_lut(ds.pixel_array, ds)
    ref = apply_voi_lut(values, ds, prefer_lut=False)
    lo, hi = _pydicom_range(ds)
    ours = apply_window(values, Window("header", center, width, function))
    np.testing.assert_allclose(ours * (hi - lo) + lo, ref, rtol=1e-5, atol=1e-6 * (hi - lo) + 1e-3)


def test_header_window_used_and_reported():
    ds = pydicom.dcmread(CORPUS / "MR_small.dcm")
    p = preprocess_pixels(ds.pixel_array, ds, SPEC)
    assert p.window["source"] == "header" and p.window["center"] == pytest.approx(float(ds.WindowCenter))
    assert p.tensor.shape == (1, 64, 64) and p.tensor.dtype == np.float32
    np.testing.assert_allclose(p.tensor[0], (p.display - 0.5) / 0.25, atol=1e-6)


def test_voi_lut_sequence_is_applied_like_pydicom():
    ds = pydicom.dcmread(CORPUS / "CT_small.dcm")
    del ds.RescaleSlope, ds.RescaleIntercept
    arr = ds.pixel_array.astype(np.int64)
    first, n = int(arr.min()), int(arr.max() - arr.min() + 1)
    table = np.linspace(0, 4095, n).astype(np.uint16)
    item = pydicom.Dataset()
    item.LUTDescriptor = [n, first, 12]
    item.LUTData = table.tolist()
    ds.VOILUTSequence = [item]
    ours = preprocess_pixels(ds.pixel_array, ds, PreprocessSpec(target_size=ds.pixel_array.shape, interpolation="nearest"))
    ref = apply_voi_lut(ds.pixel_array, ds, prefer_lut=True).astype(np.float64) / 4095.0
    assert ours.window == {"source": "voi_lut"}
    np.testing.assert_allclose(ours.display, ref, atol=1e-6)


def _synthetic(photometric="MONOCHROME2", bits=12, signed=False, shape=(80, 100)):
    ds = pydicom.Dataset()
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.Rows, ds.Columns = shape
    rng = np.random.default_rng(0)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2 ** bits)
    arr = rng.integers(lo, hi, size=shape).astype(np.int16 if signed else np.uint16)
    arr[:, : shape[1] // 2] = lo + (hi - lo) // 4  # a dark half and a noisy half
    return ds, arr


def test_monochrome1_is_inverted():
    ds2, arr = _synthetic("MONOCHROME2")
    ds1 = copy.deepcopy(ds2)
    ds1.PhotometricInterpretation = "MONOCHROME1"
    p2 = preprocess_pixels(arr, ds2, SPEC)
    p1 = preprocess_pixels(arr, ds1, SPEC)
    assert p1.inverted and not p2.inverted
    np.testing.assert_allclose(p1.display, 1.0 - p2.display, atol=1e-6)


@pytest.mark.parametrize("slope", [0, "0", float("nan"), "abc"])
def test_bad_rescale_slope_is_rejected(slope):
    ds, arr = _synthetic()
    ds.RescaleIntercept = 0
    ds.add_new(0x00281053, "DS", None)
    ds["RescaleSlope"]._value = slope  # bypass validation, as a broken scanner would
    with pytest.raises(PreprocessError, match="RescaleSlope"):
        preprocess_pixels(arr, ds, SPEC)


def test_missing_rescale_means_identity():
    ds, arr = _synthetic()
    np.testing.assert_array_equal(modality_lut(arr, ds), arr.astype(np.float32))


def test_signed_pixels():
    ds, arr = _synthetic(signed=True)
    p = preprocess_pixels(arr, ds, SPEC)
    assert np.isfinite(p.tensor).all() and 0 <= p.display.min() <= p.display.max() <= 1


def test_pixel_padding_excluded_from_auto_window_and_set_to_background():
    ds, arr = _synthetic()
    arr = arr.copy()
    arr[:10] = 0
    ds.PixelPaddingValue = 0
    spec = PreprocessSpec(target_size=arr.shape, window_sources=("auto",), interpolation="nearest")
    p = preprocess_pixels(arr, ds, spec)
    assert (p.display[:10] == 0).all()
    lo = np.percentile(arr[10:], 0.5)
    assert p.window["center"] - p.window["width"] / 2 == pytest.approx(lo, abs=2)


def test_multiframe_policy():
    spec = PreprocessSpec(target_size=(8, 8), multiframe="reject")
    assert select_frame(1, spec) == 0
    with pytest.raises(PreprocessError, match="multi-frame"):
        select_frame(5, spec)
    assert select_frame(5, PreprocessSpec(target_size=(8, 8), multiframe="middle")) == 2
    assert select_frame(5, PreprocessSpec(target_size=(8, 8), multiframe="first")) == 0


def test_rgb_and_uniform_images_are_rejected_clearly():
    ds = pydicom.dcmread(CORPUS / "SC_rgb_small_odd.dcm")
    with pytest.raises(PreprocessError, match="colour image"):
        preprocess_pixels(ds.pixel_array, ds, SPEC)
    ds, arr = _synthetic()
    with pytest.raises(PreprocessError, match="uniform"):
        preprocess_pixels(np.full_like(arr, 7), ds, PreprocessSpec(target_size=(8, 8), window_sources=("auto",)))


def test_keep_aspect_letterboxes():
    ds, arr = _synthetic(shape=(50, 100))
    p = preprocess_pixels(arr, ds, PreprocessSpec(target_size=(64, 64), keep_aspect=True, window_sources=("auto",)))
    assert p.display.shape == (64, 64)
    assert (p.display[:10] == 0).all() and (p.display[-10:] == 0).all()


def test_spec_round_trips_through_the_manifest_form():
    spec = PreprocessSpec(target_size=(224, 256), window_sources=("fixed",), window_center=40.0, window_width=400.0,
                          mean=0.1, std=0.2, channels=3)
    assert PreprocessSpec.from_manifest(spec.to_manifest()) == spec
    assert spec.digest() != SPEC.digest()
    ds, arr = _synthetic()
    assert preprocess_pixels(arr, ds, spec).tensor.shape == (3, 224, 256)
