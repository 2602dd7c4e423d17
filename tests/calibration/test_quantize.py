"""FP16 and INT8 graphs: their form, checked in the files, and their scores through the runtime's runner."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from edgeinfer_calibration import CalibrationError
from edgeinfer_calibration.dataset import build_calibration_set
from edgeinfer_calibration.quantize import CalibrationMethod, Int8Config, convert_fp16, quantize_int8, verify_int8_form
from edgeinfer import onnxgraph
from edgeinfer.backends import RunnerOptions, create_runner
from edgeinfer.bundle import artifact_record, load_bundle, upsert_artifact, write_manifest


@pytest.fixture(scope="module")
def calib(model_bundle, cal_dir, cache_dir):
    return build_calibration_set(cal_dir, load_bundle(model_bundle), samples=12, seed=5, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def check_x(val_dir, model_bundle, cache_dir):
    return build_calibration_set(val_dir, load_bundle(model_bundle), samples=16, seed=5, cache_dir=cache_dir).tensors


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, model_bundle, calib):
    """A bundle copy holding fp32, fp16 and int8 artifacts made by this module's functions."""
    d = tmp_path_factory.mktemp("quantize") / "bundle"
    shutil.copytree(model_bundle, d)
    fp16 = convert_fp16(d / "model.onnx", d / "model.fp16.onnx", check_inputs=calib.tensors)
    int8 = quantize_int8(d / "model.onnx", d / "model.int8.onnx", calib.reader("image", 4), Int8Config(),
                         check_inputs=calib.tensors)
    m = load_bundle(d, verify=False).manifest
    for ident, file in (("fp16", "model.fp16.onnx"), ("int8", "model.int8.onnx")):
        m = upsert_artifact(m, artifact_record(d, file, id=ident, precision=ident, format="onnx",
                                               produced_by={"tool": "tests"}, source_artifact="fp32"))
    write_manifest(d, m)
    return d, fp16, int8


def scores_through_runner(bundle_dir, ident, x):
    b = load_bundle(bundle_dir)
    with create_runner(b.artifact(id=ident), RunnerOptions()) as r:
        out = r.infer({"image": x})["probs"]
        report = r.report()
    return out.astype(np.float64), report


# --- FP16 ---------------------------------------------------------------------------------------
def test_fp16_graph_has_fp32_io_fp16_weights_and_sensitive_ops_in_fp32(graphs):
    d, res, _ = graphs
    m = onnx.load(str(d / "model.fp16.onnx"))
    assert [i.type.tensor_type.elem_type for i in m.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in m.graph.output] == [TensorProto.FLOAT] * 2   # scores, CAM
    inits = [t for t in m.graph.initializer]
    assert sum(t.data_type == TensorProto.FLOAT16 for t in inits) >= 10   # every conv weight
    assert res.fp16_initializers == sum(t.data_type == TensorProto.FLOAT16 for t in inits)
    assert {"Sigmoid", "ReduceMean"} <= set(res.kept_fp32_ops)
    # the graph output comes straight from the FP32 Sigmoid, not through an FP16 round trip
    producer = next(n for n in m.graph.node if "probs" in n.output)
    assert producer.op_type == "Sigmoid"
    # and the Sigmoid's input is FP32: it is fed by a Cast to FLOAT
    feeder = next(n for n in m.graph.node if producer.input[0] in n.output)
    assert feeder.op_type == "Cast" and next(a.i for a in feeder.attribute if a.name == "to") == TensorProto.FLOAT
    onnx.checker.check_model(m, full_check=True)


def test_fp16_when_a_graph_input_feeds_a_blocked_op(tmp_path):
    """tiny model: image -> GlobalAveragePool (kept FP32) -> Gemm (FP16) -> Sigmoid (FP32) -> probs.

    onnxconverter-common 1.16 crashes on this graph and leaves probs in FP16; ORT's converter
    plus our tidying gives FP32 IO, no FP32->FP16->FP32 round trip, nodes in topological order.
    """
    from helpers import tiny_onnx

    src = tiny_onnx(tmp_path / "tiny.onnx")
    res = convert_fp16(src, tmp_path / "tiny16.onnx")
    m = onnx.load(str(res.path))
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    assert ops == ["GlobalAveragePool", "Cast", "Flatten", "Gemm", "Cast", "Sigmoid"]
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
    inits = {t.name: t.data_type for t in m.graph.initializer}
    assert inits[gemm.input[1]] == TensorProto.FLOAT16


