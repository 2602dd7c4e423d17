"""Decode + preprocess per image: edgeinfer's path against a plain pydicom + numpy reference.

* ``edgeinfer``: ``dicomio.read_dataset`` (bounded, checked parse) + ``intake.prepare_dataset``
  (modality LUT, VOI LUT / window / automatic window, MONOCHROME1, resize, normalise): what the
  runtime does per file.
* ``reference``: ``pydicom.dcmread`` + ``ds.pixel_array`` + rescale + the header window (or a
  0.5-99.5 percentile window) in numpy + MONOCHROME1 inversion + the same ``cv2.resize``
  (numpy has no area interpolation; using the same call isolates the DICOM handling) + normalise.
  Not a second implementation of the runtime: a yardstick for what its safety checks cost.
* ``stages``: edgeinfer's read, decode and preprocess timed apart.

Files rotate over a folder of real images (phantoms at detector size by default).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeinfer import bench, dicomio
from edgeinfer.intake import prepare_dataset
from edgeinfer.preprocess import PreprocessSpec, preprocess_pixels, select_frame

CONFIG = Path(__file__).resolve().parent.parent / "export" / "configs" / "phantom-cxr.json"


@pytest.fixture(scope="module")
def spec() -> PreprocessSpec:
    """The phantom bundle's preprocessing (from its export config: no bundle needed)."""
    return PreprocessSpec.from_manifest(json.loads(CONFIG.read_text())["preprocessing"])


@pytest.fixture(scope="module")
def files(data_dir) -> list[Path]:
    found = []
    for f in bench.discover_files(data_dir):
        try:
            dicomio.read_dataset(f)
        except Exception:  # noqa: BLE001 - only files both paths can read
            continue
        found.append(f)
    if not found:
        pytest.skip(f"no readable DICOM file under {data_dir}")
    return found


def reference_prepare(path: Path, spec: PreprocessSpec) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(path)
    x = ds.pixel_array
    if x.ndim == 3:
        x = x[0]
    x = x.astype(np.float32) * np.float32(float(ds.get("RescaleSlope", 1) or 1)) \
        + np.float32(float(ds.get("RescaleIntercept", 0) or 0))
    if "WindowCenter" in ds and "WindowWidth" in ds:
        wc = ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter
        ww = ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth
        lo, hi = float(wc) - float(ww) / 2, float(wc) + float(ww) / 2
    else:
        flat = x.reshape(-1)
        lo, hi = np.percentile(flat[:: max(1, flat.size // 1_000_000)], spec.percentiles)
    x = np.clip((x - np.float32(lo)) / np.float32(max(hi - lo, 1e-6)), 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        x = 1.0 - x
    h, w = spec.target_size
    x = cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA)
    return ((x - np.float32(spec.mean)) / np.float32(spec.std))[None].astype(np.float32)


@pytest.mark.parametrize("impl", ["edgeinfer", "reference"])
def test_decode_and_preprocess(benchmark, impl, files, spec):
    cycle = itertools.cycle(files)
    if impl == "edgeinfer":
        def fn():
            return prepare_dataset(dicomio.read_dataset(next(cycle)), spec).tensor
    else:
        def fn():
            return reference_prepare(next(cycle), spec)
    out = fn()
    assert out.shape == (spec.channels, *spec.target_size)  # both produce the model's input
    benchmark.group = "decode + preprocess per image"
    benchmark.extra_info.update({"files": len(files), "target_size": list(spec.target_size)})
    benchmark(fn)


@pytest.mark.parametrize("stage", ["read", "decode", "preprocess"])
def test_edgeinfer_stages(benchmark, stage, files, spec):
    datasets = [dicomio.read_dataset(f) for f in files]
    frames = [select_frame(dicomio.number_of_frames(ds), spec) for ds in datasets]
    if stage == "read":
        cycle = itertools.cycle(files)

        def fn():
            return dicomio.read_dataset(next(cycle))
    elif stage == "decode":
        cycle = itertools.cycle(list(zip(datasets, frames)))

        def fn():
            ds, frame = next(cycle)
            return dicomio.decode_frame(ds, frame)
    else:
        decoded = [(dicomio.decode_frame(ds, fr), ds, fr) for ds, fr in zip(datasets, frames)]
        cycle = itertools.cycle(decoded)

        def fn():
            stored, ds, fr = next(cycle)
            return preprocess_pixels(stored, ds, spec, frame=fr)
    benchmark.group = "edgeinfer per-image stages"
    benchmark(fn)
