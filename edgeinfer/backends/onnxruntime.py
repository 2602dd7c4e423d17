"""ONNX Runtime backend: CPU by default; CUDA or TensorRT execution providers on request.

ONNX Runtime silently falls back to the CPU when a provider cannot start. This backend
checks the providers the session actually got and raises unless the user allowed a
fallback, in which case the fallback is reported.
"""
from __future__ import annotations

import numpy as np

from .. import onnxgraph
from ..bundle import Artifact
from ..errors import BackendUnavailable, InferenceError
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
        try:
            source = data if not info.external_data else str(self.artifact.path)
            self.session = ort.InferenceSession(source, sess_options=so, providers=providers)
        except Exception as exc:
            raise BackendUnavailable(f"onnxruntime could not load {self.artifact.path.name}: {exc}") from exc
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

    def deactivate_impl(self) -> None:
        self.session = None

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
        names = self._output_names
        self._run_options = run_options = _ort().RunOptions()  # cancel() interrupts this call through it
        try:
            values = self.session.run(names, feeds, run_options)
        except Exception as exc:
            if self.cancelled:
                raise InferenceError(f"onnxruntime run on {self.artifact.id} was cancelled (watchdog)") from None
            raise InferenceError(f"onnxruntime failed on {self.artifact.id}: {exc}") from exc
        return dict(zip(names, values))

    def cancel_impl(self) -> bool:
        """ONNX Runtime stops a run whose RunOptions.terminate is set (between kernels)."""
        run_options = getattr(self, "_run_options", None)
        if run_options is not None:
            run_options.terminate = True
        return True

    def raw_call(self, feeds):
        run, names = self.session.run, [o.name for o in self.session.get_outputs()]
        return lambda: run(names, feeds)

    def report(self) -> RunReport:
        ort = _ort()
        provider = self._provider or "?"
        device = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda",
                  "TensorrtExecutionProvider": "tensorrt"}.get(provider, provider)
        threads = self.options.threads or "default"
        return RunReport(backend=self.backend_name, provider=provider, device=device,
                         precision=self.artifact.precision, artifact_id=self.artifact.id,
                         artifact_sha256=self.artifact.sha256, fallback_from=self._fallback_from,
                         details={"onnxruntime": ort.__version__, "intra_op_threads": threads,
                                  "spinning": not self.options.shared_cpu})


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
