"""Session fixtures for the calibration tests: phantom studies and a small model exported here.

The model is the phantom CNN's architecture (edgeinfer_export.models.TriageNet) at 64x64 with narrower
layers, trained for 60 seeded steps on 40 phantoms (about a second). Untrained weights are no
good here: their scores all sit near 0.5, and a head rescaled to spread them amplifies tiny
feature differences, so every perturbation (INT8 or FP16) looks catastrophic. Everything is
small: 2 CPU cores are shared.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SIZE = 64
WIDTHS = (16, 24, 48, 96, 128)


def small_config(size: int = SIZE) -> dict:
    cfg = json.loads((ROOT / "export" / "configs" / "phantom-cxr.json").read_text())
    cfg["name"] = "calib-test"
    cfg["preprocessing"]["target_size"] = [size, size]
    return cfg


def tensors_of(folder: Path, config: dict, limit: int = 64) -> np.ndarray:
    from edgeinfer import dicomio
    from edgeinfer.intake import prepare_dataset
    from edgeinfer.preprocess import PreprocessSpec

    spec = PreprocessSpec.from_manifest(config["preprocessing"])
    files = sorted(folder.rglob("*.dcm"))[:limit]
    return np.stack([prepare_dataset(dicomio.read_dataset(f), spec).tensor for f in files])


def labels_of(folder: Path, limit: int = 64) -> np.ndarray:
    """(N, 2) pneumothorax/mass targets in the order of :func:`tensors_of`."""
    import csv

    with open(folder / "labels.csv", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    files = sorted(folder.rglob("*.dcm"))[:limit]
    finding = [rows[f.relative_to(folder).as_posix()]["finding"] for f in files]
    return np.array([[v == "pneumothorax", v == "mass"] for v in finding], dtype=np.float32)


def export_small_model(out: Path, train_images: np.ndarray, train_labels: np.ndarray, seed: int = 0,
                       steps: int = 60) -> Path:
    """Train TriageNet (narrow, 64x64) briefly on phantoms and export it as a bundle (about 2 s)."""
    torch = pytest.importorskip("torch")
    from edgeinfer_export.models import TriageNet
    from edgeinfer_export.onnx_export import export_bundle

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = TriageNet(2, widths=WIDTHS)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        x, y = torch.from_numpy(train_images), torch.from_numpy(train_labels)
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, len(x), (16,))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model.logits(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        export_bundle(model, small_config(), out, real_inputs=train_images[:4], overwrite=True)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def cal_dir(tmp_path_factory) -> Path:
    """Calibration studies (read-only)."""
    from edgeinfer import phantom

    out = tmp_path_factory.mktemp("calib-phantoms") / "cal"
    phantom.generate(out, 16, seed=2101, max_size=384)
    return out


@pytest.fixture(scope="session")
def val_dir(tmp_path_factory) -> Path:
    """Held-out validation studies with labels.csv, another seed (read-only)."""
    from edgeinfer import phantom

    out = tmp_path_factory.mktemp("calib-phantoms") / "val"
    phantom.generate(out, 24, seed=2102, max_size=384)
    return out


@pytest.fixture(scope="session")
def model_bundle(tmp_path_factory) -> Path:
    """An FP32-only bundle of a small CNN trained and exported in this session (read-only: copy it to change it)."""
    from edgeinfer import phantom

    train = tmp_path_factory.mktemp("calib-phantoms") / "train"
    phantom.generate(train, 40, seed=2100, max_size=256)
    out = tmp_path_factory.mktemp("calib-bundles") / "fp32"
    return export_small_model(out, tensors_of(train, small_config()), labels_of(train))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("calib-cache")


@pytest.fixture(scope="session")
def calibrated_bundle(tmp_path_factory, model_bundle, cal_dir, cache_dir):
    """(bundle path, CalibrateResult): fp16 + int8 added by calibrate_bundle (read-only)."""
    from edgeinfer_calibration.calibrate import calibrate_bundle

    out = tmp_path_factory.mktemp("calib-bundles") / "calibrated"
    result = calibrate_bundle(model_bundle, cal_dir, out=out, samples=12, seed=3, cache_dir=cache_dir)
    return out, result


@pytest.fixture
def bundle_copy(tmp_path, model_bundle) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(model_bundle, dst)
    return dst
