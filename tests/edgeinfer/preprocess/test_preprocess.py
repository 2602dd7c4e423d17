"""Preprocessing agrees with pydicom's LUT functions and handles the edge cases of RELIABILITY item 7."""
import copy
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from edgeinfer.errors import PreprocessError
from helpers import synthetic_image
from edgeinfer.preprocess import (MIN_CONTRAST, PreprocessSpec, Window, apply_window, contrast, modality_lut,
                                  preprocess_pixels, select_frame)

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


_synthetic = synthetic_image  # 80 x 100, 12 bits, a dark half and a noisy half


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


# --- header values in messages ------------------------------------------------------------------
@pytest.mark.parametrize("value, shown", [("PALETTE COLOR", "PALETTE COLOR"), ("DOE JOHN 1234", "<unlisted CS>"),
                                          ("Doe^John", "<invalid CS>")])
def test_photometric_is_shown_only_when_it_is_a_known_term(value, shown):
    ds, arr = _synthetic()
    ds["PhotometricInterpretation"]._value = value  # bypass validation, as a broken scanner would
    with pytest.raises(PreprocessError) as grey:
        preprocess_pixels(arr, ds, SPEC)
    with pytest.raises(PreprocessError) as colour:
        preprocess_pixels(np.stack([arr] * 3, axis=-1), ds, SPEC)
    assert f"photometric interpretation {shown} is not greyscale" in grey.value.reason
    assert f"colour image ({shown})" in colour.value.reason
    if shown != value:
        assert "DOE" not in grey.value.reason.upper() + colour.value.reason.upper()


# --- windows that leave no usable contrast --------------------------------------------------------
FALLBACK = PreprocessSpec(target_size=(64, 64), window_sources=("voi_lut", "header", "auto"))


def _with_window(center, width, function=None):
    ds, arr = _synthetic()  # 12-bit: stored values 0..4095
    ds.PatientName, ds.PatientID = "CANARY^NAME", "CANARY-ID-77"
    ds.WindowCenter, ds.WindowWidth = center, width
    if function:
        ds.VOILUTFunction = function
    return ds, arr


def _with_voi_lut(first, n=256):
    ds, arr = _synthetic()
    ds.PatientName, ds.PatientID = "CANARY^NAME", "CANARY-ID-77"
    item = pydicom.Dataset()
    item.LUTDescriptor = [n, first, 12]
    item.LUTData = np.linspace(0, 4095, n).astype(np.uint16).tolist()
    ds.VOILUTSequence = [item]
    return ds, arr


FLAT_CASES = {
    "width 1e308": (lambda: _with_window(2048, 1e308), "header", "header window c=2048 w=1e+308"),
    "width 1e9": (lambda: _with_window(2048, 1e9), "header", "header window c=2048 w=1e+09"),
    "width 1e6": (lambda: _with_window(2048, 1e6), "header", "header window c=2048 w=1e+06"),
    "window below every pixel": (lambda: _with_window(-1000, 100), "header", "header window c=-1000 w=100"),
    "window above every pixel": (lambda: _with_window(10000, 100), "header", "header window c=10000 w=100"),
    "VOI LUT above every pixel": (lambda: _with_voi_lut(5000), "voi_lut", "VOI LUT"),
}


@pytest.mark.parametrize("case", list(FLAT_CASES))
def test_flat_window_falls_back_to_the_next_source_and_is_recorded(case):
    build, _source, described = FLAT_CASES[case]
    ds, arr = build()
    p = preprocess_pixels(arr, ds, FALLBACK)
    assert p.window["source"] == "auto"
    [rejected] = p.window["rejected"]
    assert rejected.startswith(f"{described} leaves the image flat (spread "), rejected
    assert contrast(p.display, None) > 0.5  # the automatic window shows the noisy half
    assert "CANARY" not in str(p.window)


@pytest.mark.parametrize("case", list(FLAT_CASES))
def test_flat_window_without_a_fallback_is_refused_with_a_reason(case):
    build, source, described = FLAT_CASES[case]
    ds, arr = build()
    with pytest.raises(PreprocessError) as err:
        preprocess_pixels(arr, ds, PreprocessSpec(target_size=(64, 64), window_sources=(source,)))
    reason = err.value.reason
    assert reason.startswith(f"no usable contrast after windowing: {described} leaves the image flat"), reason
    assert "add 'auto'" in err.value.hint
    assert "CANARY" not in str(err.value)


