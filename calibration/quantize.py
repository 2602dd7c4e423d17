"""Precision artifacts from the FP32 graph: an FP16 graph and an INT8 Q/DQ graph.

Each has a typed config. ONNX Runtime's stringly-typed ``extra_options`` stay inside this
module; nothing outside it builds one.

FP16 (:func:`convert_fp16`)
    The float16 converter ONNX Runtime maintains (``onnxruntime.transformers.float16``, the
    descendant of onnxconverter-common's) with ``keep_io_types=True`` and an op block list
    that keeps numerically sensitive ops (sigmoid/softmax, reductions, normalisation,
    exp/log/pow) in FP32. Then :func:`_tidy_casts` removes the FP32->FP16->FP32 round trips the
    converter leaves after blocked ops (without it the scores themselves would be rounded to
    FP16) and sorts the nodes topologically (the converter appends its input Casts at the
    end, which ``onnx.checker`` and TensorRT's parser reject). The result must keep the
    model's FP32 inputs/outputs, pass ``onnx.checker`` and load on ORT's CPU provider.

    Why not onnxconverter-common itself: its current release (1.16) leaves a graph output in
    FP16 when a blocked op produces it, despite ``keep_io_types``, and crashes in
    ``remove_unnecessary_cast_node`` when a graph input feeds a blocked op (both reproduced
    in tests/calibration/test_quantize.py). ORT's copy has neither bug and needs no extra
    dependency.

INT8 (:func:`quantize_int8`)
    ONNX Runtime's ``quantize_static`` in the form TensorRT accepts: QDQ format, signed INT8
    for activations and weights, symmetric (zero point 0), per-channel weights, per-tensor
    activations, biases left in FP32 (TensorRT does not take INT32 Q/DQ biases). Only the
    inputs of compute ops (Conv, Gemm, MatMul...) are quantized, so the model's output stays a
    full-precision probability. ``quant_pre_process`` (shape inference + ORT graph
    optimisation) runs first unless disabled. The result is refused unless
    :func:`verify_int8_form` finds exactly that form (and
    :func:`edgeinfer.onnxgraph.inspect` agrees: ``quant_form == "int8-symmetric"``).
    Activation ranges come from ORT's calibrators run by :func:`calibrate_ranges` (not from
    inside ``quantize_static``, which cannot configure the entropy histogram and so degrades
    "entropy" to min-max), and are handed to ``quantize_static`` through its range cache.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeinfer import onnxgraph
from edgeinfer._io import atomic_write
from edgeinfer._lazy import lazy_import

from . import CalibrationError

log = logging.getLogger("edgeinfer.calibration")


# --- configs ----------------------------------------------------------------------------------
class CalibrationMethod(str, Enum):
    """How activation ranges are chosen from the calibration tensors."""

    MINMAX = "minmax"          # the observed range (robust for small sets; sensitive to outliers)
    ENTROPY = "entropy"        # KL-divergence threshold (TensorRT's classic choice)
    PERCENTILE = "percentile"  # clip at a percentile of |x| (Int8Config.percentile)

    def to_ort(self):
        q = lazy_import("onnxruntime.quantization", extra=None, purpose="INT8 calibration")
        return {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                "percentile": q.CalibrationMethod.Percentile}[self.value]


#: ops kept in FP32 in the FP16 graph: the converter's own list (ops without FP16 kernels) plus
#: the numerically sensitive ones (saturating/transcendental, accumulating reductions, normalisation)
FP16_KEEP_FP32_OPS: tuple[str, ...] = (
    "Sigmoid", "Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Sqrt", "Reciprocal",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceProd", "GlobalAveragePool", "GlobalLpPool",
    "BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
    "LpNormalization", "MeanVarianceNormalization",
)

#: ops whose inputs are quantized: the compute-heavy ones TensorRT runs in INT8
INT8_DEFAULT_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Fp16Config:
    #: op types left in FP32 (in addition to the converter's list of ops without FP16 kernels)
    keep_fp32_ops: tuple[str, ...] = FP16_KEEP_FP32_OPS
    #: node names left in FP32
    keep_fp32_nodes: tuple[str, ...] = ()
    #: non-zero weights smaller than this (in magnitude) are raised to it; larger than max are clamped
    min_positive_val: float = 5.96e-08   # FP16's smallest subnormal
    max_finite_val: float = 65504.0      # FP16's largest finite value


@dataclass(frozen=True)
class Int8Config:
    method: CalibrationMethod = CalibrationMethod.MINMAX
    #: percentile calibration: the percentile of |x| kept (99.999 = ORT's default)
    percentile: float = 99.999
    #: histogram bins (entropy, percentile); 2048 as TensorRT's entropy calibrator
    num_bins: int = 2048
    #: entropy: bins of the quantized distribution over [-T, T]; 255 = every signed INT8 level
    num_quantized_bins: int = 255
    #: op types whose inputs are quantized
    op_types: tuple[str, ...] = INT8_DEFAULT_OPS
    #: node names (in the pre-processed graph) left in FP32: the mixed-precision fallback fills this
    keep_fp32_nodes: tuple[str, ...] = ()
    #: run onnxruntime's quant_pre_process (shape inference + optimisation) first
    preprocess: bool = True
    #: images per calibration batch
    batch_size: int = 8
    #: collect activations for at most this many batches before reducing them (bounds memory)
    max_batches_in_memory: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.method, CalibrationMethod):
            object.__setattr__(self, "method", CalibrationMethod(self.method))
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"Int8Config.percentile must be in (0, 100], got {self.percentile}")
        if not self.op_types:
            raise ValueError("Int8Config.op_types must name at least one op type")
        if self.num_quantized_bins < 3 or self.num_bins < self.num_quantized_bins:
            raise ValueError("Int8Config needs num_bins >= num_quantized_bins >= 3")

    def ort_calibrator_options(self) -> dict:
        """Options for ORT's ``create_calibrator``: internal, built only here.

        ``quantize_static`` forwards neither ``num_bins`` nor ``num_quantized_bins`` to its
        calibrator, so with its defaults (128 and 128) the entropy search has exactly one
        candidate, the full range: "entropy" is min-max. We run the calibrator ourselves.
        """
        opts: dict = {"symmetric": True}
        if self.method is CalibrationMethod.ENTROPY:
            opts.update(num_bins=int(self.num_bins), num_quantized_bins=int(self.num_quantized_bins))
        elif self.method is CalibrationMethod.PERCENTILE:
            opts.update(num_bins=int(self.num_bins), percentile=float(self.percentile))
        return opts

    def ort_extra_options(self) -> dict:
        """The ``extra_options`` for ``quantize_static``: internal, built only here."""
        return {
            "ActivationSymmetric": True,      # zero point 0 for activations (TensorRT)
            "WeightSymmetric": True,          # zero point 0 for weights
            "QuantizeBias": False,            # biases stay FP32: TensorRT takes no INT32 bias Q/DQ
            # Q/DQ on the inputs of compute ops only (TensorRT's recommended placement); ORT would also
            # quantize their outputs, which e.g. rounds a classifier's logits to 8 bits before Sigmoid
            "OpTypesToExcludeOutputQuantization": list(self.op_types),
            # a transposed convolution's weight is (in, out, kH, kW): one scale per output channel is axis 1
            # (ORT's default axis 0 gave one scale for the whole tensor: a U-Net's up-sampling layers)
            "QDQOpTypePerChannelSupportToAxis": {"ConvTranspose": 1},
        }


# --- helpers ------------------------------------------------------------------------------------
def _onnx():
    return lazy_import("onnx", purpose="building precision artifacts")


def versions() -> dict:
    """Tool versions recorded in ``produced_by``."""
    out = {}
    for mod, key in (("onnxruntime", "onnxruntime"), ("onnx", "onnx")):
        try:
            out[key] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional tool is just not recorded
            pass
    return out


@contextlib.contextmanager
def _quiet_tools():
    """ORT's quantizer prints progress to stdout and warns through logging: keep stdout clean
    (``--json -`` writes there) and route the chatter to our debug log."""
    buf = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(buf), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        root.setLevel(level)
        text = buf.getvalue().strip()
        if text:
            log.debug("quantization tool output:\n%s", text)


def ort_session(path: str | os.PathLike):
    ort = lazy_import("onnxruntime", purpose="checking precision artifacts")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CalibrationError(f"{Path(path).name} does not load on ONNX Runtime's CPU provider: {exc}") from exc


def run_model(session, tensors: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """First output of ``session`` over ``tensors`` in batches, as float64."""
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: tensors[i:i + batch_size]})[0] for i in range(0, len(tensors), batch_size)]
    return np.concatenate(outs).astype(np.float64)


# --- FP16 ---------------------------------------------------------------------------------------
@dataclass
class Fp16Result:
    path: Path
    kept_fp32_ops: list[str]        # op types of the block list present in this graph
    kept_fp32_nodes: list[str]      # nodes computing in FP32
    fp16_initializers: int
    clamped_values: int             # FP32 weights outside [min_positive_val, max_finite_val] (clamped)
    max_abs_diff: float | None      # vs the FP32 graph on the check tensors (ORT CPU)

    def produced_by(self, config: Fp16Config) -> dict:
        return {"converter": "onnxruntime.transformers.float16.convert_float_to_float16",
                "converter_version": versions().get("onnxruntime"), "keep_io_types": True,
                "keep_fp32_ops": self.kept_fp32_ops, "keep_fp32_nodes": self.kept_fp32_nodes,
                "fp16_initializers": self.fp16_initializers, "clamped_values": self.clamped_values,
                "min_positive_val": config.min_positive_val, "max_finite_val": config.max_finite_val,
                "max_abs_diff_vs_fp32_on_calibration": self.max_abs_diff}


def _cast_to(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _tidy_casts(model) -> int:
    """Remove the FP32 -> FP16 -> FP32 round trips the converter leaves around blocked ops.

    The converter casts a blocked (FP32) op's output to FP16 and, where the consumer is FP32
    too (another blocked op, or a kept-FP32 graph output), straight back: the scores would be
    rounded to FP16 for nothing. Only Cast(to=FLOAT16) -> Cast(to=FLOAT) pairs whose source is
    FP32 are touched (never a Cast through an integer type, which changes values), then
    FP32 -> FP32 Casts are dropped. Returns the number of Casts removed.
    """
    onnx = _onnx()
    from onnx import TensorProto

    g = model.graph
    _topological_sort(g)           # type inference needs the order
    bare = type(model)()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]   # the converter's value_info can be stale (an FP32 tensor named *_fp16)
    inferred = onnx.shape_inference.infer_shapes(bare)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    producer = {o: n for n in g.node for o in n.output}
    for n in g.node:   # Cast16 -> Cast32 on an FP32 source: read the source directly
        p = producer.get(n.input[0]) if n.op_type == "Cast" and _cast_to(n) == TensorProto.FLOAT else None
        if p is not None and p.op_type == "Cast" and _cast_to(p) == TensorProto.FLOAT16 \
                and types.get(p.input[0]) == TensorProto.FLOAT:
            n.input[0] = p.input[0]
    outputs = {o.name for o in g.output}
    graph_inputs = {i.name for i in g.input}
    removed = _drop_dead_casts(g)
    for n in list(g.node):   # FP32 -> FP32 Casts
        if n.op_type != "Cast" or _cast_to(n) != TensorProto.FLOAT or types.get(n.input[0]) != TensorProto.FLOAT:
            continue
        src, dst = n.input[0], n.output[0]
        users = [m for m in g.node if src in m.input]
        if dst in outputs:
            p = producer.get(src)
            if p is None or src in graph_inputs or src in outputs or len(users) != 1:
                continue
            p.output[list(p.output).index(src)] = dst
        else:
            for m in g.node:
                for i, name in enumerate(m.input):
                    if name == dst:
                        m.input[i] = src
        g.node.remove(n)
        removed += 1
    removed += _drop_dead_casts(g)
    _topological_sort(g)
    del g.value_info[:]            # re-infer: the converter's entries no longer match the tensors
    g.value_info.extend(onnx.shape_inference.infer_shapes(model).graph.value_info)
    return removed


def _drop_dead_casts(g) -> int:
    removed = 0
    while True:   # Casts nobody reads any more
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type == "Cast" and not (set(n.output) & used)]
        if not dead:
            return removed
        for n in dead:
            g.node.remove(n)
            removed += 1


def _topological_sort(graph) -> None:
    """Order nodes so that each comes after the producers of its inputs (stable; ONNX requires it,
    and the converter appends its input Casts at the end)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise CalibrationError(f"the FP16 graph has a cycle or a dangling input at {rest[0].name or rest[0].op_type}")
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike, config: Fp16Config | None = None,
                 check_inputs: np.ndarray | None = None) -> Fp16Result:
    """FP32 ONNX graph -> FP16 graph with FP32 inputs and outputs; checked on ORT's CPU provider."""
    cfg = config or Fp16Config()
    onnx = _onnx()
    float16 = lazy_import("onnxruntime.transformers.float16", purpose="FP16 conversion")
    from onnx import TensorProto

    original = onnx.load(str(src))
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(cfg.keep_fp32_ops))
    try:
        with _quiet_tools():
            model = float16.convert_float_to_float16(
                onnx.load(str(src)), min_positive_val=cfg.min_positive_val, max_finite_val=cfg.max_finite_val,
                keep_io_types=True, op_block_list=block, node_block_list=list(cfg.keep_fp32_nodes))
    except Exception as exc:
        raise CalibrationError(f"the FP16 converter failed on {Path(src).name}: {exc}") from exc
    _tidy_casts(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise CalibrationError(f"the FP16 graph fails onnx.checker: {exc}") from exc
    want = {v.name: v.type.tensor_type.elem_type for v in list(original.graph.input) + list(original.graph.output)}
    got = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    if got != want:
        raise CalibrationError(f"the FP16 graph changed the model's input/output types ({want} -> {got})")
    n16 = sum(1 for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16)
    if n16 == 0:
        raise CalibrationError("the FP16 graph has no FP16 weights: every op was kept in FP32")
    clamped = _clamped_weights(original, cfg)
    dst = Path(dst)
    atomic_write(dst, model.SerializeToString())
    onnxgraph.inspect(dst)
    kept_ops = sorted({n.op_type for n in model.graph.node if n.op_type in block})
    kept_nodes = [n.name for n in model.graph.node if n.op_type in block or n.name in cfg.keep_fp32_nodes]
    session = ort_session(dst)
    diff = None
    if check_inputs is not None and len(check_inputs):
        ref = run_model(ort_session(src), check_inputs)
        got_out = run_model(session, check_inputs)
        if not np.isfinite(got_out).all():
            raise CalibrationError("the FP16 graph produces non-finite outputs on the calibration images")
        diff = float(np.max(np.abs(ref - got_out)))
    return Fp16Result(dst, kept_ops, kept_nodes, n16, clamped, diff)


def _clamped_weights(model, cfg: Fp16Config) -> int:
    """How many FP32 weights fall outside what FP16 represents (the converter clamps them)."""
    from onnx import TensorProto, numpy_helper

    n = 0
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            a = np.abs(numpy_helper.to_array(t))
            n += int(((a > 0) & (a < cfg.min_positive_val)).sum() + (a > cfg.max_finite_val).sum())
    return n


# --- INT8 ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Int8Form:
    """What :func:`verify_int8_form` found in a Q/DQ graph."""

    quant_form: str | None
    per_channel_weights: int        # weight DequantizeLinear nodes with a per-channel scale
    per_tensor_weights: int
    activation_quantizers: int      # QuantizeLinear nodes on activations (all per-tensor)
    quantized_nodes: tuple[str, ...]  # compute nodes fed by a DequantizeLinear
    problems: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"quant_form": self.quant_form, "per_channel_weights": self.per_channel_weights,
                "per_tensor_weights": self.per_tensor_weights, "activation_quantizers": self.activation_quantizers,
                "quantized_nodes": len(self.quantized_nodes)}


