"""ONNX Runtime backend: CPU by default; CUDA or TensorRT execution providers on request.

ONNX Runtime silently falls back to the CPU when a provider cannot start. This backend
checks the providers the session actually got and raises unless the user allowed a
fallback, in which case the fallback is reported.

On the CUDA provider (``device="cuda"``) the runner follows ONNX Runtime's own performance
guide rather than ``session.run`` on NumPy arrays (:class:`CudaSettings`, every setting
reported in the run's details):

* **I/O binding**: one device buffer per input and output and per batch shape, bound once;
  ``run_with_iobinding`` then neither allocates nor copies on its own.
* **Pinned host buffers** (cuda-python's ``cudaMallocHost``): the inputs are staged into
  page-locked memory and copied with one ``cudaMemcpy`` each way, at the link's full rate.
  Without cuda-python, ONNX Runtime's own copies from NumPy memory are used (reported).
* **CUDA graphs** (``enable_cuda_graph``): the provider captures the whole graph once per
  shape (``gpu_graph_id`` per batch size) and replays it; a graph some of whose nodes run
  on the CPU cannot be captured, and the session is made again without it (reported).
* **Convolution algorithm search** (``cudnn_conv_algo_search``): HEURISTIC by default, not ONNX
  Runtime's EXHAUSTIVE, which on an H200 chose slower algorithms in 17 of 18 measured cases (up to
  1.6x slower, none faster beyond the run-to-run spread; ``deploy/results/``) and takes longer to start,
  the **memory arena's growth** (``arena_extend_strategy``), **TF32** (off by default: an
  FP32 graph runs in FP32) and cuDNN's **NHWC** layout (off by default).

``RunnerOptions.extra``: ``cuda`` (a :class:`CudaSettings`, a mapping or a string such as
``"graph=off,conv=heuristic"``), ``io_binding`` (force the binding path on another provider,
for tests on the CPU), ``timing`` (``last_timings``: milliseconds spent in the host-to-device
copy, the run and the device-to-host copy of the last call, by the host clock around those
synchronous steps).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np

from .. import onnxgraph
from ..bundle import Artifact
from ..errors import BackendUnavailable, InferenceError, MissingDependency, UsageError
from . import register
from .base import Backend, Runner, RunnerOptions, RunReport, TensorMeta

#: device name -> provider list, most preferred first
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(int64)": "int64", "tensor(int32)": "int32"}


log = logging.getLogger("edgeinfer.onnxruntime")


@dataclass(frozen=True)
class CudaSettings:
    """How the runner drives ONNX Runtime's CUDA provider (pure; see the module's docstring).

    Written and read as ``key=value`` pairs (:meth:`parse`, :meth:`spec`): ``iobinding``,
    ``pinned``, ``graph``, ``tf32``, ``nhwc`` take on/off; ``conv`` exhaustive, heuristic or
    default; ``arena`` pow2 (grow by powers of two) or exact (grow by what is asked); ``gpu``
    the device ordinal.
    """

    io_binding: bool = True
    pinned: bool = True
    cuda_graph: bool = True
    conv_algo: str = "HEURISTIC"
    arena: str = "kNextPowerOfTwo"
    tf32: bool = False
    nhwc: bool = False
    device_id: int = 0

    _BOOLS = {"iobinding": "io_binding", "pinned": "pinned", "graph": "cuda_graph", "tf32": "tf32", "nhwc": "nhwc"}
    _CONV = {"exhaustive": "EXHAUSTIVE", "heuristic": "HEURISTIC", "default": "DEFAULT"}
    _ARENA = {"pow2": "kNextPowerOfTwo", "exact": "kSameAsRequested"}

    @classmethod
    def parse(cls, spec) -> "CudaSettings":
        """From a CudaSettings, None (the defaults), a mapping or ``"graph=off,conv=heuristic"``;
        UsageError naming the key or value and what is allowed."""
        if isinstance(spec, CudaSettings):
            return spec
        if spec is None or spec == "":
            return cls()
        if isinstance(spec, str):
            pairs = []
            for item in (x.strip() for x in spec.split(",") if x.strip()):
                key, sep, value = item.partition("=")
                if not sep:
                    raise UsageError(f"CUDA option {item!r}: expected KEY=VALUE, e.g. graph=off")
                pairs.append((key.strip().lower(), value.strip().lower()))
        else:
            pairs = [(str(k).lower(), str(v).lower()) for k, v in dict(spec).items()]
        keys = sorted([*cls._BOOLS, "conv", "arena", "gpu"])
        out = cls()
        for key, value in pairs:
            if key in cls._BOOLS:
                if value not in ("on", "off", "1", "0", "true", "false"):
                    raise UsageError(f"CUDA option {key}={value}: use on or off")
                out = replace(out, **{cls._BOOLS[key]: value in ("on", "1", "true")})
            elif key == "conv":
                if value not in cls._CONV:
                    raise UsageError(f"CUDA option conv={value}: use one of {', '.join(cls._CONV)}")
                out = replace(out, conv_algo=cls._CONV[value])
            elif key == "arena":
                if value not in cls._ARENA:
                    raise UsageError(f"CUDA option arena={value}: use pow2 or exact")
                out = replace(out, arena=cls._ARENA[value])
            elif key == "gpu":
                if not value.isdigit():
                    raise UsageError(f"CUDA option gpu={value}: give the device ordinal, e.g. gpu=0")
                out = replace(out, device_id=int(value))
            else:
                raise UsageError(f"unknown CUDA option {key!r}; the options are {', '.join(keys)}")
        return out

    def spec(self) -> str:
        """The settings as the ``key=value`` list :meth:`parse` reads."""
        onoff = {True: "on", False: "off"}
        conv = {v: k for k, v in self._CONV.items()}[self.conv_algo]
        arena = {v: k for k, v in self._ARENA.items()}[self.arena]
        return (f"iobinding={onoff[self.io_binding]},pinned={onoff[self.pinned]},graph={onoff[self.cuda_graph]},"
                f"conv={conv},arena={arena},tf32={onoff[self.tf32]},nhwc={onoff[self.nhwc]},gpu={self.device_id}")

    def provider_options(self, *, cuda_graph: bool | None = None) -> dict[str, str]:
        """The CUDAExecutionProvider options (strings, as ONNX Runtime takes them)."""
        graph = self.cuda_graph and self.io_binding if cuda_graph is None else cuda_graph
        return {"device_id": str(self.device_id), "cudnn_conv_algo_search": self.conv_algo,
                "arena_extend_strategy": self.arena, "use_tf32": "1" if self.tf32 else "0",
                "prefer_nhwc": "1" if self.nhwc else "0", "enable_cuda_graph": "1" if graph else "0"}


def output_shape(declared, batch: int) -> tuple[int, ...] | None:
    """An output's shape for ``batch`` from the graph's declared shape (pure): the first axis is
    the batch, every other one must be a fixed size; None when one depends on the data."""
    dims = list(declared or ())
    if not dims:
        return None
    rest = dims[1:]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        return None
    return (int(batch), *(int(d) for d in rest))


class _Bound:
    """The I/O binding of one input shape: device values, pinned staging buffers, the graph id."""

    def __init__(self, runner: "OrtRunner", shapes: dict[str, tuple], graph_id: int):
        ort, sess, dev = _ort(), runner.session, runner._io_device
        self.binding = sess.io_binding()
        self.run_options = ort.RunOptions()
        if runner._graph_on:
            self.run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self.inputs, self.outputs, self.pinned = [], [], []
        batch = next(iter(shapes.values()))[0]
        cudart = runner._cudart
        for meta in sess.get_inputs():
            dtype = np.dtype(_ORT_TYPES[meta.type])
            val = ort.OrtValue.ortvalue_from_shape_and_type(shapes[meta.name], dtype, dev, runner._device_id)
            self.binding.bind_ortvalue_input(meta.name, val)
            host = self._pin(cudart, shapes[meta.name], dtype)
            self.inputs.append((meta.name, val, host))
        for meta in sess.get_outputs():
            dtype = np.dtype(_ORT_TYPES[meta.type])
            shape = output_shape(meta.shape, batch)
            val = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, dev, runner._device_id)
            self.binding.bind_ortvalue_output(meta.name, val)
            self.outputs.append((meta.name, val, self._pin(cudart, shape, dtype)))

    def _pin(self, cudart, shape, dtype):
        if cudart is None:
            return None
        from . import cuda

        buf = cuda.PinnedBuffer(shape, dtype, cudart)
        self.pinned.append(buf)
        return buf

    def free(self) -> None:
        for buf in self.pinned:
            buf.free()
        self.pinned = []


def _ort():
    import onnxruntime  # a runtime dependency; imported lazily only to keep `import edgeinfer` fast

    return onnxruntime


def providers_for(device: str, available: list[str]) -> tuple[list[str], str | None]:
    """Providers to request for ``device`` and the reason it cannot run, if it cannot (pure)."""
    wanted = PROVIDERS.get(device)
    if wanted is None:
        return [], f"device {device!r} is not one of {sorted(PROVIDERS)}"
    if wanted[0] not in available:
        return wanted, (f"{wanted[0]} is not available in this onnxruntime build "
                        f"(available: {', '.join(available)}); install onnxruntime-gpu on a GPU machine")
    chosen = [p for p in wanted if p in available]
    return chosen + [p for p in ("CPUExecutionProvider",) if p not in chosen], None


class OrtRunner(Runner):
    backend_name = "onnxruntime"

    def __init__(self, artifact: Artifact, options: RunnerOptions | None = None):
        super().__init__(artifact, options)
        self.session = None
        self._fallback_from: str | None = None
        self._provider = None
        extra = self.options.extra or {}
        self._cuda = CudaSettings.parse(extra.get("cuda"))
        self._timing = bool(extra.get("timing", False))
        self._force_binding = bool(extra.get("io_binding", False))
        self.last_timings: dict | None = None
        self._reset_binding()

    def _reset_binding(self) -> None:
        self._bound: dict[tuple, _Bound] = {}
        self._binding_on = False
        self._graph_on = False
        self._io_device = "cpu"
        self._device_id = 0
        self._cudart = None
        self._cuda_status: dict = {}

    def _providers(self, providers: list[str], graph: bool) -> list:
        """The provider list with the CUDA provider's options attached."""
        return [(p, self._cuda.provider_options(cuda_graph=graph)) if p == "CUDAExecutionProvider" else p
                for p in providers]

    def _session(self, ort, source, so, providers):
        try:
            return ort.InferenceSession(source, sess_options=so, providers=providers)
        except Exception as exc:
            raise BackendUnavailable(f"onnxruntime could not load {self.artifact.path.name}: {exc}") from exc

    def activate_impl(self) -> None:
        ort = _ort()
        data = self.read_verified()
        info = onnxgraph.inspect(self.artifact.path, data=data)
        device = self.options.device
        providers, why = providers_for(device, ort.get_available_providers())
        if why:
            if not self.options.allow_fallback:
                raise BackendUnavailable(f"onnxruntime cannot run on {device}: {why}. "
                                         "Pass --allow-fallback to run on the CPU instead (it will be reported).")
            self._fallback_from, providers = device, ["CPUExecutionProvider"]
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.options.threads:
            so.intra_op_num_threads = int(self.options.threads)
            so.inter_op_num_threads = 1
        if self.options.shared_cpu:
            # ORT's pool threads spin for a while after each parallel section; with an intake pool on
            # the same cores that spinning takes the CPU the intake needs (2 cores: -15 % end to end)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        source = data if not info.external_data else str(self.artifact.path)
        on_cuda = providers[0] == "CUDAExecutionProvider"
        if on_cuda and hasattr(ort, "preload_dlls"):
            try:  # the CUDA and cuDNN libraries of NVIDIA's wheels are not on the loader's path by themselves
                ort.preload_dlls(directory="")
            except Exception as exc:  # noqa: BLE001 - the session's own error says what is missing
                log.debug("onnxruntime.preload_dlls: %s", exc)
        graph = on_cuda and self._cuda.io_binding and self._cuda.cuda_graph
        if graph:
            try:
                self.session = ort.InferenceSession(source, sess_options=so, providers=self._providers(providers, True))
            except Exception as exc:  # noqa: BLE001 - a graph with CPU nodes cannot be captured: run without
                self._cuda_status["cuda_graph"] = f"off: the provider refused it ({str(exc).strip()[:300]})"
                graph = False
        if self.session is None:
            self.session = self._session(ort, source, so, self._providers(providers, False) if on_cuda else providers)
        # kept for a session without a graph, should a capture fail at run time (_infer_bound)
        self._without_graph = lambda: self._session(ort, source, so, self._providers(providers, False))
        got = self.session.get_providers()
        self._provider = got[0]
        self._output_names = [o.name for o in self.session.get_outputs()]
        if self._fallback_from is None and got[0] != providers[0]:
            if not self.options.allow_fallback:
                self.session = None
                raise BackendUnavailable(
                    f"asked onnxruntime for {providers[0]}, but the session started on {got[0]} "
                    "(the provider failed to initialise; check the CUDA/TensorRT libraries). "
                    "Pass --allow-fallback to accept the CPU (it will be reported).")
            self._fallback_from = device
        self._setup_binding(got[0], graph)

    def _setup_binding(self, provider: str, graph: bool) -> None:
        """Decide the I/O path: binding (with pinned buffers, with a graph) or plain ``session.run``."""
        on_cuda = provider == "CUDAExecutionProvider"
        status = self._cuda_status
        if not (on_cuda and self._cuda.io_binding) and not self._force_binding:
            if on_cuda:
                status.update(io_binding="off (asked)", pinned="off (needs I/O binding)",
                              cuda_graph=status.get("cuda_graph", "off (needs I/O binding)" if self._cuda.cuda_graph
                                                    else "off (asked)"))
            return
        declared = [o.shape for o in self.session.get_outputs()]
        if any(output_shape(d, 1) is None for d in declared):
            status.update(io_binding=f"off (an output's shape depends on the data: {declared})")
            return
        self._binding_on = True
        self._io_device = "cuda" if on_cuda else "cpu"
        self._device_id = self._cuda.device_id if on_cuda else 0
        self._graph_on = on_cuda and graph
        status["io_binding"] = "on"
        if on_cuda:
            status.setdefault("cuda_graph", "on" if self._graph_on else "off (asked)")
            if self._cuda.pinned:
                from . import cuda

                try:
                    self._cudart = cuda.import_cudart()
                    status["pinned"] = "on"
                except (ImportError, MissingDependency) as exc:
                    status["pinned"] = f"off (cuda-python is not installed: {exc.__class__.__name__}); ONNX Runtime's own copies"
            else:
                status["pinned"] = "off (asked)"

    def deactivate_impl(self) -> None:
        for b in self._bound.values():
            b.free()
        keep = self._cuda_status
        self._reset_binding()
        self._cuda_status = keep
        self.session = self._without_graph = None

    def _io(self, items) -> list[TensorMeta]:
        return [TensorMeta(i.name, tuple(d if d is not None else "?" for d in i.shape),
                           _ORT_TYPES.get(i.type, i.type)) for i in items]

    @property
    def inputs(self) -> list[TensorMeta]:
        return self._io(self.session.get_inputs()) if self.session else []

    @property
    def outputs(self) -> list[TensorMeta]:
        return self._io(self.session.get_outputs()) if self.session else []

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._binding_on:
            return self._infer_bound(feeds)
        names = self._output_names
        self._run_options = run_options = _ort().RunOptions()  # cancel() interrupts this call through it
        try:
            values = self.session.run(names, feeds, run_options)
        except Exception as exc:
            self._failed(exc)
        return dict(zip(names, values))

    def _failed(self, exc: Exception):
        if self.cancelled:
            raise InferenceError(f"onnxruntime run on {self.artifact.id} was cancelled (watchdog)") from None
        raise InferenceError(f"onnxruntime failed on {self.artifact.id}: {exc}") from exc

    # -- the I/O binding path ----------------------------------------------------------------------
    def _bound_for(self, feeds: dict[str, np.ndarray]) -> _Bound:
        shapes = {name: tuple(int(d) for d in np.shape(x)) for name, x in feeds.items()}
        key = tuple(sorted(shapes.items()))
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = _Bound(self, shapes, graph_id=len(self._bound) + 1)
        return bound

    def _h2d(self, bound: _Bound, feeds: dict[str, np.ndarray]) -> None:
        from . import cuda

        for name, val, host in bound.inputs:
            x = feeds[name]
            if host is None:
                val.update_inplace(np.ascontiguousarray(x))
            else:
                np.copyto(host.array, x, casting="same_kind")
                cuda.memcpy(self._cudart, val.data_ptr(), host.ptr, host.nbytes, "h2d")

    def _d2h(self, bound: _Bound) -> dict[str, np.ndarray]:
        from . import cuda

        out = {}
        for name, val, host in bound.outputs:
            if host is None:
                out[name] = val.numpy().copy()
            else:
                cuda.memcpy(self._cudart, host.ptr, val.data_ptr(), host.nbytes, "d2h")
                out[name] = host.array.copy()
        return out

    def _infer_bound(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self._infer_bound_once(feeds)
        except InferenceError as exc:
            if not self._graph_on or self.cancelled:
                raise
            # the provider captures a shape's graph in its first runs; a capture that fails leaves the
            # runner on the same bound path without graphs (reported), as the TensorRT runner does
            log.warning("%s: CUDA graph failed, running without it: %s", self.artifact.id, exc)
            for b in self._bound.values():
                b.free()
            self._bound = {}
            self.session = self._without_graph()
            self._graph_on = False
            self._cuda_status["cuda_graph"] = f"off: capture or replay failed ({str(exc)[:300]})"
            return self._infer_bound_once(feeds)

    def _infer_bound_once(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            bound = self._bound_for(feeds)
            self._run_options = bound.run_options  # cancel() interrupts the run through it
            t0 = time.perf_counter()
            self._h2d(bound, feeds)
            t1 = time.perf_counter()
            self.session.run_with_iobinding(bound.binding, bound.run_options)
            t2 = time.perf_counter()
            out = self._d2h(bound)
            t3 = time.perf_counter()
        except InferenceError:
            raise
        except Exception as exc:  # noqa: BLE001 - CUDA or ONNX Runtime errors, with the call named
            self._failed(exc)
        if self._timing:
            self.last_timings = {"h2d_ms": (t1 - t0) * 1e3, "compute_ms": (t2 - t1) * 1e3, "d2h_ms": (t3 - t2) * 1e3}
        return out

    def cancel_impl(self) -> bool:
        """ONNX Runtime stops a run whose RunOptions.terminate is set (between kernels)."""
        run_options = getattr(self, "_run_options", None)
        if run_options is not None:
            run_options.terminate = True
        return True

    def raw_call(self, feeds):
        """``session.run`` on ``feeds``; on the I/O binding path, ``run_with_iobinding`` and the copies
        back, the inputs staged on the device once."""
        if self._binding_on:
            bound = self._bound_for(feeds)
            self._h2d(bound, feeds)
            run = self.session.run_with_iobinding

            def call():
                run(bound.binding, bound.run_options)
                return self._d2h(bound)

            return call
        run, names = self.session.run, [o.name for o in self.session.get_outputs()]
        return lambda: run(names, feeds)

    def report(self) -> RunReport:
        ort = _ort()
        provider = self._provider or "?"
        device = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda",
                  "TensorrtExecutionProvider": "tensorrt"}.get(provider, provider)
        threads = self.options.threads or "default"
        details = {"onnxruntime": ort.__version__, "intra_op_threads": threads, "spinning": not self.options.shared_cpu}
        if provider == "CUDAExecutionProvider":
            details["cuda"] = {"asked": self._cuda.spec(), "provider_options": self._cuda.provider_options(
                cuda_graph=self._graph_on), **self._cuda_status}
        elif self._binding_on:
            details["io_binding"] = "on"
        return RunReport(backend=self.backend_name, provider=provider, device=device,
                         precision=self.artifact.precision, artifact_id=self.artifact.id,
                         artifact_sha256=self.artifact.sha256, fallback_from=self._fallback_from,
                         details=details)


@register
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    description = "ONNX Runtime: CPU, or CUDA/TensorRT execution providers with onnxruntime-gpu"
    module = "onnxruntime"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            _ort()
        except ImportError as exc:
            return False, f"onnxruntime is not installed ({exc})"
        return True, ""

    @classmethod
    def accepts(cls, artifact: Artifact, options: RunnerOptions) -> tuple[bool, str]:
        if artifact.format != "onnx":
            return False, f"runs ONNX graphs, not {artifact.format}"
        if options.precision_hint not in (None, artifact.precision):
            return False, f"has no runtime precision hint ({options.precision_hint} asked)"
        if options.device == "cpu":
            return True, ""  # every onnxruntime build has the CPU provider: no need to load the library to ask
        _, why = providers_for(options.device, _ort().get_available_providers())
        if why and not options.allow_fallback:
            return False, why + "; or pass --allow-fallback to run on the CPU (it will be reported)"
        return True, ""

    @classmethod
    def create(cls, artifact: Artifact, options: RunnerOptions) -> Runner:
        return OrtRunner(artifact, options)
