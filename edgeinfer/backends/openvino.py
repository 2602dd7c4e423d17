"""OpenVINO backend: the fast CPU path for Intel scanner consoles (AVX-512 VNNI, AMX).

Runs the bundle's FP32, FP16 and INT8 ONNX graphs. BF16 is a *runtime* precision (the
inference precision hint), not an artifact. OpenVINO runs an FP32 graph in BF16 by default on
AMX CPUs, so the hint is always set explicitly, and the precision that actually ran is read
back from the compiled model and reported.

Graphs OpenVINO crashed on here (ONNX Runtime's default unsigned/asymmetric Q/DQ: a segfault
on compile) are refused before compiling.
"""
from __future__ import annotations

import numpy as np

from .. import onnxgraph
from .._lazy import lazy_import
from ..bundle import Artifact
from ..errors import BackendUnavailable, InferenceError
from . import register
from .base import Backend, Runner, RunnerOptions, RunReport, TensorMeta

#: runtime precision names -> OpenVINO's INFERENCE_PRECISION_HINT values
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
#: OpenVINO element type names -> our precision names
_FROM_OV = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
SAFE_QUANT_FORMS = (None, "int8-symmetric")


def _ov():
    return lazy_import("openvino", extra="openvino", purpose="the OpenVINO backend")


def hint_for(artifact_precision: str, requested: str | None, cpu_capabilities: list[str]) -> tuple[str, str | None]:
    """The INFERENCE_PRECISION_HINT to set, and why the request cannot run (pure).

    Without a request, the graph's own precision runs: f32 for fp32 graphs (never the silent
    BF16 default), f32 for int8 Q/DQ graphs (non-quantized parts), f16 for fp16 graphs only
    where the CPU has native FP16, else f32.
    """
    caps = {c.upper() for c in cpu_capabilities}
    if requested is None:
        if artifact_precision == "fp16" and "FP16" in caps:
            return "f16", None
        return "f32", None
    if requested not in HINTS:
        return "", f"runtime precision {requested!r} is not one of {sorted(HINTS)}"
    if artifact_precision != "fp32" and requested != artifact_precision:
        return "", f"runtime precision {requested} applies to the fp32 graph, not to a {artifact_precision} graph"
    if requested == "bf16" and "BF16" not in caps:
        return "", "this CPU has no native BF16 (needs AVX-512 BF16 or AMX)"
    return HINTS[requested], None


def refuse_unsafe_graph(info: onnxgraph.GraphInfo, name: str) -> None:
    if info.quant_form not in SAFE_QUANT_FORMS:
        raise BackendUnavailable(
            f"{name}: its Q/DQ graph is {info.quant_form} (unsigned or asymmetric); OpenVINO crashed compiling "
            "such graphs here, so it is refused. Re-quantize as signed symmetric INT8 (edgeinfer calibrate does).")


