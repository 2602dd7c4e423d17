import numpy as np
import onnx
import pytest
from helpers import make_bundle
from onnx import helper, numpy_helper

from edgeinfer.backends import RunnerOptions, create_runner
from edgeinfer.backends.openvino import hint_for
from edgeinfer.bundle import artifact_record, load_bundle, upsert_artifact, write_manifest
from edgeinfer.errors import BackendUnavailable

pytest.importorskip("openvino")
AMX = ["FP32", "BF16", "FP16", "INT8"]


def test_hint_policy_is_explicit_and_pure():
    assert hint_for("fp32", None, AMX) == ("f32", None)        # never OpenVINO's silent BF16 default
    assert hint_for("fp32", "bf16", AMX) == ("bf16", None)
    assert "no native BF16" in hint_for("fp32", "bf16", ["FP32", "INT8"])[1]
    assert "applies to the fp32 graph" in hint_for("int8", "bf16", AMX)[1]
    assert hint_for("fp16", None, ["FP32"]) == ("f32", None)
    assert "not one of" in hint_for("fp32", "fp8", AMX)[1]


def test_fp32_matches_onnxruntime_and_reports_what_ran(tiny_bundle):
    art = load_bundle(tiny_bundle).artifact(precision="fp32")
    x = {"image": np.random.default_rng(0).random((4, 1, 32, 32), dtype=np.float32)}
    with create_runner(art, RunnerOptions(threads=1), backend="ort") as r:
        ref = r.infer(x)["probs"]
    with create_runner(art, RunnerOptions(threads=1), backend="openvino") as r:
        got = r.infer(x)["probs"]
        rep = r.report()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert rep.backend == "openvino" and rep.precision == "fp32" and rep.details["inference_precision"] == "fp32"


def test_bf16_runtime_precision_is_reported(tiny_bundle):
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no BF16")
    art = load_bundle(tiny_bundle).artifact(precision="fp32")
    x = {"image": np.random.default_rng(1).random((2, 1, 32, 32), dtype=np.float32)}
    with create_runner(art, RunnerOptions(precision_hint="bf16"), backend="openvino") as r:
        got = r.infer(x)["probs"]
        rep = r.report()
    with create_runner(art, backend="ort") as r:
        ref = r.infer(x)["probs"]
    assert rep.precision == "bf16" and rep.details["inference_precision"] == "bf16"
    np.testing.assert_allclose(got, ref, atol=2e-2)


def _uint8_qdq_bundle(tmp_path):
    """A graph in ONNX Runtime's default Q/DQ form: uint8, asymmetric."""
    d = make_bundle(tmp_path / "b")
    m = onnx.load(str(d / "model.onnx"))
    g = m.graph
    g.initializer.extend([numpy_helper.from_array(np.array(0.01, np.float32), "s"),
                          numpy_helper.from_array(np.array(128, np.uint8), "zp")])
    q = helper.make_node("QuantizeLinear", ["image", "s", "zp"], ["image_q"])
    dq = helper.make_node("DequantizeLinear", ["image_q", "s", "zp"], ["image_dq"])
    g.node[0].input[0] = "image_dq"
    nodes = [q, dq] + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(m, str(d / "model.onnx"))
    man = load_bundle(d, verify=False).manifest
    write_manifest(d, upsert_artifact(man, artifact_record(d, "model.onnx", id="fp32", precision="fp32",
                                                           format="onnx", produced_by={"tool": "tests"})))
    return d


def test_unsigned_asymmetric_qdq_graph_is_refused_before_compile(tmp_path):
    d = _uint8_qdq_bundle(tmp_path)
    art = load_bundle(d).artifact(precision="fp32")
    with pytest.raises(BackendUnavailable, match="uint8.*refused"):
        create_runner(art, backend="openvino").activate()
    with create_runner(art, backend="ort") as r:  # ONNX Runtime itself runs it
        assert r.infer({"image": np.zeros((1, 1, 32, 32), np.float32)})["probs"].shape == (1, 2)