def test_fp16_runs_on_the_ort_runner_and_scores_close_to_fp32(graphs, check_x):
    d, res, _ = graphs
    ref, _ = scores_through_runner(d, "fp32", check_x)
    got, report = scores_through_runner(d, "fp16", check_x)
    assert report.precision == "fp16" and report.provider == "CPUExecutionProvider"
    assert got.dtype == np.float64 and np.isfinite(got).all()
    assert np.max(np.abs(got - ref)) < 5e-3
    assert res.max_abs_diff is not None and res.max_abs_diff < 5e-3


# --- INT8 ---------------------------------------------------------------------------------------
def test_int8_graph_is_signed_symmetric_per_channel_weights_per_tensor_activations(graphs):
    d, _, res = graphs
    path = d / "model.int8.onnx"
    assert onnxgraph.inspect(path).quant_form == "int8-symmetric"
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:
        zp = inits[n.input[2]]
        assert zp.data_type == TensorProto.INT8 and not numpy_helper.to_array(zp).any()
    weight_dq = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    convs = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(weight_dq) == len(convs)
    for n in weight_dq:
        w, scale = inits[n.input[0]], numpy_helper.to_array(inits[n.input[1]])
        assert w.data_type == TensorProto.INT8
        assert scale.ndim == 1 and scale.size == w.dims[0] > 1          # one scale per output channel
        assert next(a.i for a in n.attribute if a.name == "axis") == 0
    for n in qdq:
        if n.op_type == "QuantizeLinear":
            assert numpy_helper.to_array(inits[n.input[1]]).size == 1    # activations: per tensor
    # no INT32 bias Q/DQ, and the classifier output is not quantized
    assert all(inits[n.input[0]].data_type != TensorProto.INT32 for n in weight_dq)
    sig = next(n for n in m.graph.node if n.op_type == "Sigmoid")
    assert not any(sig.input[0] in n.output for n in qdq)
    assert res.form.per_channel_weights == len(convs) and res.form.per_tensor_weights == 0


def test_int8_runs_on_the_ort_runner_and_scores_close_to_fp32(graphs, check_x):
    d, _, _ = graphs
    ref, _ = scores_through_runner(d, "fp32", check_x)
    got, report = scores_through_runner(d, "int8", check_x)
    assert report.precision == "int8"
    diff = np.abs(got - ref)
    assert np.isfinite(got).all()
    assert diff.mean() < 0.03 and diff.max() < 0.5      # INT8 on a small CNN, 12 calibration images
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.98


def test_ort_defaults_are_refused(tmp_path, model_bundle, calib):
    """quantize_static's defaults (asymmetric activations; unsigned before ORT 1.2x) are not the TensorRT form."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    out = tmp_path / "default.onnx"
    quantize_static(str(model_bundle / "model.onnx"), str(out), calib.reader("image", 4), quant_format=QuantFormat.QDQ)
    with pytest.raises(CalibrationError, match="not in the INT8 form TensorRT accepts"):
        verify_int8_form(out)
    form = verify_int8_form(out, raise_on_problem=False)
    assert form.quant_form in ("uint8", "int8-asymmetric") and form.problems


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_methods_make_the_same_form_with_other_ranges(tmp_path, model_bundle, calib, graphs, method):
    cfg = Int8Config(method=method, preprocess=False, num_bins=512, percentile=99.9)
    res = quantize_int8(model_bundle / "model.onnx", tmp_path / "q.onnx", calib.reader("image", 4), cfg)
    assert res.method == method and res.form.quant_form == "int8-symmetric"

    def act_scales(path):
        m = onnx.load(str(path))
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        return {n.input[0]: float(inits[n.input[1]]) for n in m.graph.node if n.op_type == "QuantizeLinear"}

    mine, minmax = act_scales(tmp_path / "q.onnx"), act_scales(graphs[0] / "model.int8.onnx")
    common = set(mine) & set(minmax)
    assert common
    # clipping methods choose narrower ranges than min-max for some activations, never wider
    assert any(mine[k] < 0.95 * minmax[k] for k in common)
    assert all(mine[k] <= minmax[k] * 1.0001 for k in common)


def test_typed_config():
    assert Int8Config(method="entropy").method is CalibrationMethod.ENTROPY
    with pytest.raises(ValueError):
        Int8Config(method="kl")
    with pytest.raises(ValueError):
        Int8Config(percentile=0)
    opts = Int8Config().ort_extra_options()
    assert opts["ActivationSymmetric"] and opts["WeightSymmetric"] and not opts["QuantizeBias"]


def test_keep_fp32_nodes_must_exist(tmp_path, model_bundle, calib):
    with pytest.raises(CalibrationError, match="not quantizable nodes"):
        quantize_int8(model_bundle / "model.onnx", tmp_path / "q.onnx", calib.reader("image"),
                      Int8Config(keep_fp32_nodes=("no-such-node",), preprocess=False))
