"""Real-workload bundles (MONAI DenseNet-121 and U-Net, random weights) for the benchmarks."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")

from edgeinfer import bench  # noqa: E402
from edgeinfer.backends import RunnerOptions, create_runner  # noqa: E402
from edgeinfer.bundle import load_bundle  # noqa: E402
from edgeinfer.errors import ExportError  # noqa: E402
from edgeinfer_export.realmodels import export_real_model  # noqa: E402

SMALL_UNET = {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1}


@pytest.fixture(scope="module")
def unet_bundle(tmp_path_factory):
    return export_real_model("unet", tmp_path_factory.mktemp("real") / "unet", size=32, seed=3,
                             model_kwargs=SMALL_UNET)


def test_unet_bundle_is_a_segmentation_bundle_with_random_weights(unet_bundle):
    b = load_bundle(unet_bundle)
    m = b.manifest
    assert m["task"] == "segmentation" and m["name"] == "unet-random"
    assert m["inputs"][0]["shape"] == ["batch", 1, 32, 32]
    assert m["outputs"][0]["shape"] == ["batch", 2, 32, 32] and m["outputs"][0]["name"] == "masks"
    assert m["training"]["weights"] == "random" and m["training"]["seed"] == 3
    assert "BENCHMARK ONLY" in m["intended_use"]
    with create_runner(b.artifact(precision="fp32"), RunnerOptions(threads=1)) as runner:
        x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
        y = runner.infer({"image": x})["masks"]
    assert y.shape == (2, 2, 32, 32) and 0.0 <= y.min() and y.max() <= 1.0
    assert bench.accuracy_for(b, "openvino", "bf16", b.artifact(precision="fp32"))["gate"] == "not validated"


def test_bench_runs_on_the_segmentation_bundle_end_to_end(unet_bundle, phantom_dir):
    settings = bench.BenchSettings(backends=("onnxruntime",), precisions=("fp32", "int8"), batches=(1,),
                                   warmup_s=0.0, iterations=3, blocks=1, threads=1, images=2,
                                   data=str(phantom_dir), e2e_repeats=1)
    rep = bench.run(unet_bundle, settings)
    ok, missing = rep["rows"]
    assert ok["status"] == "ok" and ok["inputs"]["shape"] == [1, 1, 32, 32]
    assert missing["status"] == "unavailable" and "no int8 ONNX artifact" in missing["reason"]
    e = rep["e2e"][0]
    assert e["images"] > 0 and sum(e["priorities"].values()) == e["studies"]  # masks -> a score -> a priority


def test_size_must_suit_the_networks(tmp_path):
    with pytest.raises(ExportError, match="multiple of 32"):
        export_real_model("unet", tmp_path / "u", size=50)
    with pytest.raises(ExportError, match="unknown model"):
        export_real_model("resnet", tmp_path / "r")


@pytest.mark.slow
def test_densenet121_bundle(tmp_path):
    out = export_real_model("densenet121", tmp_path / "dn", size=32)
    b = load_bundle(out)
    assert b.manifest["task"] == "classification" and b.manifest["outputs"][0]["shape"] == ["batch", 2]
    assert b.artifacts[0].record["bytes"] > 20_000_000  # DenseNet-121's ~7M parameters, not a toy
    with create_runner(b.artifact(precision="fp32"), RunnerOptions(threads=1)) as runner:
        y = runner.infer({"image": np.ones((1, 1, 32, 32), np.float32)})["probs"]
    assert y.shape == (1, 2) and np.isfinite(y).all()
