"""Small builders shared by tests: ONNX graphs made with onnx.helper (no torch), bundles, synthetic images."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pydicom
from onnx import TensorProto, helper, numpy_helper

from edgeinfer.bundle import artifact_record, write_manifest
from edgeinfer.intake import Intake

ROOT = Path(__file__).resolve().parent.parent


def tiny_onnx(path: Path, *, size: int = 32, n_labels: int = 2, weight: float = 4.0, bias: float = -2.0,
              opset: int = 17, domain: str = "") -> Path:
    """image (batch,1,size,size) -> mean -> Gemm -> Sigmoid -> probs (batch, n_labels)."""
    w = np.full((1, n_labels), weight, dtype=np.float32)
    w[0, 1:] *= 0.5
    b = np.full((n_labels,), bias, dtype=np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probs"], domain=domain),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_labels])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def tiny_manifest(size: int = 32) -> dict:
    cfg = json.loads((ROOT / "export" / "configs" / "phantom-cxr.json").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("input_name", "output_name")}
    cfg["name"] = "tiny-test"
    cfg["preprocessing"]["target_size"] = [size, size]
    cfg["schema_version"] = 1
    cfg["inputs"] = [{"name": "image", "shape": ["batch", 1, size, size], "dtype": "float32", "layout": "NCHW"}]
    cfg["outputs"] = [{"name": "probs", "shape": ["batch", 2], "dtype": "float32", "labels": cfg["labels"]}]
    return cfg


def make_bundle(dir: Path, *, size: int = 32, graph=None, **onnx_kwargs) -> Path:
    """A valid bundle around ``graph(path, size=..., **onnx_kwargs)`` (default :func:`tiny_onnx`)."""
    dir.mkdir(parents=True, exist_ok=True)
    (graph or tiny_onnx)(dir / "model.onnx", size=size, **onnx_kwargs)
    m = tiny_manifest(size)
    m["artifacts"] = [artifact_record(dir, "model.onnx", id="fp32", precision="fp32", format="onnx",
                                      produced_by={"tool": "tests"})]
    write_manifest(dir, m)
    return dir


def slow_onnx(path: Path, *, size: int = 32, iterations: int = 300_000, hang_from_batch: int | None = None,
              hang_steps: int = 2**62, width: int = 64, n_labels: int = 2, weight: float = 4.0, bias: float = -2.0,
              opset: int = 17) -> Path:
    """Like :func:`tiny_onnx`, but each call spins a ``Loop`` of ``iterations`` MatMul+Tanh steps on a
    (batch, ``width``) tensor first: slow on purpose (about 1 us per step per image on a current
    x86 core with one thread, so the default costs ~0.3 s an image), with a few kB of weights.

    The loop's state starts from the pooled image, so no optimiser can fold it away. With
    ``hang_from_batch=k`` a batch of ``k`` or more images loops ``hang_steps`` times (default 2**62:
    it never finishes) while smaller batches take ``iterations`` steps; ``hang_from_batch=1`` hangs
    on every call.
    The output is (batch, ``n_labels``) probabilities, like tiny_onnx's (nudged by at most 0.01 in logit).
    """
    w = np.full((1, n_labels), weight, dtype=np.float32)
    w[0, 1:] *= 0.5
    b = np.full((n_labels,), bias, dtype=np.float32)
    k = (np.random.default_rng(0).standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"),
             numpy_helper.from_array(np.ones((1, width), np.float32), "ones"), numpy_helper.from_array(k, "K"),
             numpy_helper.from_array(np.array(0.01, np.float32), "eps"),
             numpy_helper.from_array(np.array(iterations, np.int64), "trips")]
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "ones"], ["state0"])]          # (batch, width)
    trips = "trips"
    if hang_from_batch is not None:
        inits += [numpy_helper.from_array(np.array(hang_from_batch, np.int64), "hang_at"),
                  numpy_helper.from_array(np.array(hang_steps, np.int64), "forever"),
                  numpy_helper.from_array(np.array([0], np.int64), "first")]
        nodes += [helper.make_node("Shape", ["image"], ["shape"]),
                  helper.make_node("Gather", ["shape", "first"], ["batch1"], axis=0),
                  helper.make_node("Squeeze", ["batch1"], ["batch"]),
                  helper.make_node("GreaterOrEqual", ["batch", "hang_at"], ["hangs"]),
                  helper.make_node("Where", ["hangs", "forever", "trips"], ["m"])]
        trips = "m"
    body = helper.make_graph(
        [helper.make_node("MatMul", ["s_in", "K"], ["mm"]), helper.make_node("Tanh", ["mm"], ["s_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "spin",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, ["batch", width])])
    nodes += [helper.make_node("Loop", [trips, "", "state0"], ["state"], body=body),
              helper.make_node("ReduceMean", ["state"], ["spun"], axes=[1], keepdims=1),
              helper.make_node("Mul", ["spun", "eps"], ["nudge"]),
              helper.make_node("Gemm", ["flat", "W", "B"], ["lin"]),
              helper.make_node("Add", ["lin", "nudge"], ["logits"]),
              helper.make_node("Sigmoid", ["logits"], ["probs"])]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_labels])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def make_slow_bundle(dir: Path, *, size: int = 32, **slow_kwargs) -> Path:
    """:func:`make_bundle` with :func:`slow_onnx`'s graph (same manifest: target size, labels, outputs)."""
    return make_bundle(dir, size=size, graph=slow_onnx, **slow_kwargs)



#: a file holding these bytes (in a header value, say) kills the DyingIntake reading it
DIE_MARKER = b"DIE-ON-READ"


class DyingIntake(Intake):
    """An Intake whose ``take`` kills its process on files named ``die*``, or holding :data:`DIE_MARKER`
    (the node's spool names files by hash): a decoder that crashes. At module level, so that spawned
    intake workers can unpickle it."""

    def take(self, path):
        if Path(path).name.startswith("die") or DIE_MARKER in Path(path).read_bytes()[:65536]:
            os._exit(3)
        return super().take(path)

    @classmethod
    def of(cls, intake: Intake) -> "DyingIntake":
        obj = cls.__new__(cls)
        obj.__dict__.update(intake.__dict__)
        return obj


def synthetic_image(photometric: str = "MONOCHROME2", bits: int = 12, signed: bool = False,
                    shape: tuple[int, int] = (80, 100), seed: int = 0) -> tuple[pydicom.Dataset, np.ndarray]:
    """A header (no pixel element) and stored values: a flat dark half and a noisy half, ``bits`` bits."""
    ds = pydicom.Dataset()
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.Rows, ds.Columns = shape
    rng = np.random.default_rng(seed)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2 ** bits)
    arr = rng.integers(lo, hi, size=shape).astype(np.int16 if signed else np.uint16)
    arr[:, : shape[1] // 2] = lo + (hi - lo) // 4  # a dark half and a noisy half
    return ds, arr
