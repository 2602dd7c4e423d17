"""Look inside an ONNX file before any backend loads it.

Refuses what must never reach a backend: a file that does not parse, operators from
custom domains, external-data paths that escape the bundle. Also describes the graph's
quantization form, which decides which backends may compile it (OpenVINO segfaulted on
unsigned asymmetric Q/DQ graphs here; TensorRT rejects them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import IntegrityError

STANDARD_DOMAINS = frozenset({"", "ai.onnx"})


@dataclass(frozen=True)
class GraphInfo:
    opset: int
    domains: frozenset[str]
    inputs: dict[str, list]          # name -> shape (ints or symbolic names)
    outputs: dict[str, list]
    input_types: dict[str, str]
    external_data: tuple[str, ...]
    op_counts: dict[str, int] = field(default_factory=dict)
    qdq_nodes: int = 0
    #: None if no Q/DQ; else "int8-symmetric", "int8-asymmetric", "uint8"
    quant_form: str | None = None


def _shape(value_info) -> list:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims


def inspect(path: str | Path, *, data: bytes | None = None,
            allowed_domains: frozenset[str] = STANDARD_DOMAINS) -> GraphInfo:
    """Describe and check the model at ``path`` (or its already-read bytes ``data``)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    path = Path(path)
    try:
        model = onnx.load_from_string(data) if data is not None else onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError...: a damaged file
        raise IntegrityError(f"{path.name}: not a readable ONNX model ({exc.__class__.__name__}). "
                             "The file is damaged; restore or re-export it.") from exc
    graph = model.graph
    if not graph.node:
        raise IntegrityError(f"{path.name}: the ONNX graph has no nodes; re-export it.")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    used = {n.domain or "" for n in graph.node}
    bad = sorted(d for d in used if d not in allowed_domains)
    if bad:
        raise IntegrityError(f"{path.name}: uses operators from custom domains {bad}; edgeinfer only "
                             f"loads standard ONNX operators ({sorted(allowed_domains)}). Re-export without custom ops.")
    external = []
    for init in graph.initializer:
        if init.data_location == TensorProto.EXTERNAL:
            loc = next((e.value for e in init.external_data if e.key == "location"), "")
            p = PurePosixPath(loc.replace("\\", "/"))
            if not loc or p.is_absolute() or ".." in p.parts or len(p.parts) != 1:
                raise IntegrityError(f"{path.name}: external data path {loc!r} points outside the bundle; refused.")
            external.append(loc)
    counts: dict[str, int] = {}
    for n in graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    inits = {i.name: i for i in graph.initializer}
    qdq = counts.get("QuantizeLinear", 0) + counts.get("DequantizeLinear", 0)
    form = None
    if qdq:
        unsigned = asym = False
        for n in graph.node:
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                continue
            zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            if zp is None:
                # QuantizeLinear without a zero point outputs uint8 (ONNX spec)
                unsigned |= n.op_type == "QuantizeLinear"
                continue
            if zp.data_type == TensorProto.UINT8:
                unsigned = True
            elif zp.data_type == TensorProto.INT8 and zp.data_location != TensorProto.EXTERNAL:
                if (numpy_helper.to_array(zp) != 0).any():
                    asym = True
        form = "uint8" if unsigned else ("int8-asymmetric" if asym else "int8-symmetric")
    types = {}
    for vi in graph.input:
        if vi.name in inits:
            continue
        types[vi.name] = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
    return GraphInfo(
        opset=opset, domains=frozenset(used),
        inputs={vi.name: _shape(vi) for vi in graph.input if vi.name not in inits},
        outputs={vi.name: _shape(vi) for vi in graph.output},
        input_types=types, external_data=tuple(external), op_counts=counts, qdq_nodes=qdq, quant_form=form,
    )
