"""TensorRT backend: runs ``tensorrt-plan`` artifacts on NVIDIA GPUs and Jetson DLA cores.

A TensorRT plan is executable code (NVIDIA's security notes say so). This runner reads the
plan's bytes once, checks their sha256 against the manifest and the plan's compatibility
record against this device (:mod:`edgeinfer.trt_policy`), and only then hands the *same
bytes* to ``deserialize_cuda_engine``. A mismatch is refused with every difference
listed; rebuilding is the CLI's decision, never the runner's.

It runs on whichever TensorRT runtime is installed (:func:`edgeinfer.backends.cuda.import_trt_runtime`):
the full ``tensorrt``, else the dispatch runtime, else the 44 MB lean runtime, and reports
which; the lean and dispatch runtimes are offered version-compatible plans only
(:mod:`edgeinfer.trt_policy`).

Execution follows the TensorRT 10 named-tensor API (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) on one CUDA stream, with pinned host
buffers and device buffers sized for the profile's largest batch, the way NVIDIA's
``samples/python/common_runtime.py`` does with cuda-python. ``tensorrt`` and
``cuda-python`` are imported only when the backend is probed or a runner activates; the
plumbing shared with ``edgeinfer build`` (those imports, CUDA error checking, the TensorRT
logger, :func:`device_info`) lives in :mod:`edgeinfer.backends.cuda`.

Runner options (``RunnerOptions.extra``):
  ``cuda_graph``: capture H2D + execute + D2H into a CUDA graph per input shape after a
      first warm run at that shape, then replay it (reported; a capture failure is reported
      and the runner keeps the ordinary path).
  ``timing``: record CUDA events around H2D / compute / D2H; ``last_timings`` and the report
      carry the milliseconds (for benchmarks; never asserted on).
  ``device_id``: CUDA device ordinal (default 0).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np

from .. import trt_policy
from .._lazy import module_present as _module_present
from ..bundle import Artifact
from ..errors import BackendUnavailable, IntegrityError, InferenceError, MissingDependency
from ..errors import CudaError  # noqa: F401 - its old import path (edgeinfer.backends.tensorrt) still works
from . import cuda, register
from .base import Backend, Runner, RunnerOptions, RunReport, TensorMeta
from .cuda import device_info  # re-exported: the device a plan is checked against

log = logging.getLogger("edgeinfer.tensorrt")

#: RunnerOptions.device values this backend serves
DEVICES = ("cuda", "tensorrt", "gpu")
_INSTALL = ("pip install 'edgeinfer[trt]' (or 'edgeinfer[trt-lean]' for the lean runtime) on a machine with an "
            "NVIDIA GPU (on Jetson, TensorRT and CUDA come with JetPack)")


# --- availability ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def probe() -> tuple[bool, str]:
    """(TensorRT usable here, reason if not). Cached: the answer does not change in a process."""
    present = [n for n in cuda.RUNTIMES if _module_present(n)]
    if not present:
        return False, f"no TensorRT runtime is installed (tensorrt, tensorrt_dispatch or tensorrt_lean; {_INSTALL})"
    try:
        trt, _name = cuda.import_trt_runtime(present)
    except MissingDependency as exc:
        return False, f"TensorRT is installed but cannot be imported ({exc})"
    try:
        major = int(str(trt.__version__).split(".")[0])
    except ValueError:
        major = 0
    if major < 10:
        return False, f"TensorRT {trt.__version__} is too old; edgeinfer needs TensorRT 10 or newer"
    if not (_module_present("cuda.bindings") or _module_present("cuda.cudart")):
        return False, f"cuda-python is not installed ({_INSTALL})"
    try:
        count = cuda.gpu_count()
    except Exception as exc:  # noqa: BLE001 - no driver, no device, a driver too old: all mean "unavailable"
        return False, f"no usable CUDA GPU ({exc})"
    if not count:
        return False, "no CUDA GPU found"
    return True, ""


# --- buffers ------------------------------------------------------------------------------------
@dataclass
class _Binding:
    name: str
    is_input: bool
    dtype: np.dtype
    engine_shape: tuple          # with -1 for dynamic axes
    max_shape: tuple
    nbytes: int
    host: int = 0                # pinned host pointer
    device: int = 0              # device pointer
    host_view: np.ndarray | None = None   # uint8 view over the pinned buffer


def _handle(h):
    """A cuda-python handle, or None when it is null (a capture that produced no graph)."""
    if h is None:
        return None
    try:
        return h if int(h) else None
    except (TypeError, ValueError):
        return h


class TrtRunner(Runner):
    backend_name = "tensorrt"

    def __init__(self, artifact: Artifact, options: RunnerOptions | None = None):
        super().__init__(artifact, options)
        extra = self.options.extra or {}
        self._use_graph = bool(extra.get("cuda_graph", False))
        self._timing = bool(extra.get("timing", False))
        self._device_id = int(extra.get("device_id", 0))
        self._reset_state()

    def _reset_state(self) -> None:
        self._device: dict | None = None
        self._record: dict | None = None
        self._runtime = self._engine = self._context = None
        self._stream = None
        self._logger = None
        self._bindings: list[_Binding] = []
        self._events: list = []
        self._graphs: dict = {}      # input shapes -> (graph, graph_exec)
        self._graph_status = "off" if not self._use_graph else "on"
        self._warned: list[str] = []
        self._batch_range = (1, 1)
        self._trt_version = None
        self._trt_runtime = None     # which TensorRT runtime deserialized the plan
        self.last_timings: dict | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def activate_impl(self) -> None:
        data = self.read_verified("deserialize")
        record = self.artifact.record.get("compatibility")
        if not record:
            raise IntegrityError(f"TensorRT plan {self.artifact.id} has no compatibility record in the manifest; "
                                 "it will not be deserialized. Rebuild it with edgeinfer build.")
        runtime = cuda.import_trt_runtime()
        device = device_info(self._device_id, runtime)
        differences = trt_policy.check_compatibility(record, device, plan_sha256=self.artifact.sha256)  # == the verified bytes
        if differences:
            raise trt_policy.incompatible_error(self.artifact.id, differences)
        self._warned = trt_policy.compatibility_warnings(record, device)
        for w in self._warned:
            log.warning("%s: %s", self.artifact.id, w)
        self._device, self._record = device, record
        try:
            self._load(data, record, runtime)
        except BaseException:
            self._free()
            raise

    def _load(self, data: bytes, record: dict, runtime) -> None:
        (trt, self._trt_runtime), cudart = runtime, cuda.import_cudart()
        self._trt_version = str(trt.__version__)
        self._logger = cuda.make_logger(trt)
        self._logger.errors.clear()
        self._runtime = trt.Runtime(self._logger)
        if trt_policy.lean_runtime_embedded(record) is False and self._trt_runtime == "tensorrt":
            # built without its lean runtime: the full runtime loads one of its own version
            # (the policy has checked the version is exact) and deserializes through it
            try:
                self._runtime = cuda.load_lean_runtime(self._runtime, self._logger)
            except BackendUnavailable as exc:
                raise BackendUnavailable(f"plan {self.artifact.id} was built without its lean runtime "
                                         f"(EXCLUDE_LEAN_RUNTIME): {exc}") from None
        if record.get("dla_core") is not None:
            self._runtime.DLA_core = int(record["dla_core"])
        if record.get("version_compatible"):
            # A version-compatible plan carries a lean runtime (host code). Allowed only here,
            # after the bytes matched the manifest's sha256 and the record matched the device.
            self._runtime.engine_host_code_allowed = True
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise BackendUnavailable(f"TensorRT could not deserialize plan {self.artifact.id}: "
                                     + ("; ".join(self._logger.errors[-5:]) or "no reason given"))
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendUnavailable(f"TensorRT could not create an execution context for {self.artifact.id}: "
                                     + ("; ".join(self._logger.errors[-5:]) or "out of device memory?"))
        self._stream = cuda.check(cudart.cudaStreamCreate(), "cudaStreamCreate", cudart)
        self._allocate(trt, cudart)
        if self._timing:
            self._events = [cuda.check(cudart.cudaEventCreate(), "cudaEventCreate", cudart) for _ in range(4)]

    def _allocate(self, trt, cudart) -> None:
        engine, ctx = self._engine, self._context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        lo_b = hi_b = None
        for name in inputs:
            shape = tuple(engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                lo, _opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
            else:
                lo = hi = shape
            if not ctx.set_input_shape(name, hi):
                raise BackendUnavailable(f"TensorRT rejected shape {hi} for input {name!r}")
            lo_b = lo[0] if lo_b is None else max(lo_b, lo[0])
            hi_b = hi[0] if hi_b is None else min(hi_b, hi[0])
        self._batch_range = (int(lo_b or 1), int(hi_b or 1))
        for name in names:
            is_in = name in inputs
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            max_shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if any(d < 0 for d in max_shape):
                raise BackendUnavailable(f"cannot size output {name!r}: its shape {max_shape} depends on the data; "
                                         "edgeinfer runs engines with shape-determined outputs only")
            nbytes = int(np.prod(max_shape, dtype=np.int64)) * dtype.itemsize
            b = _Binding(name, is_in, dtype, tuple(engine.get_tensor_shape(name)), max_shape, max(nbytes, 1))
            self._bindings.append(b)  # listed first, so a failed allocation below still frees the other buffer
            b.host = cuda.check(cudart.cudaMallocHost(b.nbytes), f"cudaMallocHost({b.nbytes})", cudart)
            b.host_view = cuda.pinned_view(b.host, b.nbytes)
            b.device = cuda.check(cudart.cudaMalloc(b.nbytes), f"cudaMalloc({b.nbytes})", cudart)
            if not ctx.set_tensor_address(name, b.device):
                raise BackendUnavailable(f"TensorRT rejected the device buffer for {name!r}")

    def deactivate_impl(self) -> None:
        self._free()

    def _free(self) -> None:
        """Release everything activate allocated; never raises (logs what it could not free)."""
        try:
            cudart = cuda.import_cudart()
        except Exception:  # noqa: BLE001
            cudart = None
        problems = []

        def attempt(what, fn, *args):
            try:
                cuda.check(fn(*args), what, cudart)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{what}: {exc}")

        if cudart is not None:
            if self._stream is not None:
                attempt("cudaStreamSynchronize", cudart.cudaStreamSynchronize, self._stream)
            for graph, graph_exec in self._graphs.values():
                attempt("cudaGraphExecDestroy", cudart.cudaGraphExecDestroy, graph_exec)
                attempt("cudaGraphDestroy", cudart.cudaGraphDestroy, graph)
            for ev in self._events:
                attempt("cudaEventDestroy", cudart.cudaEventDestroy, ev)
            for b in self._bindings:
                b.host_view = None
                if b.device:
                    attempt("cudaFree", cudart.cudaFree, b.device)
                if b.host:
                    attempt("cudaFreeHost", cudart.cudaFreeHost, b.host)
        # TensorRT objects go before the stream, context before engine before runtime
        self._context = None
        self._engine = None
        self._runtime = None
        if cudart is not None and self._stream is not None:
            attempt("cudaStreamDestroy", cudart.cudaStreamDestroy, self._stream)
        for p in problems:
            log.warning("%s: while releasing: %s", self.artifact.id, p)
        keep = (self._device, self._record, self._graph_status, self._trt_version, self._trt_runtime,
                self._batch_range, self._warned, self.last_timings)
        self._reset_state()
        (self._device, self._record, self._graph_status, self._trt_version, self._trt_runtime,
         self._batch_range, self._warned, self.last_timings) = keep

    # -- metadata ----------------------------------------------------------------------------
    def _meta(self, want_input: bool) -> list[TensorMeta]:
        out = []
        for b in self._bindings:
            if b.is_input == want_input:
                shape = tuple(("batch" if i == 0 else "?") if d < 0 else int(d)
                              for i, d in enumerate(b.engine_shape))
                out.append(TensorMeta(b.name, shape, b.dtype.name))
        return out

    @property
    def inputs(self) -> list[TensorMeta]:
        return self._meta(True)

    @property
    def outputs(self) -> list[TensorMeta]:
        return self._meta(False)

    # -- inference ---------------------------------------------------------------------------
    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        arrays, batch = {}, None
        for b in self._bindings:
            if not b.is_input:
                continue
            x = np.asarray(feeds[b.name])
            if x.dtype != b.dtype:
                raise InferenceError(f"input {b.name!r} is {x.dtype}; the engine takes {b.dtype}")
            expect = b.max_shape[1:]
            if x.ndim != len(b.max_shape) or tuple(x.shape[1:]) != expect:
                raise InferenceError(f"input {b.name!r} has shape {tuple(x.shape)}; the engine takes "
                                     f"(batch, {', '.join(map(str, expect))})")
            if batch is not None and x.shape[0] != batch:
                raise InferenceError(f"inputs disagree on the batch size ({batch} and {x.shape[0]})")
            batch = int(x.shape[0])
            arrays[b.name] = x
        if not batch:
            raise InferenceError("empty batch")
        return arrays, batch

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays, n = self._check_feeds(feeds)
        lo, hi = self._batch_range
        parts: dict[str, list[np.ndarray]] = {b.name: [] for b in self._bindings if not b.is_input}
        timings: list[dict] = []
        for start in range(0, n, hi):  # larger than the profile: run in chunks of its max batch
            chunk = {k: v[start:start + hi] for k, v in arrays.items()}
            m = next(iter(chunk.values())).shape[0]
            run = max(m, lo)
            if run > m:  # smaller than the profile's min batch (e.g. a fixed DLA batch): pad with zeros
                chunk = {k: np.concatenate([v, np.zeros((run - m,) + v.shape[1:], v.dtype)]) for k, v in chunk.items()}
            out = self._run(chunk, run)
            for k, v in out.items():
                parts[k].append(v[:m])
            if self.last_timings:
                timings.append(self.last_timings)
        if timings:
            self.last_timings = {k: float(sum(t.get(k, 0.0) for t in timings)) for k in timings[0]}
        return {k: (v[0] if len(v) == 1 else np.concatenate(v)) for k, v in parts.items()}

    def _stage(self, arrays: dict[str, np.ndarray], batch: int) -> tuple[tuple, list[tuple[_Binding, tuple, int]]]:
        """Set input shapes and addresses, copy inputs into pinned memory; returns the shape key and sizes."""
        ctx = self._context
        key = []
        for b in self._bindings:
            if not b.is_input:
                continue
            x = np.ascontiguousarray(arrays[b.name])
            shape = (batch,) + tuple(b.max_shape[1:])
            if tuple(ctx.get_tensor_shape(b.name)) != shape and not ctx.set_input_shape(b.name, shape):
                raise InferenceError(f"TensorRT rejected input shape {shape} for {b.name!r}")
            b.host_view[:x.nbytes] = x.reshape(-1).view(np.uint8)
            key.append(shape)
        sizes = []
        for b in self._bindings:
            if not ctx.set_tensor_address(b.name, b.device):
                raise InferenceError(f"TensorRT rejected the device buffer for {b.name!r}")
            shape = tuple(int(d) for d in ctx.get_tensor_shape(b.name))
            sizes.append((b, shape, int(np.prod(shape, dtype=np.int64)) * b.dtype.itemsize))
        return tuple(key), sizes

    def _enqueue(self, cudart, sizes, *, timed: bool) -> None:
        """H2D copies, execute_async_v3, D2H copies on the runner's stream (no synchronisation)."""
        stream, ev = self._stream, self._events
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if timed:
            cuda.check(cudart.cudaEventRecord(ev[0], stream), "cudaEventRecord", cudart)
        for b, _shape, nbytes in sizes:
            if b.is_input:
                cuda.check(cudart.cudaMemcpyAsync(b.device, b.host, nbytes, h2d, stream), "cudaMemcpyAsync H2D", cudart)
        if timed:
            cuda.check(cudart.cudaEventRecord(ev[1], stream), "cudaEventRecord", cudart)
        if not self._context.execute_async_v3(int(stream)):
            raise InferenceError(f"TensorRT execute_async_v3 failed on {self.artifact.id}: "
                                 + ("; ".join(self._logger.errors[-3:]) if self._logger else ""))
        if timed:
            cuda.check(cudart.cudaEventRecord(ev[2], stream), "cudaEventRecord", cudart)
        for b, _shape, nbytes in sizes:
            if not b.is_input:
                cuda.check(cudart.cudaMemcpyAsync(b.host, b.device, nbytes, d2h, stream), "cudaMemcpyAsync D2H", cudart)
        if timed:
            cuda.check(cudart.cudaEventRecord(ev[3], stream), "cudaEventRecord", cudart)

    def _elapsed(self, cudart, a, b) -> float:
        fn = getattr(cudart, "cudaEventElapsedTime", None) or getattr(cudart, "cudaEventElapsedTime_v2")
        return float(cuda.check(fn(a, b), "cudaEventElapsedTime", cudart))

    def _run(self, arrays: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        cudart = cuda.import_cudart()
        key, sizes = self._stage(arrays, batch)
        graph = self._graphs.get(key)
        timed = self._timing and bool(self._events)
        if graph is not None:
            if timed:
                cuda.check(cudart.cudaEventRecord(self._events[0], self._stream), "cudaEventRecord", cudart)
            cuda.check(cudart.cudaGraphLaunch(graph[1], self._stream), "cudaGraphLaunch", cudart)
            if timed:
                cuda.check(cudart.cudaEventRecord(self._events[3], self._stream), "cudaEventRecord", cudart)
        else:
            self._enqueue(cudart, sizes, timed=timed)
        cuda.check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize", cudart)
        if timed:
            ev = self._events
            if graph is not None:
                self.last_timings = {"graph_ms": self._elapsed(cudart, ev[0], ev[3])}
            else:
                self.last_timings = {"h2d_ms": self._elapsed(cudart, ev[0], ev[1]),
                                     "compute_ms": self._elapsed(cudart, ev[1], ev[2]),
                                     "d2h_ms": self._elapsed(cudart, ev[2], ev[3])}
        out = {}
        for b, shape, nbytes in sizes:
            if not b.is_input:
                out[b.name] = b.host_view[:nbytes].view(b.dtype).reshape(shape).copy()
        if self._use_graph and graph is None and self._graph_status == "on":
            # the run above was the warm run TensorRT needs before capture at this shape
            self._capture(cudart, key, sizes)
        return out

    def _capture(self, cudart, key, sizes) -> None:
        """Capture H2D + execute + D2H at this shape into a CUDA graph (replayed by later runs).

        The way trtexec does it (``samples/common/sampleDevice.h``): whatever fails, the capture
        is ended, a graph it produced is destroyed, and the sticky error a failed capture leaves
        is cleared, so the runner goes on without a graph and without a leak.
        """
        stream = self._stream
        graph = graph_exec = None
        try:
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            cuda.check(cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture", cudart)
            try:
                self._enqueue(cudart, sizes, timed=False)
            finally:
                ended = cudart.cudaStreamEndCapture(stream)  # always: the stream leaves capture mode
                graph = _handle(ended[1]) if isinstance(ended, tuple) and len(ended) > 1 else None
                cuda.check(ended, "cudaStreamEndCapture", cudart)
            graph_exec = cuda.check(cudart.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiate", cudart)
        except Exception as exc:  # noqa: BLE001 - some engines cannot be captured; say so, keep running
            if graph is not None:
                try:
                    cuda.check(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy", cudart)
                except Exception as destroy_exc:  # noqa: BLE001
                    log.warning("%s: could not destroy the failed CUDA graph: %s", self.artifact.id, destroy_exc)
            clear = getattr(cudart, "cudaGetLastError", None)
            if clear is not None:
                clear()  # a failed capture leaves an error behind; the next call must not inherit it
            self._graph_status = f"off: capture failed ({exc})"
            log.warning("%s: CUDA graph capture failed, running without it: %s", self.artifact.id, exc)
            return
        self._graphs[key] = (graph, graph_exec)

    def raw_call(self, feeds: dict[str, np.ndarray]):
        """A zero-argument callable running H2D + execute_async_v3 + D2H + synchronize on ``feeds``.

        Inputs are staged once (shapes, addresses, pinned copy); the callable is what one
        inference costs on the device, without edgeinfer's checks. The batch must fit the
        engine's profile. Outputs are copies: the pinned buffers go when the runner deactivates.
        """
        if not self.is_active:
            raise InferenceError("activate the runner before raw_call")
        arrays, n = self._check_feeds(feeds)
        lo, hi = self._batch_range
        if not lo <= n <= hi:
            raise InferenceError(f"raw_call needs a batch within the engine's profile {lo}..{hi}; {n} given")
        cudart = cuda.import_cudart()
        _key, sizes = self._stage(arrays, n)

        def call():
            self._enqueue(cudart, sizes, timed=False)
            cuda.check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize", cudart)
            return [b.host_view[:nb].view(b.dtype).reshape(s).copy() for b, s, nb in sizes if not b.is_input]

        return call

    def report(self) -> RunReport:
        dev = self._device or {}
        rec = self._record or {}
        device = dev.get("gpu_name") or "?"
        if rec.get("dla_core") is not None:
            device = f"{device} DLA core {rec['dla_core']}"
        details = {"tensorrt": self._trt_version, "runtime": self._trt_runtime,
                   "compute_capability": dev.get("compute_capability"), "tensorrt_cuda": dev.get("tensorrt_cuda"),
                   "cuda_driver": dev.get("cuda_driver_version"), "batch_profile": list(self._batch_range),
                   "cuda_graph": self._graph_status}
        if rec.get("version_compatible"):
            details["version_compatible"] = True
        if rec.get("hardware_compatibility", "none") != "none":
            details["hardware_compatibility"] = rec["hardware_compatibility"]
        if self.last_timings:
            details["timings_ms"] = dict(self.last_timings)
        if self._warned:
            details["warnings"] = list(self._warned)
        flavour = {"tensorrt_lean": " (lean runtime)", "tensorrt_dispatch": " (dispatch runtime)"}.get(self._trt_runtime, "")
        return RunReport(backend=self.backend_name, provider=f"TensorRT {self._trt_version or '?'}{flavour}",
                         device=device, precision=self.artifact.precision, artifact_id=self.artifact.id,
                         artifact_sha256=self.artifact.sha256, details=details)


@register
class TensorRTBackend(Backend):
    name = "tensorrt"
    description = "NVIDIA TensorRT: serialized plans built on the device that runs them (GPU or Jetson DLA)"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return probe()

    @classmethod
    def accepts(cls, artifact: Artifact, options: RunnerOptions) -> tuple[bool, str]:
        if artifact.format != "tensorrt-plan":
            return False, f"runs TensorRT plans (format tensorrt-plan), not {artifact.format}"
        if options.device not in DEVICES:
            return False, (f"runs on NVIDIA GPUs; device {options.device!r} was asked "
                           f"(use one of {', '.join(DEVICES)})")
        if options.precision_hint not in (None, artifact.precision):
            return False, f"a plan's precision is fixed at build time ({artifact.precision}); " \
                          f"{options.precision_hint} was asked"
        record = artifact.record.get("compatibility")
        if not record:
            return False, "the plan has no compatibility record; rebuild it with edgeinfer build"
        try:
            device = device_info(int((options.extra or {}).get("device_id", 0)), cuda.import_trt_runtime())
        except Exception as exc:  # noqa: BLE001
            return False, f"cannot read this device's properties ({exc})"
        differences = trt_policy.check_compatibility(record, device)
        if differences:
            return False, "the plan does not match this device: " + "; ".join(differences)
        return True, ""

    @classmethod
    def create(cls, artifact: Artifact, options: RunnerOptions) -> Runner:
        return TrtRunner(artifact, options)


__all__ = ["TrtRunner", "TensorRTBackend", "device_info", "probe", "DEVICES"]