def verify_int8_form(path: str | os.PathLike, *, raise_on_problem: bool = True) -> Int8Form:
    """Check that a Q/DQ graph is signed INT8, symmetric, per-channel weights, per-tensor activations."""
    onnx = _onnx()
    from onnx import TensorProto, numpy_helper

    path = Path(path)
    info = onnxgraph.inspect(path)
    model = onnx.load(str(path))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    problems = []
    if info.quant_form != "int8-symmetric":
        problems.append(f"quantization form is {info.quant_form!r}, not 'int8-symmetric'")
    per_ch = per_t = acts = 0
    consumers: dict[str, set[str]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, set()).add(n.op_type)

    def channel_axis(dq) -> int:
        """The output-channel axis of the weight ``dq`` dequantizes: 1 for a transposed convolution's (in, out,
        kH, kW), else 0."""
        return 1 if "ConvTranspose" in consumers.get(dq.output[0], ()) else 0

    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = inits.get(n.input[1])
        if scale is None:
            problems.append(f"{n.name}: scale is not a constant")
            continue
        scale_arr = numpy_helper.to_array(scale)
        if not (np.isfinite(scale_arr).all() and (scale_arr > 0).all()):
            problems.append(f"{n.name}: scale is not finite and positive")
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None or zp.data_type != TensorProto.INT8:
            problems.append(f"{n.name}: zero point is not INT8 "
                            f"({'absent' if zp is None else TensorProto.DataType.Name(zp.data_type)})")
        x = inits.get(n.input[0])
        if n.op_type == "DequantizeLinear" and x is not None:   # a stored (weight) tensor
            if x.data_type != TensorProto.INT8:
                problems.append(f"{n.name}: dequantizes {TensorProto.DataType.Name(x.data_type)}, not INT8 "
                                "(e.g. an INT32 bias, which TensorRT does not take)")
            elif scale_arr.ndim == 1 and scale_arr.size > 1:
                per_ch += 1
            elif x.dims and len(x.dims) > 1 and x.dims[channel_axis(n)] > 1:
                per_t += 1
                problems.append(f"{n.name}: weight {n.input[0]} has one scale for {x.dims[channel_axis(n)]} channels "
                                "(per-tensor)")
            elif x.dims and len(x.dims) > 1:
                per_ch += 1           # one output channel: its one scale is per channel
        elif n.op_type == "QuantizeLinear":
            acts += 1
            if scale_arr.size != 1:
                problems.append(f"{n.name}: activation {n.input[0]} is quantized per channel; TensorRT wants per-tensor")
    dq_out = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = tuple(n.name for n in g.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                      and any(i in dq_out for i in n.input))
    form = Int8Form(info.quant_form, per_ch, per_t, acts, quantized, tuple(problems))
    if problems and raise_on_problem:
        raise CalibrationError(f"{path.name} is not in the INT8 form TensorRT accepts (signed, symmetric, "
                               "per-channel weights, per-tensor activations):\n"
                               + "\n".join(f"  - {p}" for p in problems[:20]))
    if not quantized and raise_on_problem:
        raise CalibrationError(f"{path.name}: no node was quantized (op types {INT8_DEFAULT_OPS} not found?)")
    return form


