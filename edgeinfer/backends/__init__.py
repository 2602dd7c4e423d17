"""Backend registry: each backend says whether it can run an artifact, and why not.

Choosing a backend never looks at file suffixes; it asks each registered backend.
Heavy libraries (tensorrt, openvino) are imported only inside a backend's methods.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..bundle import Artifact
from ..errors import BackendUnavailable
from ..precision import RUNTIME
from .base import Backend, Runner, RunnerOptions, RunReport, TensorMeta

_REGISTRY: dict[str, type[Backend]] = {}
#: short names users type -> registry names
ALIASES = {"ort": "onnxruntime", "onnxruntime": "onnxruntime", "trt": "tensorrt", "tensorrt": "tensorrt",
           "ov": "openvino", "openvino": "openvino", "triton": "triton"}


def register(cls: type[Backend]) -> type[Backend]:
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type[Backend]]:
    _load_builtin()
    return dict(_REGISTRY)


def local_backends() -> list[str]:
    """The registered backends that run the model in this process (a remote one is used only when named)."""
    return [name for name, cls in registered().items() if not cls.remote]


def _load_builtin() -> None:
    # importing these modules is cheap: they import their heavy library lazily
    from . import onnxruntime, openvino, tensorrt, triton  # noqa: F401


def get_backend(name: str) -> type[Backend]:
    reg = registered()
    key = ALIASES.get(name.lower(), name.lower())
    if key not in reg:
        raise BackendUnavailable(f"unknown backend {name!r}; known backends: {', '.join(sorted(reg))}.")
    return reg[key]


@dataclass(frozen=True)
class Resolved:
    """What runs a bundle at a precision: the artifact, the backend, and the options to create it with
    (a copy of the caller's, with the runtime precision hint set; the caller's own are never changed)."""

    artifact: Artifact
    backend: type[Backend]
    options: RunnerOptions

    def create(self) -> Runner:
        return self.backend.create(self.artifact, self.options)


def _first_accepting(artifacts: list[Artifact], options: RunnerOptions, backend: str | None,
                     failure: str, installed_only: bool = False) -> tuple[Artifact, type[Backend]]:
    """The first (artifact, backend) pair where the backend is available here and accepts the artifact.
    On failure the error lists every backend tried and why it could not (``failure`` heads it).
    ``installed_only``: ask :meth:`Backend.installed` instead of :meth:`Backend.available`."""
    candidates = [get_backend(backend)] if backend else [get_backend(b) for b in local_backends()]
    reasons = []
    for cls in candidates:
        ok, why = cls.installed() if installed_only else cls.available()
        if not ok:
            reasons.append(f"{cls.name}: {why}")
            continue
        for art in artifacts:
            ok, why = cls.accepts(art, options)
            if ok:
                return art, cls
            reasons.append(f"{cls.name} on {art.id} ({art.format}): {why}" if len(artifacts) > 1
                           else f"{cls.name}: {why}")
    raise BackendUnavailable(f"{failure} on device {options.device!r}:\n" + "\n".join(f"  - {r}" for r in reasons))


def backend_for(artifact: Artifact, options: RunnerOptions, backend: str | None = None) -> type[Backend]:
    """The backend to run ``artifact``: the one asked for, or the first that can."""
    return _first_accepting([artifact], options, backend,
                            f"no backend can run artifact {artifact.id} ({artifact.precision}, {artifact.format})")[1]


def resolve(bundle, precision: str, options: RunnerOptions, backend: str | None = None, *,
            installed_only: bool = False) -> Resolved:
    """What runs ``bundle`` at ``precision``: every artifact of that precision is offered to every
    candidate backend; no look at file suffixes. A runtime precision with no artifact of its own
    (bf16) runs the fp32 graph with a precision hint, set on a copy of ``options``.
    ``installed_only``: a backend counts if it is installed (:meth:`Backend.installed`), so its
    library is not loaded; the caller checks :meth:`Backend.available` before it creates a runner."""
    from ..errors import ArtifactNotFound

    runtime = precision in RUNTIME_PRECISIONS
    graph_precision = "fp32" if runtime else precision
    if runtime:
        options = dataclasses.replace(options, precision_hint=precision)
    arts = [a for a in bundle.artifacts if a.precision == graph_precision]
    if not arts:
        have = sorted({a.precision for a in bundle.artifacts})
        raise ArtifactNotFound(f"bundle {bundle.name} has no {graph_precision} artifact (it has {', '.join(have)}); "
                               "run edgeinfer calibrate to add fp16/int8 graphs.")
    art, cls = _first_accepting(arts, options, backend, f"nothing here can run {bundle.name} at {precision}",
                                installed_only)
    return Resolved(art, cls, options)


#: precisions that exist only at run time, on top of the fp32 graph
RUNTIME_PRECISIONS = RUNTIME


def create_runner(artifact: Artifact, options: RunnerOptions | None = None, backend: str | None = None) -> Runner:
    options = options or RunnerOptions()
    return backend_for(artifact, options, backend).create(artifact, options)


__all__ = ["Backend", "Runner", "RunnerOptions", "RunReport", "TensorMeta", "Resolved", "register", "registered",
           "get_backend", "local_backends", "backend_for", "resolve", "create_runner", "RUNTIME_PRECISIONS"]
