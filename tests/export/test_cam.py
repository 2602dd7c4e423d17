"""The class-activation map in the exported graph: a second output, equal to CAM computed independently in
PyTorch from the last feature map and the classifier's weights, recorded in the manifest with its geometry;
absent for a head export does not know, or with --no-cam."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgeinfer.bundle import load_bundle  # noqa: E402
from edgeinfer.backends import RunnerOptions, create_runner  # noqa: E402
from edgeinfer_export.onnx_export import export_bundle  # noqa: E402

CONFIG = json.loads((Path(__file__).parents[2] / "export" / "configs" / "phantom-cxr.json").read_text())


def _config(size: int = 64) -> dict:
    cfg = json.loads(json.dumps(CONFIG))
    cfg["preprocessing"]["target_size"] = [size, size]
    return cfg


def _run(bundle, x):
    with create_runner(load_bundle(bundle).artifact(precision="fp32"), RunnerOptions(threads=1)) as runner:
        return runner.infer({"image": x})


def test_the_phantom_network_gets_its_cam_as_a_second_output(tmp_path):
    from edgeinfer_export.models import phantom_triage_net

    torch.manual_seed(0)
    model = phantom_triage_net().eval()
    out = export_bundle(model, _config(64), tmp_path / "b").bundle_dir
    m = load_bundle(out).manifest
    cam = m["outputs"][1]
    assert cam["name"] == "cam" and cam["role"] == "class_activation_map" and cam["shape"] == ["batch", 2, 2, 2]
    assert cam["geometry"] == {"covers": "input", "grid": [2, 2], "input_size": [64, 64],
                               "head": "TriageNet: mean+max pooling, linear"}
    x = np.random.default_rng(1).standard_normal((3, 1, 64, 64)).astype(np.float32)
    y = _run(out, x)
    with torch.no_grad():                              # CAM by hand: features . (w_mean + w_max), no bias
        f = model.features(torch.from_numpy(x)).numpy()
        w = model.head.weight.numpy()
        want = np.einsum("lc,nchw->nlhw", w[:, :128] + w[:, 128:], f)
        probs = model(torch.from_numpy(x)).numpy()
    assert y["probs"] == pytest.approx(probs, abs=1e-5)          # the scores are the model's own
    assert y["cam"] == pytest.approx(want, rel=1e-4, abs=1e-4 * float(np.abs(want).max()))


def test_a_head_export_does_not_know_gets_no_cam_and_no_cam_can_be_asked(tmp_path):
    from edgeinfer_export.models import phantom_triage_net

    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=4), torch.nn.Flatten(), torch.nn.Linear(4 * 16 * 16, 2),
                                torch.nn.Sigmoid()).eval()
    report = export_bundle(plain, _config(64), tmp_path / "plain")
    assert report.cam is None and len(load_bundle(report.bundle_dir).manifest["outputs"]) == 1
    report = export_bundle(phantom_triage_net().eval(), _config(64), tmp_path / "nocam", cam=False)
    assert report.cam is None and list(_run(report.bundle_dir, np.zeros((1, 1, 64, 64), np.float32))) == ["probs"]


def test_densenet_cam_is_the_relu_features_times_the_classifier_weights(tmp_path):
    pytest.importorskip("monai")
    from edgeinfer_export.realmodels import export_real_model, densenet121

    out = export_real_model("densenet121", tmp_path / "d", size=64, seed=2)
    m = load_bundle(out).manifest
    assert m["outputs"][1]["geometry"]["grid"] == [2, 2]
    torch.manual_seed(2)
    model = densenet121(n_labels=2).eval()
    x = np.random.default_rng(3).standard_normal((2, 1, 64, 64)).astype(np.float32)
    with torch.no_grad():
        f = torch.relu(model.net.features(torch.from_numpy(x))).numpy()
        want = np.einsum("lc,nchw->nlhw", model.net.class_layers.out.weight.numpy(), f)
    got = _run(out, x)["cam"]
    assert got == pytest.approx(want, rel=1e-4, abs=1e-4 * float(np.abs(want).max()))
