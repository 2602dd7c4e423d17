"""Case planning for ``edgeinfer bench``: the settings, and which (backend, precision) can run here
on which artifact, or why not.

The backends come from the registry (:func:`edgeinfer.backends.registered`), in report order.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ..errors import BackendUnavailable, UsageError
from ..precision import ALL
from .stats import _ms

#: report order of the registered backends: these first, any other one after them by name
BACKEND_ORDER = ("onnxruntime", "openvino", "tensorrt")
#: table labels ("ort fp32"); a backend not named here is labelled with its registry name
SHORT = {"onnxruntime": "ort", "openvino": "openvino", "tensorrt": "trt"}
PRECISIONS = ALL
#: the row every other one is compared with
BASELINE = ("onnxruntime", "fp32")
#: where each backend runs (ONNX Runtime's device is a setting); a backend not named here: cpu
_DEVICE = {"openvino": "cpu", "tensorrt": "cuda"}


def backend_names() -> tuple[str, ...]:
    """Every registered backend that runs here (``edgeinfer.backends.local_backends()``), in report order; the
    triton backend's figures come from ``benchmarks/triton_bench.py``, which starts a server."""
    from ..backends import local_backends

    rank = {name: i for i, name in enumerate(BACKEND_ORDER)}
    return tuple(sorted(local_backends(), key=lambda name: (rank.get(name, len(rank)), name)))


@dataclass
class BenchSettings:
    backends: tuple[str, ...] = ("onnxruntime",)
    precisions: tuple[str, ...] = ("fp32",)
    batches: tuple[int, ...] = (1,)
    warmup_s: float = 1.0
    #: timed seconds per (row, side): the runtime call and the raw call get this much each
    duration_s: float | None = 3.0
    #: or a fixed number of timed calls per side (overrides duration_s)
    iterations: int | None = None
    blocks: int = 5
    #: inference threads given to every backend; None = each backend's default
    threads: int | None = None
    #: ONNX Runtime execution device (cpu | cuda | tensorrt)
    device: str = "cpu"
    #: ONNX Runtime's CUDA provider settings (``CudaSettings.parse``: "graph=off,conv=heuristic"); None = defaults
    cuda_options: str | None = None
    cache_dir: str | None = None
    #: distinct real images the inputs rotate over
    images: int = 8
    data: str | None = None
    #: end-to-end modes: auto (ORT fp32 + the fastest gated mode) | all | none
    e2e: str = "auto"
    e2e_workers: int = 2
    #: the overlapped pass's workers are processes, not threads (Intake.stream(processes=True))
    e2e_processes: bool = False
    #: passes over the folder, serial and overlapped alternating; medians are reported
    e2e_repeats: int = 3
    seed: int = 2024
    #: minimum timed calls per block and side, however slow the model
    min_calls: int = 3

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Case:
    backend: str                     # registry name
    precision: str                   # what was asked: fp32 | fp16 | int8 | bf16
    artifact: Any = None             # edgeinfer.bundle.Artifact
    hint: str | None = None          # RunnerOptions.precision_hint
    device: str = "cpu"
    reason: str | None = None        # why it cannot run here (None: try it)
    import_ms: float | None = None   # first import of the backend library in this process

    @property
    def label(self) -> str:
        return f"{SHORT.get(self.backend, self.backend)} {self.precision}"


def parse_list(text: str | None, allowed: Sequence[str], what: str, aliases: dict | None = None) -> list[str]:
    """``"fp32,int8"`` / ``"all"`` -> a checked list in ``allowed`` order."""
    if text is None or text.strip().lower() == "all":
        return list(allowed)
    out = []
    for item in (x.strip().lower() for x in text.split(",") if x.strip()):
        item = (aliases or {}).get(item, item)
        if item not in allowed:
            raise UsageError(f"--{what} {item!r}: choose from {', '.join(allowed)} or all")
        if item not in out:
            out.append(item)
    if not out:
        raise UsageError(f"--{what}: nothing given")
    return [x for x in allowed if x in out]


