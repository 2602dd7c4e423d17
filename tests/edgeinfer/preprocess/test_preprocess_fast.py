"""Preprocessing version 3 (``edgeinfer.preprocess``) against the oracle, version 1 (``tests/oracle_preprocess.py``).

Version 3 reduces resolution before windowing, halving large images first (see the module docstring
of edgeinfer.preprocess); these tests hold it to what that docstring promises:

* the same window record (source, centre, width, function, ``rejected``), the same ``inverted``,
  shapes and dtypes, and the same refusals (type, reason and hint) as the oracle;
* for linear windows (header, fixed, automatic; rescale or Modality LUT), the same display image up
  to float32 rounding (:data:`LINEAR_ROUNDING`) where the image was not halved first, and within
  :data:`HALVED_MAX` and :data:`HALVED_MEAN` where it was; for curved maps (VOI LUT, SIGMOID)
  within :data:`MAX_ABS_DELTA` (max) and :data:`MEAN_ABS_DELTA` (mean per image): generated
  phantoms (MONOCHROME1 and 2, 12-16 bits, rescale, presets, VOI LUT, SIGMOID, padding, signed,
  odd sizes, images smaller than twice the target, extreme aspect ratios) and pydicom's test images;
* value for value where nothing is reduced (other interpolations, images smaller than the target);
* the same triage decisions with the shipped phantom model.

``pytest -s`` prints the measured differences.
"""
from __future__ import annotations

import collections
import copy
import functools
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files

import oracle_preprocess as oracle
from edgeinfer import phantom
from edgeinfer import preprocess as fast
from edgeinfer.errors import InputError, PreprocessError
from edgeinfer.preprocess import PreprocessSpec, geometry, pipeline
from edgeinfer.preprocess import window as windowing
from helpers import synthetic_image

#: |display - display_v1| allowed for linear windows where the image was not halved first: float32
#: rounding (box means are rescaled, not each pixel; OpenCV sums in float32). Measured: 3.6e-7.
LINEAR_ROUNDING = 1e-5
#: ... and where it was halved first (2 x 2 block means, then the area average: a box edge that
#: falls inside a block takes the block's mean, not its own part): max |d| and mean |d| per image.
#: Measured: 0.0046 and 3.0e-4 on phantoms, 0.029 and 4.5e-4 on pydicom's images (a 512 x 512 CT
#: reduced to 48 x 48, at a bone edge).
HALVED_MAX = 0.05
HALVED_MEAN = 1e-3
#: |display - display_v1| allowed anywhere for a curved map (display in [0, 1]; the tensor's is
#: this / std). Measured: 0.050 (a gamma-0.7 VOI LUT over a phantom's whole stored range, at the
#: shutter edge), 0.025 (SIGMOID on a phantom's preset); the bound leaves margin.
MAX_ABS_DELTA = 0.08
#: mean |display - display_v1| of one image allowed for a curved map. Measured: 1.3e-3.
MEAN_ABS_DELTA = 3e-3

BUNDLE = PreprocessSpec(target_size=(256, 256), mean=0.5, std=0.25)  # the shipped bundle's spec
SPECS = {
    "bundle": BUNDLE,
    "aspect+3ch": PreprocessSpec(target_size=(224, 320), keep_aspect=True, channels=3, mean=0.45, std=0.2),
    "auto only": PreprocessSpec(target_size=(256, 256), window_sources=("auto",), percentiles=(1.0, 99.0)),
}
EXACT_SPECS = {  # nothing is reduced: version 2 computes what version 1 did
    "linear": PreprocessSpec(target_size=(256, 256), interpolation="linear"),
    "cubic": PreprocessSpec(target_size=(200, 240), interpolation="cubic", keep_aspect=True),
    "nearest": PreprocessSpec(target_size=(256, 256), interpolation="nearest"),
}