def preprocess_for_quantization(src: str | os.PathLike, dst: str | os.PathLike) -> tuple[bool, str]:
    """ORT's quant_pre_process (shape inference + optimisation); on failure copy ``src`` and say why."""
    q = lazy_import("onnxruntime.quantization", purpose="INT8 calibration")
    try:
        with _quiet_tools():
            q.quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return True, "onnxruntime quant_pre_process (shape inference, graph optimisation)"
    except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation, not a requirement
        shutil.copyfile(src, dst)
        return False, f"quant_pre_process failed ({exc.__class__.__name__}: {exc}); quantized the graph as exported"


def quantizable_nodes(path: str | os.PathLike, op_types: Sequence[str] = INT8_DEFAULT_OPS) -> list[tuple[str, str]]:
    """(name, op_type) of the nodes quantize_static would quantize, in graph order."""
    model = _onnx().load(str(path), load_external_data=False)
    return [(n.name, n.op_type) for n in model.graph.node if n.op_type in set(op_types)]


@dataclass
class Int8Result:
    path: Path
    method: str
    samples: int
    form: Int8Form
    preprocessed: bool
    preprocess_note: str
    kept_fp32: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None  # vs the FP32 graph on the calibration tensors

    def produced_by(self, config: Int8Config) -> dict:
        d = {"quantizer": "onnxruntime.quantization.quantize_static", "format": "QDQ",
             "activations": "int8, symmetric, per-tensor", "weights": "int8, symmetric, per-channel",
             "bias": "fp32", "op_types": list(config.op_types), "method": self.method, "samples": self.samples,
             "batch_size": config.batch_size, "preprocessed": self.preprocessed,
             "kept_fp32": list(self.kept_fp32), **self.form.as_dict(),
             "max_abs_diff_vs_fp32_on_calibration": self.max_abs_diff}
        if config.method is CalibrationMethod.PERCENTILE:
            d["percentile"] = config.percentile
        return d