class OpenVinoRunner(Runner):
    backend_name = "openvino"

    def __init__(self, artifact: Artifact, options: RunnerOptions | None = None):
        super().__init__(artifact, options)
        self.compiled = None
        self.request = None
        self._executed = None

    def activate_impl(self) -> None:
        ov = _ov()
        data = self.read_verified()
        info = onnxgraph.inspect(self.artifact.path, data=data)
        refuse_unsafe_graph(info, self.artifact.path.name)
        core = ov.Core()
        device = self.options.device.upper()
        if device not in core.available_devices:
            raise BackendUnavailable(f"OpenVINO has no device {device} here (it has {', '.join(core.available_devices)}).")
        caps = core.get_property(device, "OPTIMIZATION_CAPABILITIES") if device == "CPU" else []
        hint, why = hint_for(self.artifact.precision, self.options.precision_hint, list(caps))
        if why:
            raise BackendUnavailable(f"OpenVINO cannot run {self.artifact.id}: {why}.")
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": self.options.extra.get("performance_hint", "LATENCY")}
        if self.options.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.options.threads)
        if self.options.cache_dir:
            config["CACHE_DIR"] = str(self.options.cache_dir)
        self._load = (lambda: core.read_model(data)) if not info.external_data else \
            (lambda: core.read_model(str(self.artifact.path)))
        self._core, self._device, self._config = core, device, config
        self._by_batch = {}
        try:
            self.model = self._load()
            self.compiled, self.request, _ = self._for_batch(1)
        except Exception as exc:
            raise BackendUnavailable(f"OpenVINO could not compile {self.artifact.path.name}: {exc}") from exc
        ran = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self._executed = _FROM_OV.get(ran.get_type_name() if hasattr(ran, "get_type_name") else str(ran), str(ran))
        self._device_name = core.get_property(device, "FULL_DEVICE_NAME")

    def _for_batch(self, batch: int):
        """(compiled model, infer request) for this batch size.

        A graph compiled for a static shape runs faster than the dynamic-batch graph on the CPU
        (measured here: 0.36 vs 0.39 ms for the phantom model in BF16), so each batch size seen
        gets its own static compilation (about 40 ms, once). Graphs whose other axes are dynamic
        stay dynamic.
        """
        entry = self._by_batch.get(batch)
        if entry is None:
            model = self._load()
            shapes = {}
            for port in model.inputs:
                dims = list(port.get_partial_shape())
                if dims and all(d.is_static for d in dims[1:]):
                    shapes[port.get_any_name()] = [batch] + [d.get_length() for d in dims[1:]]
            if len(shapes) == len(model.inputs):
                model.reshape(shapes)
            compiled = self._core.compile_model(model, self._device, self._config)
            names = [p.get_any_name() for p in compiled.outputs]  # port lookups cost ~µs per call: once
            entry = self._by_batch[batch] = (compiled, compiled.create_infer_request(), names)
        return entry

    def deactivate_impl(self) -> None:
        self._by_batch = {}
        self.request = None
        self.compiled = None

    def _io(self, ports) -> list[TensorMeta]:
        out = []
        for p in ports:
            shape = tuple(d.get_length() if d.is_static else "?" for d in p.get_partial_shape())
            out.append(TensorMeta(p.get_any_name(), shape, str(p.get_element_type().to_dtype())))
        return out

    @property
    def inputs(self) -> list[TensorMeta]:
        return self._io(self.model.inputs) if self.compiled else []

    @property
    def outputs(self) -> list[TensorMeta]:
        return self._io(self.model.outputs) if self.compiled else []

    def _request(self, feeds: dict[str, np.ndarray]):
        batch = int(next(iter(feeds.values())).shape[0]) if feeds else 1
        return self._for_batch(batch)

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            _, request, names = self._request(feeds)
            # share_inputs: no copy of the input tensors; outputs are copied out (they are reused)
            request.infer(feeds, share_inputs=True, share_outputs=True)
        except Exception as exc:
            raise InferenceError(f"OpenVINO failed on {self.artifact.id}: {exc}") from exc
        return {name: request.get_output_tensor(i).data.copy() for i, name in enumerate(names)}

    def raw_call(self, feeds):
        infer = self._request(feeds)[1].infer
        return lambda: infer(feeds, share_inputs=True, share_outputs=True)

    def report(self) -> RunReport:
        ov = _ov()
        return RunReport(
            backend=self.backend_name, provider=f"OpenVINO {self.options.device.upper()}", device=self.options.device,
            # an fp32 graph runs at the hint's precision (fp32 or bf16); fp16/int8 graphs are what they are
            precision=(self._executed or "fp32") if self.artifact.precision == "fp32" else self.artifact.precision,
            artifact_id=self.artifact.id, artifact_sha256=self.artifact.sha256,
            details={"openvino": ov.__version__.split("-")[0], "inference_precision": self._executed,
                     "device_name": getattr(self, "_device_name", "?"), "threads": self.options.threads or "default"})


@register
class OpenVinoBackend(Backend):
    name = "openvino"
    description = "OpenVINO on Intel CPUs: FP32/FP16/INT8 graphs, BF16 runtime precision"
    module = "openvino"
    install_hint = "pip install 'edgeinfer[openvino]'"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            _ov()
        except Exception as exc:
            return False, str(exc)
        return True, ""

    @classmethod
    def accepts(cls, artifact: Artifact, options: RunnerOptions) -> tuple[bool, str]:
        if artifact.format != "onnx":
            return False, f"runs ONNX graphs, not {artifact.format}"
        if options.device.lower() not in ("cpu", "gpu", "npu", "auto"):
            return False, f"device {options.device!r} is not an OpenVINO device"
        return True, ""

    @classmethod
    def create(cls, artifact: Artifact, options: RunnerOptions) -> Runner:
        return OpenVinoRunner(artifact, options)