def test_every_source_tried_is_listed_when_none_gives_contrast():
    ds, arr = _with_window(2048, 1e308)
    with pytest.raises(PreprocessError) as err:
        preprocess_pixels(np.full_like(arr, 7), ds, FALLBACK)
    assert err.value.reason == ("no usable contrast after windowing: no usable VOI LUT in the header; "
                                "header window c=2048 w=1e+308 leaves the image flat (spread 0 < 0.02); "
                                "auto window: the image is uniform (no contrast to read)")


def test_contrast_ignores_padding_and_keeps_a_good_window():
    ds, arr = _synthetic(shape=(200, 200))
    arr = arr.copy()
    arr[:, :190] = 0  # 95 % of the image is padding
    ds.PixelPaddingValue = 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    p = preprocess_pixels(arr, ds, FALLBACK)
    assert p.window["source"] == "header" and "rejected" not in p.window


def test_low_contrast_but_readable_window_is_kept():
    ds, arr = _synthetic()
    ds.WindowCenter, ds.WindowWidth = 2048, 40000  # ~10 times wider than the data: dim, still readable
    p = preprocess_pixels(arr, ds, FALLBACK)
    assert p.window["source"] == "header" and "rejected" not in p.window
    assert MIN_CONTRAST < contrast(p.display, None) < 0.2


def test_corpus_ct_thumbnail_whose_preset_misses_its_pixels():
    """pydicom's 16x16 CT thumbnail: its soft-tissue preset (c=30 w=100) lies below every pixel."""
    ds = pydicom.dcmread(CORPUS / "dicomdirtests" / "77654033" / "CT2" / "17136")
    p = preprocess_pixels(ds.pixel_array, ds, FALLBACK)
    assert p.window["source"] == "auto"
    assert p.window["rejected"] == ["header window c=30 w=100 leaves the image flat (spread 0 < 0.02)"]
    with pytest.raises(PreprocessError, match="no usable contrast"):
        preprocess_pixels(ds.pixel_array, ds, PreprocessSpec(target_size=(16, 16), window_sources=("header",)))


