"""``edgeinfer bench``: how fast is each backend and precision on this machine, and at what accuracy cost.

For every (backend, precision, batch) it measures, in one process and one run:

* latency (min, mean, p50, p90, p95, p99, max) and throughput, with ``time.perf_counter_ns``
  (monotonic) around each synchronous call, after a warm-up, with the inputs rotated over
  several *real* images preprocessed by the runtime's own DICOM reader and preprocessing
  (never zeros);
* the raw backend call (:meth:`Runner.raw_call`: ONNX Runtime's ``session.run``, OpenVINO's
  ``InferRequest.infer``, TensorRT's execute with its copies and a stream synchronize) on the
  same artifact and the same inputs, in alternating blocks with the runtime call (ABBA order),
  so both see the same machine; ``overhead_ratio`` = runtime p50 / raw p50;
* run-to-run spread: the measurement is split into ``blocks`` blocks and the per-block p50s are
  kept. Two rows whose per-block p50 ranges overlap are reported as "no difference";
* cold start: bundle load (manifest + sha256 of every artifact), first import of the backend
  library, session or engine creation (``Runner.activate_ms``) and the first inference;
* peak resident memory per row (Linux ``VmHWM``, reset before each row through
  ``/proc/self/clear_refs``; elsewhere ``getrusage`` whose peak is never reset, and the report
  says which), and device memory where there is an NVIDIA GPU;
* the accuracy figures from the bundle's validation records, or "not validated".

A (backend, precision) that cannot run here gets a row with ``status: "unavailable"`` and the
reason; nothing is invented for it. End-to-end mode times reading, decoding, preprocessing,
inference and postprocessing per image over a folder of studies, serially and with decoding
overlapped with inference in a small thread pool.

This module imports only the standard library and numpy at import time; backends load
their libraries when a row needs them, matplotlib only when a plot is asked for.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import gc
import importlib
import importlib.util
import io
import logging
import math
import os
import re
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from ._io import atomic_write, emit_json
from .errors import BackendUnavailable, InputError, MissingDependency, NotApplicable, UsageError

log = logging.getLogger("edgeinfer.bench")

REPORT_VERSION = 1
#: registry names, in report order
BACKENDS = ("onnxruntime", "openvino", "tensorrt")
SHORT = {"onnxruntime": "ort", "openvino": "openvino", "tensorrt": "trt"}
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
#: the row every other one is compared with
BASELINE = ("onnxruntime", "fp32")
#: issue 5: the best gated OpenVINO mode should be this many times faster (p50) than ORT fp32
OPENVINO_TARGET_SPEEDUP = 3.0
_MS = 1e-6  # ns -> ms


# ================================================================================================
# statistics (pure)
# ================================================================================================
def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default).

    On the samples 1..100: p50 = 50.5, p90 = 90.1, p99 = 99.01.
    """
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return float("nan")
    return float(np.percentile(a, q))


def latency_stats(samples_ms: Sequence[float], batch: int = 1) -> dict:
    """Summary of per-call latencies in ms; throughput in images/s = batch x calls / time spent in calls."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    total_s = float(a.sum()) / 1e3
    return {"n": int(a.size), "min_ms": float(a.min()), "mean_ms": float(a.mean()), "std_ms": float(a.std()),
            "p50_ms": percentile(a, 50), "p90_ms": percentile(a, 90), "p95_ms": percentile(a, 95),
            "p99_ms": percentile(a, 99), "max_ms": float(a.max()),
            "throughput": (batch * a.size / total_s) if total_s > 0 else float("nan")}


def block_spread(block_p50s: Sequence[float]) -> dict:
    """Run-to-run spread: the range of the per-block medians, and that range relative to their median."""
    v = [float(x) for x in block_p50s if x is not None and math.isfinite(x)]
    if not v:
        return {"blocks": 0, "block_p50_ms": [], "min_ms": None, "max_ms": None, "rel": None}
    mid = float(np.median(v))
    return {"blocks": len(v), "block_p50_ms": v, "min_ms": min(v), "max_ms": max(v),
            "rel": (max(v) - min(v)) / mid if mid > 0 else None}


def no_difference(a: dict, b: dict) -> bool:
    """True when two spreads (from :func:`block_spread`) overlap: the difference is within the noise."""
    if not a or not b or a.get("min_ms") is None or b.get("min_ms") is None:
        return True
    return not (a["max_ms"] < b["min_ms"] or b["max_ms"] < a["min_ms"])


def distribution(samples_ms: Sequence[float], points: int = 101) -> list[float]:
    """Quantiles 0, 1, ..., 100 % of the samples: enough to redraw the distribution from the JSON."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return []
    return [round(float(x), 5) for x in np.percentile(a, np.linspace(0, 100, points))]


