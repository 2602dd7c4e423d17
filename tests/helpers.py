"""Small builders shared by tests: ONNX graphs made with onnx.helper (no torch) and bundles."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeinfer.bundle import artifact_record, write_manifest

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


def make_bundle(dir: Path, *, size: int = 32, **onnx_kwargs) -> Path:
    dir.mkdir(parents=True, exist_ok=True)
    tiny_onnx(dir / "model.onnx", size=size, **onnx_kwargs)
    m = tiny_manifest(size)
    m["artifacts"] = [artifact_record(dir, "model.onnx", id="fp32", precision="fp32", format="onnx",
                                      produced_by={"tool": "tests"})]
    write_manifest(dir, m)
    return dir