def parse_batches(text: str | None) -> list[int]:
    try:
        out = sorted({int(x) for x in (text or "1").split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--batch {text!r}: give batch sizes as integers, e.g. 1,4") from None
    if not out or out[0] < 1 or out[-1] > 256:
        raise UsageError(f"--batch {text!r}: batch sizes must be between 1 and 256")
    return out


def _backend_class(name: str):
    """(Backend class or None, reason, import ms). Imports the library once, timed."""
    from ..backends import get_backend

    try:
        cls = get_backend(name)
    except BackendUnavailable:
        try:  # a backend module that exists but is not registered (yet) by the registry
            importlib.import_module(f"edgeinfer.backends.{name}")
            cls = get_backend(name)
        except (ImportError, BackendUnavailable) as exc:
            return None, f"this edgeinfer has no {name} backend ({exc})", None
    t0 = time.perf_counter_ns()
    try:
        ok, why = cls.available()
    except Exception as exc:  # noqa: BLE001 - a broken install is "unavailable", with its reason
        ok, why = False, f"{exc.__class__.__name__}: {exc}"
    import_ms = _ms(time.perf_counter_ns() - t0)
    return cls, (None if ok else why), import_ms


def _find_artifact(bundle, precision: str, formats: Sequence[str]):
    for fmt in formats:
        for a in bundle.artifacts:
            if a.precision == precision and a.format == fmt:
                return a
    return None


def _have(bundle) -> str:
    return ", ".join(f"{a.id} ({a.precision} {a.format})" for a in bundle.artifacts)


def _choose_artifact(case: Case, bundle) -> str | None:
    """Set ``case.artifact`` (and ``case.hint``) for its backend and precision; the reason when there is none."""
    backend, precision = case.backend, case.precision
    if backend == "onnxruntime":
        if precision == "bf16":
            return ("ONNX Runtime has no BF16 mode for these graphs; BF16 is a runtime precision "
                    "of OpenVINO (inference precision hint) on CPUs with AMX or AVX-512 BF16")
        case.artifact = _find_artifact(bundle, precision, ("onnx",))
    elif backend == "openvino":
        if precision == "bf16":
            case.artifact, case.hint = _find_artifact(bundle, "fp32", ("onnx",)), "bf16"
        else:
            case.artifact = _find_artifact(bundle, precision, ("onnx",))
            case.hint = "fp32" if precision == "fp32" else None
    elif backend == "tensorrt":
        if precision == "bf16":
            return "edgeinfer builds no BF16 TensorRT plans (BF16 is OpenVINO's CPU runtime precision)"
        case.artifact = _find_artifact(bundle, precision, ("tensorrt-plan",))
        if case.artifact is None:
            return (f"the bundle has no {precision} TensorRT plan (it has: {_have(bundle)}); "
                    "build one on the target device with edgeinfer build")
    else:
        return (f"edgeinfer bench does not know which artifact to give the {backend} backend "
                f"(it knows {', '.join(BACKEND_ORDER)})")
    if case.artifact is None:
        source = "fp32" if precision == "bf16" else precision
        why = f"the bundle has no {source} ONNX artifact (it has: {_have(bundle)})"
        if source in ("fp16", "int8"):
            why += "; edgeinfer calibrate adds fp16 and int8 artifacts"
        return why
    return None


def plan_cases(bundle, backends: Sequence[str], precisions: Sequence[str], *, ort_device: str = "cpu",
               cache_dir: str | None = None) -> list[Case]:
    """One :class:`Case` per (backend, precision), each with its artifact or the reason it cannot run."""
    from ..backends import RunnerOptions

    cases = []
    for backend in backends:
        cls, backend_why, import_ms = _backend_class(backend)
        device = ort_device if backend == "onnxruntime" else _DEVICE.get(backend, "cpu")
        for precision in precisions:
            case = Case(backend, precision, device=device, import_ms=import_ms)
            artifact_why = _choose_artifact(case, bundle)
            reasons = [r for r in (backend_why, artifact_why) if r]
            if not reasons and cls is not None:
                ok, why = cls.accepts(case.artifact, RunnerOptions(device=device, precision_hint=case.hint,
                                                                   cache_dir=cache_dir))
                if not ok:
                    reasons.append(why)
            case.reason = "; ".join(reasons) or None
            cases.append(case)
    return cases