def split(total: int, parts: int) -> list[int]:
    """``total`` iterations over ``parts`` blocks, as evenly as possible, each at least 1."""
    base, extra = divmod(max(int(total), parts), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# ================================================================================================
# settings, memory, small helpers
# ================================================================================================
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
    cache_dir: str | None = None
    #: distinct real images the inputs rotate over
    images: int = 8
    data: str | None = None
    #: end-to-end modes: auto (ORT fp32 + the fastest gated mode) | all | none
    e2e: str = "auto"
    e2e_workers: int = 2
    #: passes over the folder, serial and overlapped alternating; medians are reported
    e2e_repeats: int = 3
    seed: int = 2024
    #: minimum timed calls per block and side, however slow the model
    min_calls: int = 3

    def as_dict(self) -> dict:
        return asdict(self)


class PeakRss:
    """Peak resident set size of this process, reset per row where the kernel allows it."""

    def __init__(self) -> None:
        self.resettable = self._try_reset()
        self.method = ("VmHWM from /proc/self/status, reset before each row via /proc/self/clear_refs"
                       if self.resettable else
                       "resource.getrusage ru_maxrss: the process-lifetime peak, NOT reset between rows")

    @staticmethod
    def _status(key: str) -> float | None:
        try:
            m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        except OSError:
            return None
        return int(m.group(1)) / 1024 if m else None

    def _try_reset(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return self._status("VmHWM") is not None
        except OSError:
            return False

    def reset(self) -> None:
        if self.resettable:
            self._try_reset()

    def current_mb(self) -> float | None:
        return self._status("VmRSS")

    def peak_mb(self) -> float | None:
        if self.resettable:
            return self._status("VmHWM")
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        except (ImportError, OSError):
            return None
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def gpu_memory_used_mb() -> float | None:
    """Device-wide used memory on CUDA device 0 (cuda-python), or None without a GPU."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            if importlib.util.find_spec(name) is None:
                continue
            cudart = importlib.import_module(name)
            err, free, total = cudart.cudaMemGetInfo()
            if int(err) == 0:
                return (total - free) / 2**20
        except Exception:  # noqa: BLE001 - no driver, no device: no number
            return None
    return None


def _ms(ns: int) -> float:
    return ns * _MS


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return float(f"{x:.6g}") if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    return x


# ================================================================================================
# which (backend, precision) can run, and on which artifact
# ================================================================================================
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
    from .backends import get_backend

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


def plan_cases(bundle, backends: Sequence[str], precisions: Sequence[str], *, ort_device: str = "cpu",
               cache_dir: str | None = None) -> list[Case]:
    """One :class:`Case` per (backend, precision), each with its artifact or the reason it cannot run."""
    from .backends import RunnerOptions

    cases = []
    for backend in backends:
        cls, backend_why, import_ms = _backend_class(backend)
        device = {"onnxruntime": ort_device, "openvino": "cpu", "tensorrt": "cuda"}[backend]
        for precision in precisions:
            case = Case(backend, precision, device=device, import_ms=import_ms)
            artifact_why = None
            if backend == "onnxruntime":
                if precision == "bf16":
                    artifact_why = ("ONNX Runtime has no BF16 mode for these graphs; BF16 is a runtime precision "
                                    "of OpenVINO (inference precision hint) on CPUs with AMX or AVX-512 BF16")
                else:
                    case.artifact = _find_artifact(bundle, precision, ("onnx",))
            elif backend == "openvino":
                if precision == "bf16":
                    case.artifact, case.hint = _find_artifact(bundle, "fp32", ("onnx",)), "bf16"
                else:
                    case.artifact = _find_artifact(bundle, precision, ("onnx",))
                    case.hint = "fp32" if precision == "fp32" else None
            else:  # tensorrt
                if precision == "bf16":
                    artifact_why = "edgeinfer builds no BF16 TensorRT plans (BF16 is OpenVINO's CPU runtime precision)"
                else:
                    case.artifact = _find_artifact(bundle, precision, ("tensorrt-plan",))
                    if case.artifact is None:
                        artifact_why = (f"the bundle has no {precision} TensorRT plan (it has: {_have(bundle)}); "
                                        "build one on the target device with edgeinfer build")
            if case.artifact is None and artifact_why is None:
                source = "fp32" if precision == "bf16" else precision
                artifact_why = f"the bundle has no {source} ONNX artifact (it has: {_have(bundle)})"
                if source in ("fp16", "int8"):
                    artifact_why += "; edgeinfer calibrate adds fp16 and int8 artifacts"
            reasons = [r for r in (backend_why, artifact_why) if r]
            if not reasons and cls is not None:
                ok, why = cls.accepts(case.artifact, RunnerOptions(device=device, precision_hint=case.hint,
                                                                   cache_dir=cache_dir))
                if not ok:
                    reasons.append(why)
            case.reason = "; ".join(reasons) or None
            cases.append(case)
    return cases


# ================================================================================================
# accuracy columns from the bundle's validation records
# ================================================================================================
ACCURACY_KEYS = ("auc", "sensitivity", "specificity", "agreement", "max_abs_score_diff", "passed")


def accuracy_for(bundle, backend: str, precision: str, artifact) -> dict:
    """The validation figures that apply to this row, and the gate's verdict in one word.

    A runtime precision (``openvino:bf16``) is looked up in the manifest's
    ``validation.runtime_precisions``; an artifact's precision in that list first (a record
    made on that backend), else in the artifact's own ``validation`` record. A record for
    another file (sha256) counts as none. FP32 is the reference.
    """
    out: dict[str, Any] = {k: None for k in ACCURACY_KEYS}
    key = f"{backend}:{precision}"
    validation = bundle.manifest.get("validation") or {}
    runtime = (validation.get("runtime_precisions") or {}) if isinstance(validation, dict) else {}
    record, source = None, None
    if isinstance(runtime.get(key), dict):
        record, source = runtime[key], f"manifest validation.runtime_precisions[{key!r}]"
    elif artifact is not None and artifact.precision == precision and isinstance(artifact.validation, dict):
        record, source = artifact.validation, f"artifact {artifact.id!r} validation"
    sha = getattr(artifact, "sha256", None)
    if record and record.get("artifact_sha256") and sha and record["artifact_sha256"] != sha:
        out.update(gate="not validated", source=source,
                   note="the validation record is for another file (sha256 differs)")
        return out
    if record:
        out.update({k: record.get(k) for k in ACCURACY_KEYS})
        out["source"] = source
        ran_on = (record.get("ran_on") or {}).get("backend") if isinstance(record.get("ran_on"), dict) else None
        if ran_on:
            out["validated_on"] = ran_on
        if record.get("reasons"):
            out["reasons"] = list(record["reasons"])
    if precision == "fp32" and artifact is not None and artifact.precision == "fp32":
        out["gate"] = "reference"
    elif record is None:
        out["gate"] = "not validated"
    else:
        out["gate"] = {True: "passed", False: "failed"}.get(record.get("passed"), "not validated")
    return out


def gate_ok(row: dict) -> bool:
    return (row.get("accuracy") or {}).get("gate") in ("reference", "passed")


# ================================================================================================
# inputs: real images through the runtime's own reader and preprocessing
# ================================================================================================
@dataclass
class Inputs:
    images: list[np.ndarray]          # each (C, H, W) float32, as the model sees it
    files: list[Path]                 # the DICOM files they came from
    source: str                       # "--data DIR" or "generated phantoms"
    data_dir: Path                    # the folder end-to-end mode walks
    notes: list[str] = field(default_factory=list)


def discover_files(data_dir: Path) -> list[Path]:
    import fnmatch

    from .triage import DEFAULT_IGNORE, discover

    return [f for f in discover([data_dir]) if not any(fnmatch.fnmatch(f.name, p) for p in DEFAULT_IGNORE)]


def load_inputs(bundle, data: str | os.PathLike | None, n: int, workdir: Path, seed: int = 2024) -> Inputs:
    """Up to ``n`` preprocessed real images from ``data``, or from phantoms generated in ``workdir``."""
    from . import dicomio
    from .preprocess import PreprocessSpec, prepare
    from .triage import applicability

    if data is not None:
        data_dir = Path(data)
        if not data_dir.is_dir():
            raise UsageError(f"--data {data}: no such folder")
        source = f"--data {data_dir}"
    else:
        from . import phantom

        data_dir = workdir / "phantoms"
        phantom.generate(data_dir, max(2, n), seed, max_size=768)
        source = f"{max(2, n)} phantom images generated by edgeinfer.phantom (seed {seed}, max_size 768)"
    spec = PreprocessSpec.from_manifest(bundle.manifest["preprocessing"])
    images, files, reasons = [], [], []
    for f in discover_files(data_dir):
        try:
            ds = dicomio.read_dataset(f)
            why = applicability(ds, bundle)
            if why:
                raise NotApplicable(why)
            x = prepare(ds, spec).tensor
        except InputError as exc:
            reasons.append(f"{f.name}: {exc}")
            continue
        if not np.isfinite(x).all() or float(x.std()) == 0.0:
            reasons.append(f"{f.name}: preprocessed image is constant or not finite")
            continue
        images.append(np.ascontiguousarray(x, dtype=np.float32))
        files.append(f)
        if len(images) >= n:
            break
    if not images:
        raise UsageError(f"no image under {data_dir} could be read and preprocessed for bundle {bundle.name}"
                         + (": " + "; ".join(reasons[:5]) if reasons else " (no files found)"))
    notes = []
    if len(images) < n:
        notes.append(f"only {len(images)} usable images (asked for {n}); inputs rotate over those")
    return Inputs(images, files, source, data_dir, notes)


def make_feeds(images: Sequence[np.ndarray], batch: int, input_name: str, dtype=np.float32) -> list[dict]:
    """Distinct batches rotating over the images: batch j holds images j*batch, j*batch+1, ... (mod n)."""
    n = len(images)
    feeds = []
    for j in range(max(n, 1)):
        x = np.stack([images[(j * batch + i) % n] for i in range(batch)]).astype(dtype, copy=False)
        feeds.append({input_name: np.ascontiguousarray(x)})
    return feeds


# ================================================================================================
# measuring one row
# ================================================================================================
def _segment(make_call: Callable[[int], Callable[[], Any]], start: int, samples: list[int], *,
             iterations: int | None, seconds: float | None, min_calls: int,
             after: Callable[[], None] | None = None) -> int:
    """Time calls until ``iterations`` are done or ``seconds`` have passed (and ``min_calls``)."""
    i = start
    deadline = time.perf_counter_ns() + int((seconds or 0.0) * 1e9)
    while True:
        call = make_call(i)                    # staging the inputs is not timed
        t0 = time.perf_counter_ns()
        call()
        t1 = time.perf_counter_ns()
        samples.append(t1 - t0)
        i += 1
        if after is not None:
            after()
        done = i - start
        if iterations is not None:
            if done >= iterations:
                return i
        elif t1 >= deadline and done >= min_calls:
            return i


def _thread_settings(runner, requested: int | None) -> dict:
    out: dict[str, Any] = {"requested": requested if requested else "backend default"}
    try:
        if runner.backend_name == "onnxruntime" and runner.session is not None:
            so = runner.session.get_session_options()
            out["ort_intra_op_num_threads"] = so.intra_op_num_threads or "default (one per physical core)"
            out["ort_inter_op_num_threads"] = so.inter_op_num_threads or "default"
        elif runner.backend_name == "openvino" and runner.compiled is not None:
            for prop in ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT", "ENABLE_HYPER_THREADING"):
                try:
                    out[f"openvino_{prop.lower()}"] = str(runner.compiled.get_property(prop))
                except Exception:  # noqa: BLE001 - not every version has every property
                    pass
    except Exception as exc:  # noqa: BLE001
        out["error"] = str(exc)
    out["omp_num_threads_env"] = os.environ.get("OMP_NUM_THREADS", "unset")
    return out


def _unavailable(base: dict, reason: str, status: str = "unavailable") -> dict:
    return {**base, "status": status, "reason": reason}


def measure_case(case: Case, bundle, inputs: Inputs, batch: int, settings: BenchSettings,
                 rss: PeakRss, bundle_load_ms: float) -> dict:
    """One row: latency of the runtime call and of the raw call, spread, cold start, memory."""
    from .backends import RunnerOptions, get_backend

    row: dict[str, Any] = {"backend": case.backend, "precision": case.precision, "batch": batch,
                           "artifact": getattr(case.artifact, "id", None),
                           "accuracy": accuracy_for(bundle, case.backend, case.precision, case.artifact)}
    if case.reason:
        return _unavailable(row, case.reason)
    extra = {"timing": True} if case.backend == "tensorrt" else {}
    options = RunnerOptions(device=case.device, threads=settings.threads, precision_hint=case.hint,
                            cache_dir=settings.cache_dir, extra=extra)
    gc.collect()
    rss.reset()
    rss_before = rss.current_mb()
    gpu_before = gpu_memory_used_mb() if case.device != "cpu" else None
    runner = get_backend(case.backend).create(case.artifact, options)
    try:
        try:
            runner.activate()
        except (BackendUnavailable, MissingDependency) as exc:
            return _unavailable(row, str(exc))
        except Exception as exc:  # noqa: BLE001 - report it and go on with the next row
            return _unavailable(row, f"{exc.__class__.__name__}: {exc}", status="error")
        meta = runner.inputs
        in_name = bundle.manifest["inputs"][0]["name"]
        if len(meta) != 1 or meta[0].name != in_name:
            return _unavailable(row, f"the graph's inputs are {[m.name for m in meta]}; bench feeds one input "
                                     f"named {in_name!r}", status="error")
        fixed = meta[0].shape[0] if meta[0].shape else None
        if isinstance(fixed, int) and fixed > 0 and fixed != batch:
            return _unavailable(row, f"the graph has a fixed batch of {fixed}; batch {batch} cannot run")
        dtype = np.float16 if meta[0].dtype in ("float16", "<f2") else np.float32
        feeds = make_feeds(inputs.images, batch, in_name, dtype)
        n_feeds = len(feeds)
        report = runner.report()

        t0 = time.perf_counter_ns()
        first = runner.infer(feeds[0])
        first_ms = _ms(time.perf_counter_ns() - t0)
        finite = all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in first.values())

        def runtime_call(i):
            return functools.partial(runner.infer, feeds[i % n_feeds])

        def raw_call(i):
            return runner.raw_call(feeds[i % n_feeds])

        device_timings: list[dict] = []

        def collect():
            t = getattr(runner, "last_timings", None)
            if t:
                device_timings.append(dict(t))

        # warm-up: both paths, the runtime one for warmup_s
        scratch: list[int] = []
        idx = _segment(runtime_call, 1, scratch, iterations=None, seconds=settings.warmup_s, min_calls=2)
        _segment(raw_call, idx, scratch, iterations=None, seconds=settings.warmup_s / 4, min_calls=2)

        k = max(1, settings.blocks)
        per_block = split(settings.iterations, k) if settings.iterations else [None] * k
        seg_s = None if settings.iterations else (settings.duration_s or 0.0) / k
        rt_blocks: list[list[int]] = []
        raw_blocks: list[list[int]] = []
        rt_i = raw_i = 0
        for b in range(k):
            rt: list[int] = []
            raw: list[int] = []
            order = ("rt", "raw") if b % 2 == 0 else ("raw", "rt")  # ABBA: drift hits both sides alike
            for side in order:
                if side == "rt":
                    rt_i = _segment(runtime_call, rt_i, rt, iterations=per_block[b], seconds=seg_s,
                                    min_calls=settings.min_calls, after=collect if extra else None)
                else:
                    raw_i = _segment(raw_call, raw_i, raw, iterations=per_block[b], seconds=seg_s,
                                     min_calls=settings.min_calls)
            rt_blocks.append(rt)
            raw_blocks.append(raw)

        peak = rss.peak_mb()
        gpu_after = gpu_memory_used_mb() if gpu_before is not None else None
        rt_ms = [_ms(x) for blk in rt_blocks for x in blk]
        raw_ms = [_ms(x) for blk in raw_blocks for x in blk]
        stats = latency_stats(rt_ms, batch)
        raw_stats = latency_stats(raw_ms, batch)
        rt_spread = block_spread([percentile([_ms(x) for x in blk], 50) for blk in rt_blocks])
        raw_spread = block_spread([percentile([_ms(x) for x in blk], 50) for blk in raw_blocks])
        ratio = stats["p50_ms"] / raw_stats["p50_ms"] if raw_stats.get("p50_ms") else None
        block_ratios = [a / r for a, r in zip(rt_spread["block_p50_ms"], raw_spread["block_p50_ms"]) if r]
        rep = report.as_dict()
        row.update({
            "status": "ok",
            "precision_executed": report.precision,
            "provider": report.provider, "device": report.device,
            "artifact_sha256": case.artifact.sha256,
            "run": rep,
            **{k: stats[k] for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "min_ms", "mean_ms", "max_ms",
                                     "std_ms", "throughput")},
            "n": stats["n"],
            "spread": rt_spread,
            "raw": {**{k: raw_stats[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput")},
                    "n": raw_stats["n"], "spread": raw_spread,
                    "call": {"onnxruntime": "InferenceSession.run", "openvino": "InferRequest.infer",
                             "tensorrt": "H2D + execute_async_v3 + D2H + stream synchronize"}.get(case.backend)},
            "overhead_ratio": ratio,
            "overhead": {"block_ratios": block_ratios,
                         "within_noise": no_difference(rt_spread, raw_spread)},
            "cold": {"bundle_load_ms": bundle_load_ms, "backend_import_ms": case.import_ms,
                     "session_create_ms": runner.activate_ms, "first_infer_ms": first_ms},
            "memory": {"rss_before_mb": rss_before, "peak_rss_mb": peak, "peak_rss_method": rss.method,
                       "gpu_mem_used_mb": (gpu_after - gpu_before) if gpu_after is not None else None,
                       "gpu": "device-wide used memory after the row minus before (cudaMemGetInfo)"
                       if gpu_after is not None else "no GPU"},
            "threads": _thread_settings(runner, settings.threads),
            "inputs": {"distinct_batches": n_feeds, "images": len(inputs.images), "dtype": np.dtype(dtype).name,
                       "shape": list(feeds[0][in_name].shape)},
            "distribution_ms": distribution(rt_ms),
        })
        if not finite:
            row["warning"] = "the model's output on real images is not finite"
        if device_timings:
            keys = sorted(set().union(*device_timings))
            row["device_timings_ms"] = {k: percentile([t.get(k, 0.0) for t in device_timings], 50) for k in keys}
            row["device_timings_note"] = "median per call, from CUDA events (TensorRT runner with timing on)"
        return row
    finally:
        runner.deactivate()
        gc.collect()


# ================================================================================================
# end to end: DICOM file -> priority
# ================================================================================================
STAGES = ("read", "decode", "preprocess", "infer", "post")


def _postprocess(out: dict, bundle, output_name: str) -> float | None:
    """Model output -> the image score triage uses (classification); for a segmentation output
    (N, C, H, W) the per-label score is the mask's largest probability (bench's stand-in: the
    runtime's segmentation postprocessing is not written yet)."""
    from .triage import image_scores

    y = np.asarray(out.get(output_name, next(iter(out.values()))), dtype=np.float64)
    if y.ndim == 4:
        y = y.reshape(y.shape[0], y.shape[1], -1).max(axis=2)
    if y.ndim != 2 or y.shape[1] != len(bundle.labels):
        return None
    scores, finite = image_scores(y, bundle)
    return float(scores[0]) if finite[0] else None


def _read_decode_prepare(path: Path, bundle, spec, limits) -> tuple:
    """(tensor, study uid, timings ms) or (None, kind, reason) for a skip or an error."""
    from . import dicomio
    from .preprocess import preprocess_pixels, select_frame
    from .triage import applicability

    t0 = time.perf_counter_ns()
    try:
        ds = dicomio.read_dataset(path, limits)
        why = applicability(ds, bundle)
        if why:
            raise NotApplicable(why)
        t1 = time.perf_counter_ns()
        frame = select_frame(dicomio.number_of_frames(ds), spec)
        stored = dicomio.decode_frame(ds, frame, limits)
        t2 = time.perf_counter_ns()
        tensor = preprocess_pixels(stored, ds, spec, frame=frame).tensor
        t3 = time.perf_counter_ns()
    except NotApplicable as exc:
        return None, "skipped", exc.reason
    except InputError as exc:
        return None, "error", str(exc)
    uid = str(ds.get("StudyInstanceUID", "") or "") or "(no StudyInstanceUID)"
    return tensor, uid, {"read": _ms(t1 - t0), "decode": _ms(t2 - t1), "preprocess": _ms(t3 - t2)}


def _finish_studies(per_study: dict[str, list[float | None]], bundle) -> dict[str, str]:
    from .triage import priority_for, study_score

    how = bundle.manifest["triage"].get("study_score", "max")
    return {uid: priority_for(study_score(scores, how), bundle) for uid, scores in per_study.items()}


def run_e2e(bundle, case: Case, files: Sequence[Path], settings: BenchSettings) -> dict:
    """Serial and overlapped passes over ``files`` with one runner (batch 1), ``e2e_repeats`` times each."""
    from . import dicomio
    from .backends import RunnerOptions, get_backend
    from .preprocess import PreprocessSpec

    spec = PreprocessSpec.from_manifest(bundle.manifest["preprocessing"])
    limits = dicomio.ReadLimits()
    in_name = bundle.manifest["inputs"][0]["name"]
    out_name = bundle.manifest["outputs"][0]["name"]
    options = RunnerOptions(device=case.device, threads=settings.threads, precision_hint=case.hint,
                            cache_dir=settings.cache_dir)
    result: dict[str, Any] = {"backend": case.backend, "precision": case.precision, "batch": 1,
                              "files": len(files)}
    for f in files:  # page cache: every pass reads from memory, not from the first pass's cold disk
        try:
            f.read_bytes()
        except OSError:
            pass
    with get_backend(case.backend).create(case.artifact, options) as runner:
        result["precision_executed"] = runner.report().precision
        dtype = np.float16 if runner.inputs[0].dtype in ("float16", "<f2") else np.float32

        def infer_post(tensor) -> tuple[float | None, float, float]:
            t0 = time.perf_counter_ns()
            out = runner.infer({in_name: tensor[None].astype(dtype, copy=False)})
            t1 = time.perf_counter_ns()
            score = _postprocess(out, bundle, out_name)
            return score, _ms(t1 - t0), _ms(time.perf_counter_ns() - t1)

        # warm-up on the first usable file
        for f in files[:3]:
            tensor, *_ = _read_decode_prepare(f, bundle, spec, limits)
            if tensor is not None:
                for _ in range(3):
                    infer_post(tensor)
                break

        def serial_pass(stages: dict[str, list[float]], counts: dict[str, int]) -> tuple[float, dict]:
            per_study: dict[str, list[float | None]] = {}
            t_start = time.perf_counter_ns()
            for f in files:
                tensor, uid, info = _read_decode_prepare(f, bundle, spec, limits)
                if tensor is None:
                    counts["skipped" if uid == "skipped" else "errors"] += 1
                    continue
                score, infer_ms, post_ms = infer_post(tensor)
                for st in ("read", "decode", "preprocess"):
                    stages[st].append(info[st])
                stages["infer"].append(infer_ms)
                stages["post"].append(post_ms)
                per_study.setdefault(uid, []).append(score)
                counts["images"] += 1
            t_post = time.perf_counter_ns()
            priorities = _finish_studies(per_study, bundle)
            # the study aggregation is postprocessing too: charged to the pass's last image
            stages["post"][-1:] = [x + _ms(time.perf_counter_ns() - t_post) for x in stages["post"][-1:]]
            return (time.perf_counter_ns() - t_start) / 1e9, priorities

        def overlapped_pass(workers: int) -> tuple[float, int]:
            """read + decode + preprocess in a thread pool, inference and postprocessing in this thread."""
            per_study: dict[str, list[float | None]] = {}
            t_start = time.perf_counter_ns()
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bench-decode") as pool:
                it = iter(files)
                pending = []  # at most 2 x workers images in flight: bounded memory
                for f in it:
                    pending.append(pool.submit(_read_decode_prepare, f, bundle, spec, limits))
                    if len(pending) >= 2 * workers:
                        break
                while pending:
                    tensor, uid, _info = pending.pop(0).result()
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.append(pool.submit(_read_decode_prepare, nxt, bundle, spec, limits))
                    if tensor is not None:
                        per_study.setdefault(uid, []).append(infer_post(tensor)[0])
            _finish_studies(per_study, bundle)
            return (time.perf_counter_ns() - t_start) / 1e9, len(per_study)

        # passes alternate (serial, overlapped, serial, ...) so both see the same machine
        workers = max(1, settings.e2e_workers)
        stages: dict[str, list[float]] = {st: [] for st in STAGES}
        serial_walls, overlapped_walls = [], []
        priorities: dict = {}
        counts = {"images": 0, "skipped": 0, "errors": 0}
        for rep in range(max(1, settings.e2e_repeats)):
            counts = {"images": 0, "skipped": 0, "errors": 0}
            wall, priorities = serial_pass(stages, counts)
            serial_walls.append(wall)
            wall, n_studies_o = overlapped_pass(workers)
            overlapped_walls.append(wall)
        n_studies = len(priorities)
        n_img = counts["images"]
        totals = {st: float(sum(v)) for st, v in stages.items()}
        all_ms = sum(totals.values()) or float("nan")
        wall_s = float(np.median(serial_walls))
        wall_o = float(np.median(overlapped_walls))
        result.update(counts)
        result["studies"] = n_studies
        result["repeats"] = len(serial_walls)
        result["serial"] = {
            "wall_s": wall_s, "wall_s_range": [min(serial_walls), max(serial_walls)],
            "studies_per_s": n_studies / wall_s if wall_s else None,
            "images_per_s": n_img / wall_s if wall_s else None,
            "per_image_ms": {st: (float(np.mean(stages[st])) if stages[st] else None) for st in STAGES},
            "p50_image_ms": {st: (percentile(stages[st], 50) if stages[st] else None) for st in STAGES},
            "share": {st: totals[st] / all_ms for st in STAGES},
            "unaccounted_ms_per_pass": wall_s * 1e3 - all_ms / len(serial_walls),
        }
        result["priorities"] = {p: sum(1 for v in priorities.values() if v == p) for p in sorted(set(priorities.values()))}
        result["overlapped"] = {
            "workers": workers, "wall_s": wall_o, "wall_s_range": [min(overlapped_walls), max(overlapped_walls)],
            "studies_per_s": n_studies_o / wall_o if wall_o else None,
            "images_per_s": n_img / wall_o if wall_o else None,
            "speedup_vs_serial": wall_s / wall_o if wall_o else None,
            # it pays only if every overlapped pass beat every serial pass
            "pays": max(overlapped_walls) < min(serial_walls),
            "note": "decode threads and inference threads share the same cores; on a small CPU this may not pay",
        }
    return result


# ================================================================================================
# the whole run
# ================================================================================================
def _compare(rows: list[dict]) -> None:
    """Add speed-up vs ORT fp32 (same batch) to every measured row, with the noise verdict."""
    base = {r["batch"]: r for r in rows if (r["backend"], r["precision"]) == BASELINE and r["status"] == "ok"}
    for r in rows:
        b = base.get(r["batch"])
        if r["status"] != "ok" or b is None:
            r["speedup_vs_ort_fp32"] = None
            continue
        r["speedup_vs_ort_fp32"] = b["p50_ms"] / r["p50_ms"] if r["p50_ms"] else None
        r["speedup_within_noise"] = r is b or no_difference(b["spread"], r["spread"])


def issue5_target(rows: list[dict]) -> dict:
    """The best OpenVINO mode that passed the gate, against ORT fp32, at the smallest batch measured."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return {"evaluated": False, "why": "no row was measured"}
    batch = min(r["batch"] for r in ok)
    base = next((r for r in ok if (r["backend"], r["precision"]) == BASELINE and r["batch"] == batch), None)
    ov = [r for r in ok if r["backend"] == "openvino" and r["batch"] == batch]
    out: dict[str, Any] = {"rule": f"best OpenVINO mode that passed the accuracy gate has p50 >= "
                                   f"{OPENVINO_TARGET_SPEEDUP:g}x lower than ONNX Runtime fp32", "batch": batch,
                           "target": OPENVINO_TARGET_SPEEDUP}
    if base is None or not ov:
        out.update(evaluated=False, why="needs both the onnxruntime fp32 row and an OpenVINO row")
        return out
    fastest = min(ov, key=lambda r: r["p50_ms"])
    out["fastest_openvino"] = {"precision": fastest["precision"], "gate": fastest["accuracy"]["gate"],
                               "speedup": base["p50_ms"] / fastest["p50_ms"]}
    gated = [r for r in ov if gate_ok(r)]
    if not gated:
        out.update(evaluated=True, met=False, why="no OpenVINO mode has passed the accuracy gate (run edgeinfer validate)")
        return out
    best = min(gated, key=lambda r: r["p50_ms"])
    speedup = base["p50_ms"] / best["p50_ms"]
    out.update(evaluated=True, best={"precision": best["precision"], "precision_executed": best.get("precision_executed"),
                                     "p50_ms": best["p50_ms"], "gate": best["accuracy"]["gate"]},
               ort_fp32_p50_ms=base["p50_ms"], speedup=speedup,
               within_noise=no_difference(base["spread"], best["spread"]),
               met=bool(speedup >= OPENVINO_TARGET_SPEEDUP and not no_difference(base["spread"], best["spread"])))
    return out


def _e2e_cases(rows: list[dict], cases: dict, mode: str) -> list[Case]:
    ok = [r for r in rows if r["status"] == "ok"]
    if mode == "none" or not ok:
        return []
    batch = min(r["batch"] for r in ok)
    ok = [r for r in ok if r["batch"] == batch]
    if mode == "all":
        chosen = ok
    else:
        chosen = [r for r in ok if (r["backend"], r["precision"]) == BASELINE]
        gated = sorted((r for r in ok if gate_ok(r)), key=lambda r: r["p50_ms"])
        if gated and all(gated[0] is not c for c in chosen):
            chosen.append(gated[0])
        if not chosen:
            chosen = [min(ok, key=lambda r: r["p50_ms"])]
    return [cases[(r["backend"], r["precision"])] for r in chosen]


def run(bundle_path: str | os.PathLike | None, settings: BenchSettings,
        progress: Callable[[int], None] | None = None, status: Callable[[str], None] | None = None) -> dict:
    """Measure the matrix and return the report (a JSON-ready dict)."""
    from .bundle import load_bundle
    from .sysinfo import machine_info, openvino_cpu_info

    status = status or (lambda msg: log.info("%s", msg))
    machine = machine_info()
    t0 = time.perf_counter_ns()
    bundle = load_bundle(bundle_path)
    bundle_load_ms = _ms(time.perf_counter_ns() - t0)
    rss = PeakRss()
    rows: list[dict] = []
    e2e: list[dict] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgeinfer-bench-") as tmp:
        status(f"preparing {settings.images} real input images")
        inputs = load_inputs(bundle, settings.data, settings.images, Path(tmp), settings.seed)
        notes += inputs.notes
        cases = plan_cases(bundle, settings.backends, settings.precisions, ort_device=settings.device,
                           cache_dir=settings.cache_dir)
        by_key = {(c.backend, c.precision): c for c in cases}
        for case in cases:
            for batch in settings.batches:
                status(f"{case.label} batch {batch}")
                try:
                    rows.append(measure_case(case, bundle, inputs, batch, settings, rss, bundle_load_ms))
                except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
                    log.warning("%s batch %d failed: %s", case.label, batch, exc)
                    rows.append({"backend": case.backend, "precision": case.precision, "batch": batch,
                                 "artifact": getattr(case.artifact, "id", None), "status": "error",
                                 "reason": f"failed while measuring: {exc.__class__.__name__}: {exc}",
                                 "accuracy": accuracy_for(bundle, case.backend, case.precision, case.artifact)})
                if progress:
                    progress(1)
        _compare(rows)
        e2e_chosen = _e2e_cases(rows, by_key, settings.e2e)
        if e2e_chosen:
            files = discover_files(inputs.data_dir)
            for case in e2e_chosen:
                status(f"end to end over {len(files)} files: {case.label}")
                try:
                    e2e.append(run_e2e(bundle, case, files, settings))
                except Exception as exc:  # noqa: BLE001 - reported, not fatal
                    e2e.append({"backend": case.backend, "precision": case.precision, "status": "error",
                                "reason": f"{exc.__class__.__name__}: {exc}"})
        data_info = {"source": inputs.source, "images_used": len(inputs.images),
                     "files": [str(f.relative_to(inputs.data_dir)) for f in inputs.files]}
    if any(r["backend"] == "openvino" and r["status"] == "ok" for r in rows):
        machine["openvino"] = openvino_cpu_info()
    load_end = machine.pop("load_average_at_start", None)
    from .sysinfo import load_average

    machine["load_average"] = {"start": load_end, "end": load_average()}
    busy = max((x[0] for x in (load_end, machine["load_average"]["end"]) if x), default=0.0)
    if busy > 0.5:
        notes.append(f"the machine was busy (1-minute load average up to {busy:.2f} on "
                     f"{machine['cpu']['usable_cpus']} CPUs): absolute timings are inflated and noisy; "
                     "compare rows within this run only, and repeat on an idle machine for published numbers")
    return _clean({
        "edgeinfer_bench": REPORT_VERSION, "edgeinfer": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv) if sys.argv and sys.argv[0] else None,
        "bundle": {**bundle.summary(), "load_ms": bundle_load_ms,
                   "artifacts": [{"id": a.id, "precision": a.precision, "format": a.format,
                                  "bytes": a.record.get("bytes"), "sha256": a.sha256[:16]} for a in bundle.artifacts]},
        "settings": settings.as_dict(),
        "method": {
            "clock": "time.perf_counter_ns (monotonic) around each synchronous call; outputs are host arrays, "
                     "so device work has finished when the clock is read (TensorRT synchronizes its stream)",
            "inputs": "rotated over distinct batches of real images preprocessed by edgeinfer's own "
                      "dicomio + preprocess (never zeros)",
            "blocks": f"{settings.blocks} blocks per row; in each, the runtime call and the raw backend call are "
                      "timed in alternating order (ABBA)",
            "spread": "range of the per-block p50s; two rows whose ranges overlap are 'no difference'",
            "throughput": "images/s = batch x calls / time spent in calls (one synchronous stream)",
            "peak_rss": rss.method,
            "cold_start": "in this process: the backend library import is timed once per backend (first use); "
                          "session creation and first inference per row",
        },
        "data": data_info,
        "machine": machine,
        "rows": rows,
        "targets": {"issue5_openvino_3x": issue5_target(rows)},
        "e2e": e2e,
        "notes": notes,
    })


# ================================================================================================
# reports
# ================================================================================================
def _f(x, nd: int = 2, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        v = float(x)
        s = f"{v:.{nd}f}" if abs(v) < 1000 else f"{v:,.0f}"
        return s + unit
    return str(x)


def _sig(x: float | None, digits: int = 3) -> str:
    """3 significant digits: 0.00937, 1.23, 45.6, 1234."""
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:,.0f}"


def row_label(r: dict) -> str:
    ran = r.get("precision_executed")
    extra = f" (ran {ran})" if ran and ran != r["precision"] else ""
    return f"{SHORT.get(r['backend'], r['backend'])} {r['precision']}{extra}"


def _speedup_cell(r: dict) -> str:
    s = r.get("speedup_vs_ort_fp32")
    if s is None:
        return "-"
    if (r["backend"], r["precision"]) == BASELINE:
        return "1.00x (baseline)"
    return f"{s:.2f}x" + (" (no difference)" if r.get("speedup_within_noise") else "")


def _overhead_cell(r: dict) -> str:
    v = r.get("overhead_ratio")
    if v is None:
        return "-"
    return f"{v:.3f}" + (" (no difference)" if (r.get("overhead") or {}).get("within_noise") else "")


def _gate_cell(a: dict, backend: str | None = None) -> str:
    gate = a.get("gate") or "not validated"
    on = a.get("validated_on")
    return f"{gate} (on {SHORT.get(on, on)})" if on and backend and on != backend and gate != "not validated" else gate


def _acc_cells(a: dict, backend: str | None = None) -> list[str]:
    return [_gate_cell(a, backend), _f(a.get("auc"), 4), _f(a.get("agreement"), 4), _f(a.get("max_abs_score_diff"), 4)]


def render_markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    cpu = m["cpu"]
    flags = ", ".join(k for k, v in (cpu.get("flags") or {}).items() if v) or "-"
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if k != "edgeinfer")
    gpu = m["gpu"] if isinstance(m["gpu"], str) else "; ".join(g.get("name", "?") for g in m["gpu"])
    timing = (f"{s['iterations']} calls" if s.get("iterations") else f"{s['duration_s']:g} s") + \
        f" per side in {s['blocks']} blocks after {s['warmup_s']:g} s warm-up"
    lines = [
        f"# edgeinfer bench: {report['bundle']['name']} {report['bundle']['version']}",
        "",
        f"*{report['created']}, edgeinfer {report['edgeinfer']}*",
        "",
        f"- **machine**: {cpu['model']} ({cpu['arch']}), {cpu['usable_cpus']} usable CPUs "
        f"({cpu.get('physical_cores') or '?'} physical cores), {m.get('memory_gb')} GB; GPU: {gpu}",
        f"- **CPU flags**: {flags}",
        f"- **libraries**: {libs}",
        f"- **threads**: {s['threads'] if s.get('threads') else 'backend default'} inference threads per backend "
        f"(ORT intra-op, OpenVINO INFERENCE_NUM_THREADS); OMP_NUM_THREADS={m['thread_env'].get('OMP_NUM_THREADS', 'unset')}",
        f"- **load average** (1, 5, 15 min): start {m['load_average'].get('start')}, end {m['load_average'].get('end')}",
        f"- **timing**: {timing}; inputs: {report['data']['images_used']} real images from {report['data']['source']}",
        f"- **bundle load** (manifest + sha256 of every artifact): {_f(report['bundle']['load_ms'], 1)} ms",
        "",
    ]
    for n in report.get("notes", []):
        lines.append(f"> **note**: {n}")
        lines.append("")
    lines += ["## Latency and accuracy", "",
              "| backend / precision | batch | p50 ms | p90 ms | p99 ms | spread of p50 (ms) | images/s | "
              "speed-up vs ORT fp32 | overhead ratio | gate | AUC | agreement | max abs score diff |",
              "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|"]
    for r in report["rows"]:
        if r["status"] != "ok":
            continue
        sp = r["spread"]
        lines.append("| " + " | ".join([
            row_label(r), str(r["batch"]), _f(r["p50_ms"], 3), _f(r["p90_ms"], 3), _f(r["p99_ms"], 3),
            f"{_f(sp.get('min_ms'), 3)}-{_f(sp.get('max_ms'), 3)}", _f(r["throughput"], 1),
            _speedup_cell(r), _overhead_cell(r), *_acc_cells(r["accuracy"], r["backend"])]) + " |")
    lines += ["", "## Cold start and memory", "",
              "| backend / precision | batch | backend import ms | session create ms | first inference ms | "
              "peak RSS MB | threads |",
              "|---|--:|--:|--:|--:|--:|---|"]
    for r in report["rows"]:
        if r["status"] != "ok":
            continue
        c, mem, th = r["cold"], r["memory"], r["threads"]
        thr = ", ".join(f"{k.replace('openvino_', 'ov ').replace('ort_', 'ort ')}={v}" for k, v in th.items()
                        if k not in ("requested", "omp_num_threads_env"))
        lines.append("| " + " | ".join([row_label(r), str(r["batch"]), _f(c["backend_import_ms"], 1),
                                        _f(c["session_create_ms"], 1), _f(c["first_infer_ms"], 2),
                                        _f(mem["peak_rss_mb"], 0), thr or "-"]) + " |")
    unavailable = [r for r in report["rows"] if r["status"] != "ok"]
    if unavailable:
        lines += ["", "## Not measured here", "", "| backend / precision | batches | status | reason |", "|---|--:|---|---|"]
        groups: dict[tuple, list[int]] = {}
        for r in unavailable:
            groups.setdefault((row_label(r), r["status"], str(r.get("reason", ""))), []).append(r["batch"])
        for (label, st, reason), batches in groups.items():
            reason = reason.replace("|", "/").replace("\n", " ")
            lines.append(f"| {label} | {', '.join(map(str, batches))} | {st} | {reason} |")
    t = report["targets"]["issue5_openvino_3x"]
    lines += ["", "## Fast CPU path target (issue 5)", ""]
    if t.get("evaluated") and t.get("best"):
        lines.append(f"Best OpenVINO mode that passed the gate at batch {t['batch']}: **{t['best']['precision']}** "
                     f"({t['best']['gate']}), p50 {t['best']['p50_ms']:.3f} ms vs ORT fp32 {t['ort_fp32_p50_ms']:.3f} ms: "
                     f"**{t['speedup']:.2f}x** (target {t['target']:g}x): "
                     + ("met." if t["met"] else ("no difference from ORT fp32 within the spread." if t.get("within_noise")
                                                 else "not met.")))
    else:
        lines.append(f"Not evaluated: {t.get('why', '-')}.")
    if t.get("fastest_openvino"):
        fo = t["fastest_openvino"]
        lines.append("")
        lines.append(f"Fastest OpenVINO mode regardless of the gate: {fo['precision']} ({fo['gate']}), "
                     f"{fo['speedup']:.2f}x ORT fp32.")
    if report.get("e2e"):
        lines += ["", "## End to end: DICOM file to priority (batch 1)", "",
                  "| backend / precision | images | studies | read | decode | preprocess | infer | post | "
                  "studies/s serial | studies/s overlapped |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for e in report["e2e"]:
            if e.get("status") == "error":
                lines.append(f"| {row_label(e)} | error: {e['reason']} |")
                continue
            ser, ov = e["serial"], e["overlapped"]
            cells = [f"{_f(ser['per_image_ms'][st], 2)} ms ({_f(100 * (ser['share'][st] or 0), 0)}%)" for st in STAGES]
            verdict = "pays" if ov["pays"] else "no difference"
            lines.append("| " + " | ".join([row_label(e), str(e["images"]), str(e["studies"]), *cells,
                                            _f(ser["studies_per_s"], 2),
                                            f"{_f(ov['studies_per_s'], 2)} ({ov['workers']} decode threads, "
                                            f"{_f(ov['speedup_vs_serial'], 2)}x: {verdict})"]) + " |")
        lines.append("")
        lines.append("Per-image mean ms over every serial pass, and the share of serial time. *read* parses the file "
                     "(header and safety checks), *decode* decompresses the pixels, *preprocess* windows, resizes and "
                     "normalises, *post* turns the output into a priority (and studies into a worklist order). "
                     "Throughputs are the median of the passes; overlapping *pays* only if every overlapped pass "
                     "beat every serial one.")
    lines += ["", "## How to read this", "",
              textwrap.dedent("""\
              - **p50/p90/p99**: per-call latency percentiles of the runtime's `Runner.infer`, over all blocks.
              - **spread of p50**: the smallest and largest p50 of the individual blocks. When two rows' spreads
                overlap, the table says *no difference*: the gap is within what this machine varies run to run.
              - **speed-up vs ORT fp32**: ORT fp32 p50 / this row's p50 at the same batch (above 1 = faster).
              - **overhead ratio**: runtime p50 / raw backend call p50 (ONNX Runtime `session.run`, OpenVINO
                `infer`, TensorRT execute), timed in the same run on the same inputs; 1.00 = no overhead.
              - **gate**: *reference* (fp32), *passed* / *failed* (the bundle's validation record), or
                *not validated*; AUC, agreement with FP32 priorities and max |score - FP32 score| come from that record.
              - **peak RSS** includes the Python process and every library loaded so far.
              """)]
    return "\n".join(lines) + "\n"


def render_plot(report: dict, path: str | os.PathLike) -> Path:
    """PNG: latency distribution per (backend, precision), speed against accuracy, end-to-end breakdown."""
    from ._lazy import lazy_import

    mpl = lazy_import("matplotlib", extra="dev", purpose="edgeinfer bench --plot")
    mpl.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ok = [r for r in report["rows"] if r["status"] == "ok"]
    batch = min((r["batch"] for r in ok), default=1)
    rows = [r for r in ok if r["batch"] == batch]
    has_e2e = any(e.get("serial") for e in report.get("e2e", []))
    n_e2e = sum(1 for e in report.get("e2e", []) if e.get("serial"))
    bottom = 1.2 + 0.45 * n_e2e
    fig = plt.figure(figsize=(15, 6 + bottom if has_e2e else 6), dpi=110)
    grid = fig.add_gridspec(2 if has_e2e else 1, 2, height_ratios=[6, bottom] if has_e2e else [1])
    ax1, ax2 = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    colours = {"onnxruntime": "#1f77b4", "openvino": "#d62728", "tensorrt": "#2ca02c"}

    # 1. latency distribution
    if rows:
        data = [r["distribution_ms"] for r in rows]
        pos = list(range(1, len(rows) + 1))
        import inspect

        horizontal = ({"orientation": "horizontal"} if "orientation" in inspect.signature(ax1.boxplot).parameters
                      else {"vert": False})  # matplotlib 3.10 renamed it
        bp = ax1.boxplot(data, positions=pos, whis=(1, 99), showfliers=False, widths=0.6, patch_artist=True,
                         medianprops={"color": "black", "linewidth": 1.5}, **horizontal)
        for patch, r in zip(bp["boxes"], rows):
            patch.set_facecolor(colours.get(r["backend"], "grey"))
            patch.set_alpha(0.45)
        for p, r in zip(pos, rows):
            lo, hi = r["spread"]["min_ms"], r["spread"]["max_ms"]
            ax1.plot([lo, hi], [p + 0.38, p + 0.38], color="black", linewidth=2.5, solid_capstyle="butt")
            ax1.plot(r["raw"]["p50_ms"], p - 0.38, marker="v", color="black", markersize=6, linestyle="none")
            ax1.annotate(f"p50 {_sig(r['p50_ms'])} ms", (r["p99_ms"], p), xytext=(6, 0), textcoords="offset points",
                         va="center", fontsize=8)
        ax1.set_yticks(pos, [row_label(r) for r in rows], fontsize=9)
        vals = [v for d in data for v in d if v and v > 0]
        if vals and max(vals) / min(vals) > 20:
            ax1.set_xscale("log")
        right = max(r["p99_ms"] for r in rows)
        ax1.set_xlim(right=right * (1.6 if ax1.get_xscale() == "log" else 1.35))
        ax1.invert_yaxis()
        ax1.plot([], [], marker="v", color="black", linestyle="none", label="raw backend call p50")
        ax1.plot([], [], color="black", linewidth=2.5, label="spread of per-block p50")
        ax1.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8, frameon=False)
    else:
        ax1.text(0.5, 0.5, "no row could be measured", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("latency per call (ms); box = p25-p75, whiskers = p1-p99")
    ax1.set_title(f"Latency distribution, batch {batch}", fontsize=11, loc="left")
    ax1.grid(axis="x", alpha=0.3)

    # 2. speed against accuracy
    metric = next((k for k in ("auc", "agreement") if any((r["accuracy"] or {}).get(k) is not None for r in rows)), None)
    validated = [r for r in rows if metric and r["accuracy"].get(metric) is not None]
    others = [r for r in rows if r not in validated]
    for r in validated:
        ax2.scatter(r["p50_ms"], r["accuracy"][metric], s=70, color=colours.get(r["backend"], "grey"),
                    marker="o" if r["accuracy"]["gate"] in ("passed", "reference") else "X", zorder=3)
        ax2.annotate(row_label(r), (r["p50_ms"], r["accuracy"][metric]), xytext=(5, 4), textcoords="offset points",
                     fontsize=8)
    if validated:
        lo = min(r["accuracy"][metric] for r in validated)
        hi = max(r["accuracy"][metric] for r in validated)
        pad = max(0.002, (hi - lo) * 0.25)
        ax2.set_ylim(lo - 3 * pad, hi + pad)
        floor = lo - 2.2 * pad
        ax2.axhline(lo - 1.5 * pad, color="grey", linewidth=0.8, linestyle=":")
    else:
        ax2.set_ylim(0, 1)
        ax2.set_yticks([])
        floor = 0.5
    for i, r in enumerate(others):
        ax2.scatter(r["p50_ms"], floor, s=70, facecolors="none", edgecolors=colours.get(r["backend"], "grey"),
                    linewidths=1.5, zorder=3)
        ax2.annotate(row_label(r), (r["p50_ms"], floor), xytext=(5, 6 + 9 * (i % 3)), textcoords="offset points",
                     fontsize=8, rotation=0)
    key = []
    if others and not validated:
        key.append("no validation records in this bundle (edgeinfer validate writes them); hollow = not validated")
    elif others:
        key.append("hollow: no accuracy record (fp32 is the reference)")
    if any(r["accuracy"]["gate"] == "failed" for r in validated):
        key.append("X: failed the accuracy gate")
    if key:
        ax2.text(0.01, 0.02 if validated else 0.44, "; ".join(key), transform=ax2.transAxes, fontsize=8,
                 color="dimgrey")
    ax2.set_xlabel(f"p50 latency, batch {batch} (ms); left = faster")
    ax2.set_ylabel({"auc": "AUC (validation record)", "agreement": "agreement with FP32 priorities"}.get(metric, ""))
    ax2.set_title("Speed against accuracy", fontsize=11)
    ax2.grid(alpha=0.3)
    if rows:
        xs = [r["p50_ms"] for r in rows]
        ax2.set_xlim(min(xs) * 0.8, max(xs) * 1.35)

    # 3. end to end
    if has_e2e:
        ax3 = fig.add_subplot(grid[1, :])
        e2e = [e for e in report["e2e"] if e.get("serial")]
        stage_colours = ["#8c564b", "#e377c2", "#7f7f7f", "#1f77b4", "#bcbd22"]
        widest = max(sum((e["serial"]["per_image_ms"].get(st) or 0.0) for st in STAGES) for e in e2e)
        for i, e in enumerate(e2e):
            left = 0.0
            for st, c in zip(STAGES, stage_colours):
                w = e["serial"]["per_image_ms"].get(st) or 0.0
                ax3.barh(i, w, left=left, color=c, label=st if i == 0 else None, height=0.55)
                if w > 0.06 * widest:
                    ax3.text(left + w / 2, i, _sig(w), ha="center", va="center", fontsize=8, color="white")
                left += w
            ax3.text(left, i, f"  serial {_f(e['serial']['studies_per_s'], 2)} studies/s, overlapped "
                              f"({e['overlapped']['workers']} threads) {_f(e['overlapped']['studies_per_s'], 2)} studies/s",
                     va="center", fontsize=9)
        ax3.set_yticks(range(len(e2e)), [row_label(e) for e in e2e])
        ax3.invert_yaxis()
        ax3.set_ylim(len(e2e) - 0.5, -0.5 - (0.6 if len(e2e) < 3 else 0.3))  # room for the legend
        ax3.set_xlim(0, widest * 2.0)
        ax3.set_xlabel("mean ms per image, serial (DICOM file -> priority)")
        ax3.set_title(f"End to end over {e2e[0]['files']} files: where the time goes", fontsize=11)
        ax3.legend(ncol=5, fontsize=8, loc="upper right", frameon=False)
        ax3.grid(axis="x", alpha=0.3)

    m = report["machine"]
    fig.suptitle(f"edgeinfer bench: {report['bundle']['name']} on {m['cpu']['model']}, {m['cpu']['usable_cpus']} CPUs, "
                 f"threads {report['settings'].get('threads') or 'default'}, load avg {m['load_average'].get('start')}",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=out.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    return atomic_write(out, buf.getvalue())


def write_json(report: dict, dest: str) -> None:
    emit_json(_clean(report), dest)


# ================================================================================================
# CLI
# ================================================================================================
EXAMPLES = """\
edgeinfer bench                                   # embedded bundle, every backend and precision, batch 1
edgeinfer bench my-bundle/ --backend ort --precision fp32,fp16,int8 --batch 1,4
edgeinfer bench --backend all --threads 2 --json bench.json --report bench.md --plot bench.png
edgeinfer bench my-bundle/ --data studies/ --e2e all      # plus DICOM-to-priority end to end
edgeinfer bench --duration-s 0.2 --warmup-s 0.1            # a quick smoke run"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``edgeinfer bench`` on the CLI's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "bench", formatter_class=fmt,
        help="latency, throughput, cold start and memory per backend x precision x batch, beside accuracy",
        description="Benchmark a bundle: every (backend, precision, batch) is timed against the raw backend call "
                    "in the same run, with run-to-run spread, cold start, peak memory and the bundle's accuracy "
                    "records. Rows that cannot run here are listed with the reason.",
        epilog="examples:\n" + textwrap.indent(EXAMPLES, "  ") +
               "\n\nexit status: 0 measured; 2 finished, but a row failed while running or files were rejected "
               "end to end; 1 nothing could be measured")
    s.add_argument("bundle", nargs="?", default=None, help="bundle folder (default: the embedded phantom bundle)")
    s.add_argument("--backend", default="all", help="ort, openvino, trt, a comma list, or all (default all)")
    s.add_argument("--precision", default="all", help="fp32, fp16, int8, bf16, a comma list, or all (default all)")
    s.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1)")
    s.add_argument("--warmup-s", type=float, default=1.0, help="warm-up seconds per row before timing (default 1)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--duration-s", type=float, default=None,
                   help="timed seconds per row for each of the runtime and the raw call (default 3)")
    g.add_argument("--iterations", type=int, default=None, help="timed calls per row and side, instead of a duration")
    s.add_argument("--blocks", type=int, default=5, help="blocks per row, for the run-to-run spread (default 5)")
    s.add_argument("--threads", type=int, default=None,
                   help="inference threads for every backend (default: the CPUs this process may use; 0 = each "
                        "backend's own default)")
    s.add_argument("--device", default="cpu", help="ONNX Runtime device: cpu | cuda | tensorrt (default cpu)")
    s.add_argument("--cache-dir", default=None, help="OpenVINO model cache folder (faster cold starts)")
    s.add_argument("--data", default=None, help="DICOM folder: inputs come from it, and end-to-end mode walks it "
                                                "(default: a few generated phantoms)")
    s.add_argument("--images", type=int, default=8, help="distinct real images the inputs rotate over (default 8)")
    s.add_argument("--e2e", choices=("auto", "all", "none"), default="auto",
                   help="end-to-end modes: auto = ORT fp32 and the fastest gated mode; all; none (default auto)")
    s.add_argument("--e2e-workers", type=int, default=2, help="decode threads in the overlapped pass (default 2)")
    s.add_argument("--e2e-repeats", type=int, default=3,
                   help="end-to-end passes over the folder, serial and overlapped alternating (default 3)")
    s.add_argument("--json", default=None, metavar="OUT", help="write the JSON report here ('-' for stdout)")
    s.add_argument("--report", default=None, metavar="OUT.md", help="write the Markdown report here")
    s.add_argument("--plot", default=None, metavar="OUT.png", help="write the PNG plot here (needs matplotlib)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_bench)
    return s


def settings_from_args(args) -> BenchSettings:
    from .sysinfo import usable_cpus

    backends = parse_list(args.backend, BACKENDS, "backend", aliases={"ort": "onnxruntime", "trt": "tensorrt",
                                                                       "ov": "openvino"})
    precisions = parse_list(args.precision, PRECISIONS, "precision")
    if args.iterations is not None and args.iterations < 1:
        raise UsageError("--iterations must be at least 1")
    duration = 3.0 if args.duration_s is None else args.duration_s
    if args.iterations is None and not duration > 0:
        raise UsageError("--duration-s must be > 0")
    if not args.warmup_s >= 0:
        raise UsageError("--warmup-s must be >= 0")
    if min(args.blocks, args.images, args.e2e_workers, args.e2e_repeats) < 1:
        raise UsageError("--blocks, --images, --e2e-workers and --e2e-repeats must be at least 1")
    if args.threads is not None and args.threads < 0:
        raise UsageError("--threads must be >= 0 (0 = each backend's default)")
    threads = usable_cpus() if args.threads is None else (args.threads or None)
    return BenchSettings(backends=tuple(backends), precisions=tuple(precisions), batches=tuple(parse_batches(args.batch)),
                         warmup_s=args.warmup_s, duration_s=None if args.iterations else duration,
                         iterations=args.iterations, blocks=args.blocks, threads=threads, device=args.device,
                         cache_dir=args.cache_dir, images=args.images, data=args.data, e2e=args.e2e,
                         e2e_workers=args.e2e_workers, e2e_repeats=args.e2e_repeats)


def _print_summary(report: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a runtime dependency; plain text if it is missing anyway
        print(render_markdown(report))
        return
    console = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 160)
    b, m = report["bundle"], report["machine"]
    console.print(f"[bold]edgeinfer bench[/] {b['name']} {b['version']} | {m['cpu']['model']}, "
                  f"{m['cpu']['usable_cpus']} CPUs | threads {report['settings'].get('threads') or 'default'}")
    table = Table()
    for col in ("backend / precision", "batch", "p50 ms", "p99 ms", "spread ms", "img/s", "vs ORT fp32",
                "overhead", "gate"):
        table.add_column(col, overflow="fold")
    for r in report["rows"]:
        if r["status"] != "ok":
            continue
        sp = r["spread"]
        table.add_row(row_label(r), str(r["batch"]), _f(r["p50_ms"], 3), _f(r["p99_ms"], 3),
                      f"{_f(sp['min_ms'], 3)}-{_f(sp['max_ms'], 3)}", _f(r["throughput"], 1), _speedup_cell(r),
                      _overhead_cell(r), _gate_cell(r["accuracy"], r["backend"]))
    console.print(table)
    seen = set()
    for r in report["rows"]:
        if r["status"] != "ok" and (r["backend"], r["precision"], r.get("reason")) not in seen:
            seen.add((r["backend"], r["precision"], r.get("reason")))
            console.print(f"  {r['status']}: {row_label(r)}: {r.get('reason')}", markup=False)
    for e in report.get("e2e", []):
        if e.get("serial"):
            ser = e["serial"]
            parts = ", ".join(f"{st} {_f(ser['per_image_ms'][st], 1)}" for st in STAGES)
            console.print(f"end to end {row_label(e)}: {e['images']} images, {e['studies']} studies; per image ms: "
                          f"{parts}; {_f(ser['studies_per_s'], 2)} studies/s serial, "
                          f"{_f(e['overlapped']['studies_per_s'], 2)} overlapped", markup=False)
    t = report["targets"]["issue5_openvino_3x"]
    if t.get("evaluated") and t.get("best"):
        console.print(f"best gated OpenVINO mode: {t['best']['precision']} {t['speedup']:.2f}x ORT fp32 "
                      f"(target {t['target']:g}x: {'met' if t['met'] else 'not met'})", markup=False)
    for n in report.get("notes", []):
        console.print(f"note: {n}", markup=False)


def exit_code(report: dict) -> int:
    rows = report["rows"]
    if not any(r["status"] == "ok" for r in rows):
        return 1
    failed = any(r["status"] == "error" for r in rows) or any(
        e.get("status") == "error" or e.get("errors") for e in report.get("e2e", []))
    return 2 if failed else 0


def cmd_bench(args) -> int:
    """The ``edgeinfer bench`` handler: measure, print a summary, write the reports asked for."""
    from .cli import progress_bar

    settings = settings_from_args(args)
    if args.plot:  # fail before minutes of measuring, not after
        from ._lazy import lazy_import

        lazy_import("matplotlib", extra="dev", purpose="edgeinfer bench --plot")
    n_rows = len(settings.backends) * len(settings.precisions) * len(settings.batches)
    with progress_bar(n_rows, f"bench {n_rows} rows", not args.no_progress) as advance:
        report = run(args.bundle, settings, progress=advance)
    if args.json:
        write_json(report, args.json)
    if args.report:
        atomic_write(args.report, render_markdown(report))
    if args.plot:
        render_plot(report, args.plot)
    if args.json != "-":
        _print_summary(report)
        written = [p for p in (args.json, args.report, args.plot) if p]
        if written:
            print("wrote " + ", ".join(written))
    return exit_code(report)


__all__ = ["BenchSettings", "Case", "PeakRss", "run", "plan_cases", "measure_case", "run_e2e", "accuracy_for",
           "latency_stats", "percentile", "block_spread", "no_difference", "distribution", "issue5_target",
           "render_markdown", "render_plot", "write_json", "add_parser", "cmd_bench", "load_inputs", "make_feeds"]