def test_phantoms_keep_their_own_window_and_voi_lut(phantom_dir):
    """No generated radiograph (MONOCHROME1 and 2, with and without presets) is passed over."""
    seen = set()
    for path in sorted(phantom_dir.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
        p = preprocess_pixels(arr, ds, FALLBACK)
        assert "rejected" not in p.window, (path.name, p.window)
        assert p.window["source"] == ("header" if "WindowWidth" in ds else "auto")
        seen.add(str(ds.PhotometricInterpretation))
        # the same image with a VOI LUT spanning its stored values
        first, n = int(arr.min()), int(arr.max() - arr.min() + 1)
        item = pydicom.Dataset()
        item.LUTDescriptor = [n, first, 12]
        item.LUTData = np.linspace(0, 4095, n).astype(np.uint16).tolist()
        ds.VOILUTSequence = [item]
        for key in ("RescaleSlope", "RescaleIntercept"):
            if key in ds:
                del ds[key]
        p = preprocess_pixels(arr, ds, PreprocessSpec(target_size=(64, 64), window_sources=("voi_lut",)))
        assert p.window == {"source": "voi_lut"}
    assert seen == {"MONOCHROME1", "MONOCHROME2"}


# --- numpy overflow never reaches stderr -----------------------------------------------------------
def _rescaled(slope, intercept=0.0, bits=16):
    ds, arr = _synthetic(bits=bits)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    return ds, arr


def _float_pixels_with_inf():
    ds, arr = _synthetic()
    arr = arr.astype(np.float32)
    arr[3, 60] = np.inf
    return ds, arr


def _voi_lut_after_huge_rescale():
    ds, arr = _with_voi_lut(0, 4096)
    ds.RescaleSlope, ds.RescaleIntercept = 1e30, 0
    return ds, arr


OVERFLOW_CASES = {
    "slope 1e38 over 16 bits": lambda: _rescaled(1e38),
    "slope 3e38, intercept -3e38": lambda: _rescaled(3e38, -3e38),
    "slope 5e33: values near the float32 limit": lambda: _rescaled(5e33),
    "VOI LUT after slope 1e30": _voi_lut_after_huge_rescale,
    "width 1e308": lambda: _with_window(2048, 1e308),
    "width 1e39, LINEAR_EXACT": lambda: _with_window(2048, 1e39, "LINEAR_EXACT"),
    "center and width 1e308": lambda: _with_window(1e308, 1e308),
    "SIGMOID width 1": lambda: _with_window(2048, 1, "SIGMOID"),
    "SIGMOID center -1e308": lambda: _with_window(-1e308, 100, "SIGMOID"),
    "SIGMOID width 1e308": lambda: _with_window(2048, 1e308, "SIGMOID"),
    "float pixel data holding inf": _float_pixels_with_inf,
}


@pytest.mark.parametrize("case", list(OVERFLOW_CASES))
@pytest.mark.parametrize("spec", [FALLBACK, PreprocessSpec(target_size=(64, 64), window_sources=("header",)),
                                  PreprocessSpec(target_size=(64, 64), window_sources=("fixed",),
                                                 window_center=0.0, window_width=1e300)],
                         ids=["fallback", "header only", "fixed width 1e300"])
def test_overflow_gives_a_reason_or_an_image_never_a_runtime_warning(case, spec):
    ds, arr = OVERFLOW_CASES[case]()
    # recorded, not raised: a warning inside a try/except of preprocess must not hide
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            preprocess_pixels(arr, ds, spec)
        except PreprocessError:
            pass
    assert not caught, [str(w.message) for w in caught]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            p = preprocess_pixels(arr, ds, spec)
        except PreprocessError as exc:
            assert exc.reason and "CANARY" not in str(exc)
            return
    assert np.isfinite(p.tensor).all() and 0.0 <= p.display.min() <= p.display.max() <= 1.0
    assert contrast(p.display, None) >= MIN_CONTRAST


def test_rescale_overflow_is_refused_with_the_numbers():
    ds, arr = _rescaled(1e38)
    with pytest.raises(PreprocessError, match=r"RescaleSlope 1e\+38 and RescaleIntercept 0 take pixel values beyond"):
        preprocess_pixels(arr, ds, FALLBACK)
    ds, arr = _rescaled(1e-300)
    with pytest.raises(PreprocessError, match=r"RescaleSlope is 1e-300, so every pixel"):
        preprocess_pixels(arr, ds, FALLBACK)


# --- engine: a study whose only image has no usable contrast goes to a human read ----------------
def test_flat_header_window_makes_the_study_indeterminate(tmp_path, monkeypatch):
    from edgeinfer import phantom
    from edgeinfer.backends import create_runner
    from edgeinfer.bundle import default_bundle_path, load_bundle, write_manifest
    from edgeinfer.intake import discover
    from edgeinfer.triage import INDETERMINATE, TriageEngine

    monkeypatch.delenv("EDGEINFER_TRUST", raising=False)  # the copied bundle is changed, so unsigned
    case = phantom.make_case(np.random.default_rng(5), index=1, finding="none", size=256, compress=False)
    ds = case.dataset
    for key in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
        if key in ds:
            del ds[key]
    ds.WindowCenter = round(float(np.median(modality_lut(ds.pixel_array, ds))), 1)
    ds.WindowWidth = 1e308
    image = tmp_path / "in" / "study" / "img.dcm"
    image.parent.mkdir(parents=True)
    pydicom.dcmwrite(image, ds, enforce_file_format=True)

    header_only = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), header_only)
    manifest = copy.deepcopy(load_bundle(header_only).manifest)
    manifest["preprocessing"]["window"]["sources"] = ["header"]
    write_manifest(header_only, manifest)

    def triage(bundle_dir):
        bundle = load_bundle(bundle_dir)
        with create_runner(bundle.artifact(precision="fp32")) as runner:
            return TriageEngine(bundle, runner).run(discover([tmp_path / "in"]))

    wl = triage(header_only)
    [study] = wl.studies
    assert study["priority"] == INDETERMINATE and study["score"] is None
    assert study["failed_images"] == [str(image)] and not study["images"]
    [err] = wl.errors
    assert err["path"] == str(image) and err["code"] == "preprocess"
    assert "no usable contrast" in err["reason"] and "w=1e+308" in err["reason"]
    assert "PHANTOM" not in err["reason"]

    # the shipped bundle falls back to the automatic window and says so
    wl = triage(default_bundle_path())
    [study] = wl.studies
    [img] = study["images"]
    assert img["status"] == "ok" and img["window"]["source"] == "auto"
    assert img["window"]["rejected"][0].startswith("header window c=") and not wl.errors
