"""Backend registry: each backend says whether it can run an artifact, and why not.

Choosing a backend never looks at file suffixes; it asks each registered backend.
Heavy libraries (tensorrt, openvino) are imported only inside a backend's methods.
"""
from __future__ import annotations

from ..bundle import Artifact
from ..errors import BackendUnavailable
from .base import Backend, Runner, RunnerOptions, RunReport, TensorMeta

_REGISTRY: dict[str, type[Backend]] = {}
#: short names users type -> registry names
ALIASES = {"ort": "onnxruntime", "onnxruntime": "onnxruntime", "trt": "tensorrt", "tensorrt": "tensorrt",
           "ov": "openvino", "openvino": "openvino"}


def register(cls: type[Backend]) -> type[Backend]:
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type[Backend]]:
    _load_builtin()
    return dict(_REGISTRY)


def _load_builtin() -> None:
    # importing these modules is cheap: they import their heavy library lazily
    from . import onnxruntime, openvino, tensorrt  # noqa: F401


def get_backend(name: str) -> type[Backend]:
    reg = registered()
    key = ALIASES.get(name.lower(), name.lower())
    if key not in reg:
        raise BackendUnavailable(f"unknown backend {name!r}; known backends: {', '.join(sorted(reg))}.")
    return reg[key]


def choose(artifact: Artifact, options: RunnerOptions, backend: str | None = None) -> type[Backend]:
    """The backend to run ``artifact``: the one asked for, or the first that can.

    On failure, the error lists every backend tried and why it could not.
    """
    candidates = [get_backend(backend)] if backend else list(registered().values())
    reasons = []
    for cls in candidates:
        ok, why = cls.available()
        if ok:
            ok, why = cls.accepts(artifact, options)
        if ok:
            return cls
        reasons.append(f"{cls.name}: {why}")
    raise BackendUnavailable(
        f"no backend can run artifact {artifact.id} ({artifact.precision}, {artifact.format}) "
        f"on device {options.device!r}:\n" + "\n".join(f"  - {r}" for r in reasons))


def select(bundle, precision: str, options: RunnerOptions, backend: str | None = None):
    """(artifact, backend class) for running ``bundle`` at ``precision``: every artifact of that
    precision is offered to every candidate backend; no look at file suffixes.

    A runtime precision with no artifact of its own (bf16) runs the fp32 graph with a precision hint.
    """
    from ..errors import IntegrityError

    graph_precision = "fp32" if precision in RUNTIME_PRECISIONS else precision
    if precision in RUNTIME_PRECISIONS:
        options.precision_hint = precision
    arts = [a for a in bundle.artifacts if a.precision == graph_precision]
    if not arts:
        have = sorted({a.precision for a in bundle.artifacts})
        raise IntegrityError(f"bundle {bundle.name} has no {graph_precision} artifact (it has {', '.join(have)}); "
                             "run edgeinfer calibrate to add fp16/int8 graphs.")
    candidates = [get_backend(backend)] if backend else list(registered().values())
    reasons = []
    for cls in candidates:
        ok, why = cls.available()
        if not ok:
            reasons.append(f"{cls.name}: {why}")
            continue
        for art in arts:
            ok, why = cls.accepts(art, options)
            if ok:
                return art, cls
            reasons.append(f"{cls.name} on {art.id} ({art.format}): {why}")
    raise BackendUnavailable(f"nothing here can run {bundle.name} at {precision} on device {options.device!r}:\n"
                             + "\n".join(f"  - {r}" for r in reasons))


#: precisions that exist only at run time, on top of the fp32 graph
RUNTIME_PRECISIONS = ("bf16",)


def create_runner(artifact: Artifact, options: RunnerOptions | None = None, backend: str | None = None) -> Runner:
    options = options or RunnerOptions()
    return choose(artifact, options, backend).create(artifact, options)


__all__ = ["Backend", "Runner", "RunnerOptions", "RunReport", "TensorMeta", "register", "registered",
           "get_backend", "choose", "select", "create_runner", "RUNTIME_PRECISIONS"]