def calibrate_ranges(model: str | os.PathLike, reader, config: Int8Config, dst: str | os.PathLike) -> int:
    """Run ORT's calibrator for ``config.method`` over ``reader``; save the activation ranges to ``dst``.

    The data go through in strides of ``max_batches_in_memory`` batches, each reduced before
    the next (ORT's ``CalibMaxIntermediateOutputs`` is not used: in ORT, still 1.31, it drops
    the collected outputs without computing their ranges, microsoft/onnxruntime#18893).
    Returns the number of tensors calibrated.
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    if reader is None:
        raise CalibrationError("INT8 calibration needs calibration data (no reader and no range cache)")
    if config.method is not CalibrationMethod.MINMAX and hasattr(reader, "tensors") and hasattr(reader, "rebatched"):
        # ORT's histogram collectors stack the batches of a stride into one array: they must be equal in size
        reader = reader.rebatched(_equal_batch(len(reader.tensors), reader.batch_size))
    if hasattr(reader, "rewind"):
        reader.rewind()
    n_batches = len(reader) if hasattr(reader, "__len__") else None
    stride = min(max(1, config.max_batches_in_memory), n_batches) if n_batches and hasattr(reader, "set_range") else None
    with tempfile.TemporaryDirectory(prefix="edgeinfer-calib-") as tmp, _quiet_tools():
        try:
            calibrator = create_calibrator(Path(model), list(config.op_types),
                                           augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                           calibrate_method=config.method.to_ort(),
                                           providers=["CPUExecutionProvider"],
                                           extra_options=config.ort_calibrator_options())
            if stride:
                for start in range(0, n_batches, stride):
                    reader.set_range(start, start + stride)
                    calibrator.collect_data(reader)
                reader.rewind()
            else:
                calibrator.collect_data(reader)
            ranges = calibrator.compute_data()
        except CalibrationError:
            raise
        except Exception as exc:
            raise CalibrationError(f"INT8 calibration ({config.method.value}) failed: "
                                   f"{exc.__class__.__name__}: {exc}") from exc
        save_tensors_data(ranges, Path(dst))
    return len(ranges.data)


def _equal_batch(n: int, at_most: int) -> int:
    """The largest batch size <= ``at_most`` that splits ``n`` images into equal batches."""
    return max(d for d in range(1, max(1, min(at_most, n)) + 1) if n % d == 0)


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, reader, config: Int8Config | None = None, *,
                  samples: int | None = None, ranges_cache: str | os.PathLike | None = None,
                  check_inputs: np.ndarray | None = None, already_preprocessed: bool = False) -> Int8Result:
    """Calibrate on ``reader`` and write the Q/DQ graph to ``dst``; refuse anything but the TensorRT form.

    ``reader``: an ORT CalibrationDataReader (e.g. :class:`edgeinfer_calibration.dataset.TensorReader`);
    may be None when ``ranges_cache`` already holds the activation ranges.
    ``ranges_cache``: a JSON file of activation ranges (ORT's format). Written by the first
    call, reused by later ones (the mixed-precision search re-quantizes with other nodes kept
    in FP32 without calibrating again). Its owner must tie it to the graph, the data and the
    method: ORT checks only the method.
    """
    cfg = config or Int8Config()
    q = lazy_import("onnxruntime.quantization", purpose="INT8 calibration")
    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix="edgeinfer-int8-") as tmp:
        if cfg.preprocess and not already_preprocessed:
            model_in = Path(tmp) / "preprocessed.onnx"
            pre, note = preprocess_for_quantization(src, model_in)
        else:
            model_in, pre = src, already_preprocessed
            note = "pre-processed by the caller" if already_preprocessed else "not pre-processed (Int8Config.preprocess=False)"
        present = {name for name, _ in quantizable_nodes(model_in, cfg.op_types)}
        unknown = [n for n in cfg.keep_fp32_nodes if n not in present]
        if unknown:
            raise CalibrationError(f"nodes to keep in FP32 are not quantizable nodes of the graph: {unknown[:5]}")
        cache = Path(ranges_cache) if ranges_cache is not None else Path(tmp) / "ranges.json"
        if not cache.is_file():
            calibrate_ranges(model_in, reader, cfg, cache)
        out_tmp = Path(tmp) / "int8.onnx"
        try:
            with _quiet_tools():
                q.quantize_static(
                    str(model_in), str(out_tmp), None, quant_format=q.QuantFormat.QDQ,
                    op_types_to_quantize=list(cfg.op_types), per_channel=True, reduce_range=False,
                    activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                    nodes_to_exclude=list(cfg.keep_fp32_nodes), calibrate_method=cfg.method.to_ort(),
                    extra_options=cfg.ort_extra_options(), calibration_cache_path=str(cache))
        except Exception as exc:
            raise CalibrationError(f"onnxruntime quantize_static failed: {exc.__class__.__name__}: {exc}") from exc
        form = verify_int8_form(out_tmp)
        diff = None
        if check_inputs is not None and len(check_inputs):
            ref = run_model(ort_session(src), check_inputs)
            got = run_model(ort_session(out_tmp), check_inputs)
            if not np.isfinite(got).all():
                raise CalibrationError("the INT8 graph produces non-finite outputs on the calibration images")
            diff = float(np.max(np.abs(ref - got)))
        else:
            ort_session(out_tmp)
        shutil.copyfile(out_tmp, dst)
    n = samples if samples is not None else (len(reader.tensors) if hasattr(reader, "tensors") else None)
    return Int8Result(dst, cfg.method.value, n, form, pre, note, list(cfg.keep_fp32_nodes), diff)


__all__ = ["CalibrationMethod", "Fp16Config", "Int8Config", "FP16_KEEP_FP32_OPS", "INT8_DEFAULT_OPS",
           "convert_fp16", "Fp16Result", "calibrate_ranges", "quantize_int8", "Int8Result", "verify_int8_form", "Int8Form",
           "preprocess_for_quantization", "quantizable_nodes", "ort_session", "run_model", "versions"]
