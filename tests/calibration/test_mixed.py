"""Mixed-precision fallback: find the layer INT8 breaks, keep it in FP32, pass the gate."""
from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeinfer_calibration.calibrate import FallbackConfig, calibrate_bundle
from edgeinfer_calibration.dataset import build_calibration_set
from edgeinfer_calibration.mixed import CheckSet, quantize_with_fallback
from edgeinfer_calibration.quantize import Int8Config, ort_session, run_model, verify_int8_form
from edgeinfer.bundle import artifact_record, load_bundle, write_manifest
from edgeinfer.gate import GateConfig

SIZE = 64


def outlier_model(path, w: float = 1.0, b: float = 0.0):
    """The classic INT8 failure: one channel with huge activations next to one that carries the signal.

    conv_a: channel 0 = 40 x box blur (large values), channel 1 = 0.02 x box blur (small values,
    the only thing the score depends on); relu; conv_b reads channel 1 only. Per-tensor
    quantization of conv_b's input spends all 8 bits on channel 0 and wipes channel 1 out.
    """
    wa = np.zeros((2, 1, 3, 3), np.float32)
    wa[0, 0] = 40.0 / 9.0
    wa[1, 0] = 0.02 / 9.0
    wb = np.array([0.0, 1.0], np.float32).reshape(1, 2, 1, 1)
    wg = np.full((1, 2), w, np.float32)
    wg[0, 1] *= 0.5
    bg = np.full((2,), b, np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        helper.make_node("Conv", ["ra", "wb"], ["b"], name="conv_b"),
        helper.make_node("GlobalAveragePool", ["b"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wg", "bg"], ["logits"], name="head"),
        helper.make_node("Sigmoid", ["logits"], ["probs"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes, "outlier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(x, n) for x, n in ((wa, "wa"), (wb, "wb"), (wg, "wg"), (bg, "bg"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def outlier(tmp_path_factory, cal_dir, val_dir, cache_dir):
    """(bundle dir, calibration set, check set): the outlier model, its head set so scores spread."""
    from helpers import tiny_manifest

    d = tmp_path_factory.mktemp("mixed") / "outlier"
    d.mkdir()
    m = tiny_manifest(SIZE)
    m["artifacts"] = [artifact_record(d, outlier_model(d / "model.onnx").name, id="fp32", precision="fp32",
                                      format="onnx", produced_by={"tool": "tests"})]
    write_manifest(d, m)
    b = load_bundle(d)
    cal = build_calibration_set(cal_dir, b, samples=16, seed=1, cache_dir=cache_dir)
    val = build_calibration_set(val_dir, b, samples=24, seed=1, cache_dir=cache_dir)
    p = run_model(ort_session(d / "model.onnx"), val.tensors)[:, 0]
    f = np.log(p / (1 - p))                              # the pooled feature (w=1, b=0)
    w = 3.0 / f.std()
    outlier_model(d / "model.onnx", w=w, b=-w * np.median(f) + 0.3)
    m["artifacts"] = [artifact_record(d, "model.onnx", id="fp32", precision="fp32", format="onnx",
                                      produced_by={"tool": "tests"})]
    write_manifest(d, m)
    return d, cal, CheckSet.from_calibration_set(val, description="val phantoms")


def test_the_outlier_model_spreads_its_scores(outlier):
    d, _, check = outlier
    p = run_model(ort_session(d / "model.onnx"), check.tensors).max(axis=1)
    assert (p >= 0.9).any() and ((p >= 0.5) & (p < 0.9)).any() and (p < 0.5).any()


def test_fallback_keeps_exactly_the_guilty_layer(tmp_path, outlier):
    d, cal, check = outlier
    b = load_bundle(d)
    r = quantize_with_fallback(d / "model.onnx", tmp_path / "int8.onnx", cal.reader("image"), check, b,
                               config=Int8Config(), gate=GateConfig())
    assert not r.first.passed and r.first.metrics["agreement"] < 0.995     # plain INT8 fails the default gate
    assert r.passed and r.kept_fp32 == ["conv_b"]
    assert r.ranking[0]["node"] == "conv_b" and r.ranking[0]["disagreements_alone"] > 0
    assert r.int8.kept_fp32 == ["conv_b"] and r.final.metrics["agreement"] == 1.0
    # still the TensorRT form, with conv_a and the head quantized and conv_b reading FP32
    form = verify_int8_form(tmp_path / "int8.onnx")
    assert set(form.quantized_nodes) == {"conv_a", "head"}
    g = onnx.load(str(tmp_path / "int8.onnx")).graph
    dq_out = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    conv_b = next(n for n in g.node if n.name == "conv_b")
    assert not set(conv_b.input) & dq_out
    report = json.loads(json.dumps(r.report()))
    assert report["kept_fp32"] == ["conv_b"] and report["full_int8"]["passed"] is False


def test_calibrate_reports_kept_layers_in_the_bundle(tmp_path, outlier, cal_dir, val_dir, cache_dir):
    d, _, _ = outlier
    res = calibrate_bundle(d, cal_dir, out=tmp_path / "q", samples=16, seed=1, cache_dir=cache_dir,
                           fallback=FallbackConfig(check_data=str(val_dir), labels=str(val_dir / "labels.csv")))
    b = load_bundle(tmp_path / "q")
    int8 = b.artifact(id="int8").record
    assert int8["precision"] == "int8" and int8["produced_by"]["kept_fp32"] == ["conv_b"]
    assert int8["produced_by"]["gate_check"]["passed"] is True
    assert b.manifest["calibration"]["int8_gate_check"]["full_int8"]["passed"] is False
    assert res.int8_passed is True


def test_no_fallback_needed_keeps_everything_int8(tmp_path, outlier):
    d, cal, check = outlier
    r = quantize_with_fallback(d / "model.onnx", tmp_path / "int8.onnx", cal.reader("image"), check,
                               load_bundle(d), config=Int8Config(keep_fp32_nodes=("conv_b",)))
    assert r.passed and r.first.passed and r.kept_fp32 == ["conv_b"] and r.ranking == []


def test_an_impossible_gate_stops_at_max_kept_and_says_so(tmp_path, model_bundle, cal_dir, cache_dir):
    b = load_bundle(model_bundle)
    cal = build_calibration_set(cal_dir, b, samples=8, seed=2, cache_dir=cache_dir)
    strict = GateConfig(max_abs_score_diff=1e-9)                # nothing quantized passes this
    r = quantize_with_fallback(model_bundle / "model.onnx", tmp_path / "int8.onnx", cal.reader("image"),
                               CheckSet.from_calibration_set(cal), b, gate=strict, max_kept=2)
    assert not r.passed and len(r.kept_fp32) == 2 and len(r.steps) == 2
    assert len(r.ranking) == 12        # every Conv (the 10 of the network, the CAM output's) and the Gemm was tried
    assert any("max |score - FP32 score|" in x for x in r.final.reasons)
    verify_int8_form(tmp_path / "int8.onnx")                     # the closest graph is still well-formed


def test_check_set_validation():
    from edgeinfer_calibration import CalibrationError

    with pytest.raises(CalibrationError):
        CheckSet(np.zeros((2, 1, 4, 4), np.float32), ["a"])


def test_fallback_from_the_cli_flags(tmp_path, outlier, cal_dir, cache_dir):
    from edgeinfer_calibration.cli import add_parsers

    d, _, _ = outlier
    bundle = tmp_path / "b"
    shutil.copytree(d, bundle)
    p = argparse.ArgumentParser()
    add_parsers(p.add_subparsers())
    args = p.parse_args(["calibrate", str(bundle), "--data", str(cal_dir), "--samples", "16", "--seed", "1",
                         "--cache-dir", str(cache_dir), "--no-progress", "--max-kept", "1", "--min-agreement", "0.9",
                         "--skip-fp16"])
    assert args.func(args) == 0
    m = load_bundle(bundle).manifest
    assert [a["id"] for a in m["artifacts"]] == ["fp32", "int8"]
    assert m["artifacts"][1]["produced_by"]["gate_check"]["gate"]["min_agreement"] == 0.9