# --- running both ----------------------------------------------------------------------------------
def _run(impl, stored, ds, spec):
    """(Prepared, None) or (None, (type, reason, hint)); never a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return impl.preprocess_pixels(stored, ds, spec, frame=3), None
        except PreprocessError as exc:
            return None, (type(exc), exc.reason, exc.hint)


def compare(stored, ds, spec) -> dict:
    """Both implementations on one input: identical record or identical refusal, and the differences."""
    ref, ref_err = _run(oracle, stored, ds, spec)
    new, new_err = _run(fast, stored, ds, spec)
    assert new_err == ref_err
    if ref_err:
        return {"error": ref_err}
    assert new.window == ref.window
    assert (new.inverted, new.frame, new.source_shape) == (ref.inverted, ref.frame, ref.source_shape)
    assert new.tensor.shape == ref.tensor.shape and new.tensor.dtype == ref.tensor.dtype == np.float32
    assert new.display.shape == ref.display.shape == spec.target_size and new.display.dtype == np.float32
    assert np.isfinite(new.tensor).all()
    if spec.interpolation != "cubic":  # cubic overshoots, in both versions; averaging rounds by an ulp
        assert -1e-6 <= new.display.min() <= new.display.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(new.tensor, (np.broadcast_to(new.display, new.tensor.shape) - spec.mean) / spec.std,
                               rtol=1e-6, atol=1e-6)
    delta = np.abs(new.display.astype(np.float64) - ref.display)
    tensor_delta = np.abs(new.tensor.astype(np.float64) - ref.tensor)
    reduced = geometry._reduced_size(stored.shape, geometry._fitted(stored.shape, spec), spec)
    halved = reduced != stored.shape[:2] and geometry._halvings(stored.shape, reduced) > 0
    return {"max": float(delta.max()), "mean": float(delta.mean()), "tensor_max": float(tensor_delta.max()),
            "delta": delta, "ref": ref, "halved": halved}


def linear(window: dict) -> bool:
    """A window version 2 reproduces to rounding: a linear ramp (not a VOI LUT, SIGMOID or threshold)."""
    return window["source"] != "voi_lut" and (window["function"] == "LINEAR_EXACT" or (
        window["function"] == "LINEAR" and np.float32(window["width"]) > 1))


def within_bounds(got: dict, spec: PreprocessSpec) -> None:
    """The documented bounds, for one comparison that gave an image."""
    if linear(got["ref"].window) and not got["halved"]:
        assert got["max"] <= LINEAR_ROUNDING, (got["ref"].window, got["max"])
    elif linear(got["ref"].window):
        assert got["max"] <= HALVED_MAX and got["mean"] <= HALVED_MEAN, (got["ref"].window, got["max"], got["mean"])
    else:
        assert got["max"] <= MAX_ABS_DELTA and got["mean"] <= MEAN_ABS_DELTA, (got["ref"].window, got["max"],
                                                                               got["mean"])
    assert got["tensor_max"] <= max(got["max"], 1e-6) / spec.std * (1 + 1e-3) + 1e-5


# --- inputs ------------------------------------------------------------------------------------------
PHANTOMS = {  # name: (plan, (rows, columns))
    "dx 16-bit rescale+window 2500x2048": ({"photometric": "MONOCHROME2", "bits": 16, "voi": "window+rescale"},
                                           (2500, 2048)),
    "mono1 14-bit no preset 777x1025": ({"photometric": "MONOCHROME1", "bits": 14, "voi": "none"}, (777, 1025)),
    "mono2 12-bit window 1023x777": ({"photometric": "MONOCHROME2", "bits": 12, "voi": "window"}, (1023, 777)),
    "mono1 12-bit multiwindow+rescale 1201x999": ({"photometric": "MONOCHROME1", "bits": 12,
                                                   "voi": "multiwindow+rescale"}, (1201, 999)),
    "mono2 14-bit rescale 640x528": ({"photometric": "MONOCHROME2", "bits": 14, "voi": "rescale"}, (640, 528)),
    "mono1 16-bit window 1500x1301": ({"photometric": "MONOCHROME1", "bits": 16, "voi": "window"}, (1500, 1301)),
    "mono2 12-bit 300x400, under twice the target": ({"photometric": "MONOCHROME2", "bits": 12, "voi": "window"},
                                                      (300, 400)),
    "mono2 12-bit 2999x301, 10:1": ({"photometric": "MONOCHROME2", "bits": 12, "voi": "window"}, (2999, 301)),
    "mono1 12-bit 2000x120, narrower than the target": ({"photometric": "MONOCHROME1", "bits": 12, "voi": "window"},
                                                         (2000, 120)),
    "mono2 12-bit 180x200, smaller than the target": ({"photometric": "MONOCHROME2", "bits": 12, "voi": "none"},
                                                       (180, 200)),
}


@functools.lru_cache(maxsize=None)
def _phantom(name: str):
    plan, size = PHANTOMS[name]
    seed = sorted(PHANTOMS).index(name)
    [case] = phantom._make_study(np.random.default_rng(1000 + seed), index=seed, n_images=1,
                                 plan={"compress": False, "modality": "DX", **plan}, size=size)
    ds = case.dataset
    arr = ds.pixel_array
    arr.flags.writeable = False  # shared between tests: neither implementation may change it
    return ds, arr


def _as_is(ds, arr):
    return ds, arr


def _voi_lut(ds, arr):
    """A gamma-shaped VOI LUT over the stored range, rescale removed."""
    ds = copy.deepcopy(ds)
    first, n = int(arr.min()), int(arr.max() - arr.min() + 1)
    item = pydicom.Dataset()
    item.LUTDescriptor = [n, first, 12]
    item.LUTData = (4095 * np.linspace(0, 1, n) ** 0.7).astype(np.uint16).tolist()
    ds.VOILUTSequence = [item]
    for key in ("RescaleSlope", "RescaleIntercept"):
        if key in ds:
            del ds[key]
    return ds, arr


def _padding(ds, arr):
    """A padded band on top and a padded strip of odd width on the left (value 0), as a
    detector that pads a rotated or collimated image would write."""
    ds = copy.deepcopy(ds)
    arr = arr.copy()
    h, w = arr.shape
    arr[: max(2, h // 13)] = 0
    arr[:, : max(1, w // 11) | 1] = 0
    ds.PixelPaddingValue = 0
    return ds, arr


def _padding_range(ds, arr):
    """Padding given as a range (PixelPaddingRangeLimit) at the top of the stored range."""
    ds = copy.deepcopy(ds)
    arr = arr.copy()
    top = 2 ** int(ds.BitsStored) - 1
    h, w = arr.shape
    arr[-(h // 9):, :] = top - (np.arange(w) % 3)
    ds.PixelPaddingValue, ds.PixelPaddingRangeLimit = top, top - 2
    return ds, arr


def _signed(ds, arr):
    """The same image stored signed (two's complement), the intercept shifted to keep modality values."""
    ds = copy.deepcopy(ds)
    shift = 2 ** (int(ds.BitsStored) - 1)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept + slope * shift
    return ds, (arr.astype(np.int32) - shift).astype(np.int16)


def _sigmoid(ds, arr):
    ds = copy.deepcopy(ds)
    if "WindowCenter" in ds:
        ds.VOILUTFunction = "SIGMOID"
    return ds, arr


VARIANTS = {"as is": _as_is, "VOI LUT": _voi_lut, "padding": _padding, "padding range": _padding_range,
            "signed": _signed, "SIGMOID": _sigmoid}

STATS: dict[str, list[tuple[str, str, float, float]]] = {"phantoms": [], "corpus": [], "decisions": []}


def _kind(got: dict) -> str:
    window = got["ref"].window
    if linear(window):
        return "linear, halved first" if got["halved"] else "linear"
    return window.get("function", "VOI LUT")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", list(PHANTOMS))
def test_phantoms_within_the_bound(name, variant):
    ds, arr = VARIANTS[variant](*_phantom(name))
    for spec_name, spec in SPECS.items():
        got = compare(arr, ds, spec)
        assert "error" not in got, got
        STATS["phantoms"].append((f"{name} / {variant} / {spec_name}", _kind(got), got["max"],
                                  got["mean"]))
        within_bounds(got, spec)
        nh, nw = geometry._fitted(arr.shape, spec)
        if arr.shape[0] < nh or arr.shape[1] < nw:  # nothing reduced: value for value
            assert got["max"] == 0.0, spec_name


@pytest.mark.parametrize("name", ["mono2 12-bit window 1023x777", "mono1 14-bit no preset 777x1025",
                                  "mono2 12-bit 180x200, smaller than the target"])
@pytest.mark.parametrize("variant", ["as is", "padding", "VOI LUT"])
def test_other_interpolations_are_computed_as_before(name, variant):
    ds, arr = VARIANTS[variant](*_phantom(name))
    for spec in EXACT_SPECS.values():
        got = compare(arr, ds, spec)
        assert got["max"] == 0.0


def test_the_reduction_is_exercised(monkeypatch):
    """Not vacuous: the full-detector image is averaged to twice the target before it is windowed."""
    calls = []
    real = cv2.resize

    def spy(img, dsize, **kw):
        calls.append((img.shape, img.dtype, tuple(dsize)))
        return real(img, dsize, **kw)

    ds, arr = _phantom("dx 16-bit rescale+window 2500x2048")
    with monkeypatch.context() as m:
        m.setattr(cv2, "resize", spy)
        fast.preprocess_pixels(arr, ds, BUNDLE)
    # halved once (1250 x 1024 still leaves two blocks per pixel of 512 x 512; 625 would not), then
    # the area average to twice the target, then 2 x 2 to the target
    assert calls == [((2500, 2048), np.float32, (1024, 1250)), ((1250, 1024), np.float32, (512, 512)),
                     ((512, 512), np.float32, (256, 256))]
    got = compare(arr, ds, BUNDLE)
    assert got["halved"] and got["max"] <= HALVED_MAX


# --- JPEG 2000 decoded at reduced resolution (version 4) -------------------------------------------
@functools.lru_cache(maxsize=None)
def _as_j2k(name: str, variant: str, syntax: str):
    """A phantom variant encoded in JPEG 2000 (``syntax``: "lossless" or "10:1")."""
    from pydicom.uid import JPEG2000, JPEG2000Lossless

    from edgeinfer.phantom.dicom import compress

    ds, arr = VARIANTS[variant](*_phantom(name))
    ds = copy.deepcopy(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compress(ds, JPEG2000Lossless if syntax == "lossless" else JPEG2000, np.ascontiguousarray(arr))
    return ds


J2K_CASES = [("dx 16-bit rescale+window 2500x2048", v, s) for v, s in (
    ("as is", "lossless"), ("as is", "10:1"), ("VOI LUT", "lossless"), ("signed", "lossless"),
    ("SIGMOID", "10:1"))] + [("mono1 12-bit 2000x120, narrower than the target", "as is", "lossless")]


@pytest.mark.parametrize("name,variant,syntax", J2K_CASES)
def test_jpeg_2000_decoded_smaller_stays_within_the_halving_bound(name, variant, syntax):
    """The runtime decodes the frame at reduced resolution (decode_size) and preprocesses that; the
    oracle preprocesses the full decode. Same window record, display within version 3's halving
    bounds. The automatic window is never computed from a reduced image."""
    from edgeinfer.dicomio import decode_frame

    ds = _as_j2k(name, variant, syntax)
    full = decode_frame(ds)
    reduced = 0
    for spec_name, spec in SPECS.items():
        small = decode_frame(ds, at_least=functools.partial(fast.decode_size, ds=ds, spec=spec))
        ref = oracle.preprocess_pixels(full, ds, spec, frame=3)
        new = fast.preprocess_pixels(small, ds, spec, frame=3, shape=full.shape)
        assert (new.window, new.inverted, new.source_shape) == (ref.window, ref.inverted, ref.source_shape)
        assert new.tensor.shape == ref.tensor.shape and new.tensor.dtype == np.float32
        if small.shape == full.shape:
            continue
        reduced += 1
        assert ref.window["source"] != "auto"
        delta = np.abs(new.display.astype(np.float64) - ref.display)
        STATS["phantoms"].append((f"{name} / {variant} / {syntax} / {spec_name}", "JPEG 2000 decoded smaller",
                                  float(delta.max()), float(delta.mean())))
        assert delta.max() <= HALVED_MAX and delta.mean() <= HALVED_MEAN, (delta.max(), delta.mean())
    assert reduced >= 1


def test_decode_size_reduces_only_what_is_only_averaged():
    """Twice the size the stored values are averaged to; None (the image's own size) where single pixels
    matter: the automatic window, a Modality LUT Sequence, padding to exclude, other interpolations."""
    ds, arr = _phantom("dx 16-bit rescale+window 2500x2048")
    size = functools.partial(fast.decode_size, arr.shape)
    assert size(ds, BUNDLE) == (1024, 1024)
    assert size(ds, SPECS["aspect+3ch"]) == (896, 736)  # fitted 224 x 184, averaged to 448 x 368
    assert size(ds, PreprocessSpec(target_size=(256, 256), window_sources=("fixed",), window_center=1000,
                                   window_width=400)) == (1024, 1024)
    assert size(_voi_lut(ds, arr)[0], BUNDLE) == (1024, 1024)
    assert size(ds, SPECS["auto only"]) is None
    no_preset = copy.deepcopy(ds)
    del no_preset.WindowCenter, no_preset.WindowWidth
    assert size(no_preset, BUNDLE) is None  # the bundle's sources fall through to auto
    assert size(_padding(ds, arr)[0], BUNDLE) is None
    assert size(_padding(ds, arr)[0], PreprocessSpec(target_size=(256, 256), pixel_padding="keep")) == (1024, 1024)
    table, _ = _modality_lut()()
    table.WindowCenter, table.WindowWidth = 100, 50
    assert fast.decode_size((700, 600), table, PreprocessSpec(target_size=(64, 64))) is None
    assert size(ds, EXACT_SPECS["linear"]) is None
    assert fast.decode_size((600, 600), ds, BUNDLE) is None  # 512 x 512 is averaged from it: no room


def test_comparison_catches_a_wrong_result(monkeypatch):
    """The comparison fails for an implementation that is off: a window 1 % narrower, padding averaged
    in as image, no clipping before the average, or an intermediate size that the target does not divide."""
    ds, arr = _padding(*_phantom("mono1 12-bit multiwindow+rescale 1201x999"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"

    def fails() -> None:
        with pytest.raises(AssertionError):
            within_bounds(compare(arr, ds, BUNDLE), BUNDLE)

    fails.__test__ = False
    real = fast.apply_window
    # each name is replaced in the module that looks it up: windowing (voi), pipeline (preprocess_pixels),
    # geometry (_halvings)
    with monkeypatch.context() as m:
        m.setattr(windowing, "apply_window", lambda v, w: real(v, fast.Window(w.source, w.center, w.width * 0.99,
                                                                                   w.function)))
        fails()
    with monkeypatch.context() as m:
        m.setattr(pipeline, "padding_mask", lambda *a: None)
        fails()
    with monkeypatch.context() as m:
        m.setattr(windowing, "_window_span", lambda w: None)
        fails()
    with monkeypatch.context() as m:
        m.setattr(pipeline, "_reduced_size", lambda shape, fitted, spec: (500, 500))
        fails()
    within_bounds(compare(arr, ds, BUNDLE), BUNDLE)  # and passes as it is

    # where the image is halved first, fewer, larger blocks per pixel (BLOCK_MARGIN 0.25, not 2) are
    # seen: the difference from the oracle more than doubles
    ds, arr = _phantom("dx 16-bit rescale+window 2500x2048")
    shipped = compare(arr, ds, BUNDLE)
    with monkeypatch.context() as m:
        m.setattr(geometry, "BLOCK_MARGIN", 0.25)
        coarse = compare(arr, ds, BUNDLE)
    assert shipped["halved"] and coarse["mean"] > 2 * shipped["mean"] and coarse["max"] > 2 * shipped["max"]


# --- pydicom's corpus -------------------------------------------------------------------------------
def _corpus_images():
    """Every file of pydicom's test corpus that edgeinfer's reader accepts, decoded as the runtime
    decodes it (first frame)."""
    from edgeinfer import dicomio

    root = Path(pydicom.__file__).parent / "data" / "test_files"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = {p for p in root.rglob("*") if p.is_file()} | {Path(p) for p in get_testdata_files()
                                                                if os.path.isfile(p)}
    out = []
    for path in sorted(files):
        try:
            ds = dicomio.read_dataset(path)
            if dicomio.number_of_frames(ds) > 1 and int(ds.Rows) * int(ds.Columns) > 1024 * 1024:
                continue  # large multi-frame volumes: slow to decode, nothing new for this test
            out.append((path.relative_to(root) if root in path.parents else path.name, ds,
                        dicomio.decode_frame(ds, 0)))
        except InputError:
            continue
    return out


CORPUS_SPECS = {"64x64": PreprocessSpec(target_size=(64, 64), mean=0.5, std=0.25),
                "bundle": BUNDLE,
                "48x80 aspect": PreprocessSpec(target_size=(48, 80), keep_aspect=True,
                                               window_sources=("header", "auto"))}


def test_pydicom_corpus_within_the_bound_with_the_same_records_and_refusals():
    images = _corpus_images()
    compared = refused = 0
    for name, ds, arr in images:
        for spec_name, spec in CORPUS_SPECS.items():
            try:
                got = compare(arr, ds, spec)
            except AssertionError as exc:
                raise AssertionError(f"{name} / {spec_name}: {exc}") from None
            if "error" in got:
                refused += 1
                continue
            compared += 1
            STATS["corpus"].append((f"{name} / {spec_name}", _kind(got), got["max"], got["mean"]))
            try:
                within_bounds(got, spec)
            except AssertionError as exc:
                raise AssertionError(f"{name} / {spec_name}: {exc}") from None
    assert len(images) > 50 and compared > 100 and refused > 10, (len(images), compared, refused)


# --- refusals ----------------------------------------------------------------------------------------
_synthetic = functools.partial(synthetic_image, shape=(300, 280), seed=1)


def _with(**header):
    def build():
        ds, arr = _synthetic()
        for key, value in header.items():
            if key == "RescaleSlope" and isinstance(value, str):
                ds.add_new(0x00281053, "DS", None)
                ds["RescaleSlope"]._value = value  # bypass validation, as a broken scanner would
            else:
                setattr(ds, key, value)
        return ds, arr
    return build


def _pixels(make):
    def build():
        ds, arr = _synthetic()
        return ds, make(arr)
    return build


def _float_with(value):
    def make(arr):
        arr = arr.astype(np.float32)
        arr[3, 200] = value
        return arr
    return make


def _only_padding():
    ds, arr = _synthetic()
    ds.PixelPaddingValue = 7
    return ds, np.full_like(arr, 7)


def _padding_left_empty_sample():
    """Padding everywhere except a few pixels the contrast sample misses (the rare full-image path)."""
    ds, arr = _synthetic(shape=(1200, 1100))
    rng = np.random.default_rng(2)
    image = rng.integers(100, 4000, size=arr.shape).astype(np.uint16)
    out = np.zeros_like(arr)
    out[1::3, 1::3] = image[1::3, 1::3]
    ds.PixelPaddingValue = 0
    return ds, out


def _voi_lut_bits(bits):
    def build():
        ds, arr = _synthetic()
        item = pydicom.Dataset()
        item.LUTDescriptor = [4096, 0, bits]
        item.LUTData = np.linspace(0, 60000, 4096).astype(np.uint16).tolist()
        ds.VOILUTSequence = [item]
        return ds, arr
    return build


def _modality_lut(malformed=False):
    def build():
        ds, arr = _synthetic(shape=(700, 600))
        item = pydicom.Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        item.ModalityLUTType = "US"
        item.LUTData = (np.linspace(0, 1, 4096) ** 2 * 30000).astype(np.uint16).tolist()
        if malformed:
            item.LUTDescriptor = [4096, 0]
        ds.ModalityLUTSequence = [item]
        return ds, arr
    return build


CASES = {
    "flat": _pixels(lambda a: np.full_like(a, 7)),
    "slope 0": _with(RescaleSlope=0, RescaleIntercept=0),
    "slope 'abc'": _with(RescaleSlope="abc"),
    "slope nan": _with(RescaleSlope="nan"),
    "slope 1e-300": _with(RescaleSlope=1e-300),
    "slope 1e38 over 16 bits": _with(RescaleSlope=1e38, RescaleIntercept=0),
    "slope 5e33 (values near float32's limit)": _with(RescaleSlope=5e33, RescaleIntercept=0),
    "only padding": _only_padding,
    "padding everywhere the sample looks": _padding_left_empty_sample,
    "colour": _pixels(lambda a: np.stack([a] * 3, axis=-1)),
    "1 pixel high": _pixels(lambda a: a[:1]),
    "1 x 1": _pixels(lambda a: a[:1, :1]),
    "3-D": _pixels(lambda a: a[None]),
    "photometric PALETTE COLOR": _with(PhotometricInterpretation="PALETTE COLOR"),
    "float pixels holding inf": _pixels(_float_with(np.inf)),
    "float pixels holding nan": _pixels(_float_with(np.nan)),
    "float pixels holding 3e38": _pixels(_float_with(3e38)),
    "width 1e308": _with(WindowCenter=2048, WindowWidth=1e308),
    "width 1e39 LINEAR_EXACT": _with(WindowCenter=2048, WindowWidth=1e39, VOILUTFunction="LINEAR_EXACT"),
    "centre and width 1e308": _with(WindowCenter=1e308, WindowWidth=1e308),
    "centre -3e38 width 1e39 after slope 5e33": _with(RescaleSlope=5e33, RescaleIntercept=0, WindowCenter=-3e38,
                                                      WindowWidth=1e39),
    "window below every pixel": _with(WindowCenter=-1000, WindowWidth=100),
    "SIGMOID width 1": _with(WindowCenter=2048, WindowWidth=1, VOILUTFunction="SIGMOID"),
    "threshold (width 1)": _with(WindowCenter=2048, WindowWidth=1),
    "VOI LUT of 12 bits": _voi_lut_bits(12),
    "VOI LUT of 20 bits (scaled by its largest output)": _voi_lut_bits(20),
    "Modality LUT Sequence": _modality_lut(),
    "Modality LUT Sequence malformed": _modality_lut(malformed=True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("spec", [BUNDLE, PreprocessSpec(target_size=(64, 64), window_sources=("header",)),
                                  PreprocessSpec(target_size=(64, 64), window_sources=("voi_lut", "fixed"),
                                                 window_center=0.0, window_width=1e300),
                                  PreprocessSpec(target_size=(100, 100), window_sources=("auto",),
                                                 pixel_padding="keep")],
                         ids=["bundle", "header only", "fixed width 1e300", "auto, padding kept"])
def test_refusals_and_records_are_the_oracles(case, spec):
    ds, arr = CASES[case]()
    got = compare(arr, ds, spec)
    if "error" not in got and linear(got["ref"].window):  # the curved maps here are extreme on noise
        assert got["max"] <= LINEAR_ROUNDING


def test_refusals_are_really_compared():
    """Not vacuous: the cases above include refusals of every stage, with their messages."""
    reasons = set()
    for case in CASES.values():
        ds, arr = case()
        _, err = _run(fast, arr, ds, BUNDLE)
        if err:
            reasons.add(err[1].split(" (")[0][:40])
    assert len(reasons) >= 8, reasons


# --- decisions ---------------------------------------------------------------------------------------
def test_same_triage_decisions_with_the_phantom_model():
    """The shipped phantom model scores an unseen phantom set the same through both paths: the same
    priority for every image, scores within 0.01; half of the images also with a VOI LUT (the
    curved map version 2 approximates most)."""
    from edgeinfer.backends import create_runner
    from edgeinfer.bundle import default_bundle_path, load_bundle
    from edgeinfer.triage import image_scores, priority_for

    bundle = load_bundle(default_bundle_path())
    spec = PreprocessSpec.from_manifest(bundle.manifest["preprocessing"])
    inputs = []
    for i in range(24):
        case = phantom.make_case(np.random.default_rng([4242, i]), index=i, compress=False, max_size=1400)
        ds = case.dataset
        inputs.append((ds, ds.pixel_array))
        if i % 2:
            inputs.append(_voi_lut(ds, ds.pixel_array))
    ref = np.stack([oracle.preprocess_pixels(arr, ds, spec).tensor for ds, arr in inputs])
    new = np.stack([fast.preprocess_pixels(arr, ds, spec).tensor for ds, arr in inputs])
    name, out = bundle.manifest["inputs"][0]["name"], bundle.manifest["outputs"][0]["name"]
    with create_runner(bundle.artifact(precision="fp32")) as runner:
        s_ref, _ = image_scores(np.asarray(runner.infer({name: ref})[out], np.float64), bundle)
        s_new, _ = image_scores(np.asarray(runner.infer({name: new})[out], np.float64), bundle)
    assert [priority_for(s, bundle) for s in s_new] == [priority_for(s, bundle) for s in s_ref]
    assert np.abs(s_new - s_ref).max() < 0.01, np.abs(s_new - s_ref).max()
    assert len({priority_for(s, bundle) for s in s_ref}) >= 2  # not all one priority
    STATS["decisions"] = [(f"phantom-cxr, {len(inputs)} images", "score", float(np.abs(s_new - s_ref).max()), 0.0)]


def test_zz_report(capsys):
    """Prints the measured differences (``pytest -s``); runs after the comparisons above."""
    with capsys.disabled():
        for text, _, worst, _ in STATS["decisions"]:
            print(f"\n[decisions] {text}: same priorities, max |d score| {worst:.3g}")
        for group, rows in STATS.items():
            if group == "decisions":
                continue
            by_kind = collections.defaultdict(list)
            for row in rows:
                by_kind[row[1]].append(row)
            for kind, found in sorted(by_kind.items()):
                worst = max(found, key=lambda r: r[2])
                print(f"\n[{group}, {kind}] {len(found)} images: max |d display| {worst[2]:.3g} ({worst[0]}); "
                      f"mean |d| per image: largest {max(r[3] for r in found):.3g}, "
                      f"average {np.mean([r[3] for r in found]):.3g}")
