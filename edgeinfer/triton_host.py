"""``edgeinfer triton-host BUNDLE``: a bundle served by a real Triton Inference Server, on a box without a GPU.

PyTriton (``nvidia-pytriton``) starts the ``tritonserver`` it ships and binds the bundle's chosen runner (any
backend and precision the accuracy gate allows here, picked like ``triage`` picks) as a Python model. The model
has the name, tensors, dynamic batching, priority levels and identity parameters of :mod:`edgeinfer.triton`, the
same as a model repository from ``edgeinfer export-triton`` gives the stock server, so a node cannot tell the two
apart. Readiness (``/v2/health/ready``) and metrics (``:8002/metrics``) are Triton's own.

PyTriton's server links against the ``libpython`` of the interpreter it runs in: it needs a venv made from
Debian's ``/usr/bin/python3`` (``make .venv-triton``); another build of the same Python version fails inside
Triton's Python backend.
"""
from __future__ import annotations

import logging
import signal
from dataclasses import dataclass

import numpy as np

from . import triton as policy
from .bundle import Bundle
from .errors import BackendUnavailable, UsageError

log = logging.getLogger("edgeinfer.triton_host")

#: PyTriton 0.7 starts a model's second and later instances by connecting to a socket its first instance opens,
#: as soon as the socket's file exists, which is before it listens: now and then "Connection refused" fails the
#: model's load (2 starts in 4 on a 2-core box with two instances). Such a start is made again with a fresh server.
START_ATTEMPTS = 3

INSTALL_HINT = ("the Triton host needs nvidia-pytriton in a venv made from Debian's /usr/bin/python3: "
                "run 'make .venv-triton', then '.venv-triton/bin/edgeinfer triton-host ...'")


@dataclass(frozen=True)
class HostPorts:
    http: int = policy.SCHEMES["http"]
    grpc: int = policy.SCHEMES["grpc"]
    metrics: int = 8002
    address: str = "0.0.0.0"


def _infer_function(runner, output_names: list[str]):
    """The model's inference callable: Triton's batch (requests stacked by the dynamic batcher) through ``runner``."""
    from pytriton.decorators import batch

    @batch
    def infer(**inputs):
        out = runner.infer(inputs)
        return {name: np.ascontiguousarray(out[name]) for name in output_names}

    return infer


def serve(bundle: Bundle, *, backend: str | None = None, precision: str | None = None, threads: int | None = None,
          device: str = "cpu", force: bool = False, instances: int = policy.INSTANCES, max_batch: int = 8,
          ports: HostPorts = HostPorts(), log_verbose: int = 0, on_ready=None) -> None:
    """Serve ``bundle`` until SIGINT/SIGTERM. ``on_ready(model_name, selection)`` is called once Triton reports
    the model ready."""
    from . import autoselect

    if backend in ("triton",):
        raise UsageError("triton-host runs the bundle here: pick a local backend (onnxruntime, openvino, tensorrt)")
    if not 1 <= int(instances) <= 16:
        raise UsageError(f"--instances {instances}: from 1 to 16")
    max_batch = policy.check_max_batch(max_batch)
    _check_ports(ports)
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor, TimeoutAction
        from pytriton.triton import Triton, TritonConfig
    except ImportError:
        raise BackendUnavailable(INSTALL_HINT) from None
    from .sysinfo import usable_cpus

    threads = policy.instance_threads(threads, instances, usable_cpus())
    # shared_cpu: the runtime's idle threads sleep instead of spinning. Triton's own threads (its Python backend
    # stub, PyTriton's proxy) share the cores; ONNX Runtime's spinning kept them off the cores, which made the
    # priority scheduler's 0.5 s stalls (policy.INSTANCES) frequent on 2 cores
    sel = autoselect.choose(bundle, threads=threads, device=device, backend=backend, precision=precision,
                            force=force, shared_cpu=True)
    artifact = sel.resolved.artifact
    name = policy.model_name(bundle.name, artifact.id)
    def tensors(kind: str) -> list:
        return [Tensor(name=tensor, dtype=np.dtype(dtype).type, shape=tuple(dims))
                for tensor, dtype, dims in policy.tensors(kind, bundle.manifest[f"{kind}s"])]

    inputs, outputs = tensors("input"), tensors("output")
    runners = [sel.create_runner().activate() for _ in range(int(instances))]
    batcher = DynamicBatcher(
        max_queue_delay_microseconds=policy.QUEUE_DELAY_US, preferred_batch_size=policy.preferred_batch_sizes(max_batch),
        priority_levels=policy.PRIORITY_LEVELS, default_priority_level=policy.DEFAULT_PRIORITY,
        priority_queue_policy={policy.DEFAULT_PRIORITY: QueuePolicy(
            timeout_action=TimeoutAction.DELAY, default_timeout_microseconds=policy.ROUTINE_DELAY_US,
            allow_timeout_override=True)})
    config = TritonConfig(http_address=ports.address, http_port=ports.http, grpc_address=ports.address,
                          grpc_port=ports.grpc, metrics_address=ports.address, metrics_port=ports.metrics,
                          log_verbose=log_verbose, exit_timeout_secs=5)

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    triton = None
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            triton = Triton(config=config)   # not started yet: the model's parameters are set before it is loaded
            triton.bind(model_name=name, infer_func=[_infer_function(r, [t.name for t in outputs]) for r in runners],
                        inputs=inputs, outputs=outputs, model_version=1,
                        config=ModelConfig(max_batch_size=max_batch, batcher=batcher), strict=True)
            _set_identity(triton, name, policy.identity(bundle, artifact))
            try:
                triton.run()             # the server, then the model loaded and ready
                break
            except Exception as exc:  # noqa: BLE001 - PyTriton's and tritonclient's errors, said plainly
                if attempt < START_ATTEMPTS and lost_start_race(exc):
                    log.warning("%s: an instance missed PyTriton's start-up handshake; starting the server again "
                                "(%d of %d)", name, attempt + 1, START_ATTEMPTS)
                    triton.stop()
                    continue
                raise BackendUnavailable(f"Triton Inference Server did not start serving {name} "
                                         f"({exc.__class__.__name__}: {exc}); its log is above") from None
        if on_ready is not None:
            on_ready(name, sel)
        triton.serve()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if triton is not None:
            triton.stop()
        for r in runners:
            r.deactivate()


def lost_start_race(exc: BaseException) -> bool:
    """Whether a failed model load is PyTriton's start-up race (:data:`START_ATTEMPTS`): an instance that could not
    fetch its configuration from the first instance's handshake socket."""
    return "get_config_from_handshake_server" in str(exc)


def _check_ports(ports: HostPorts) -> None:
    """UsageError naming the first port another process listens on (PyTriton would find that server instead)."""
    import socket

    for what, port in (("--http-port", ports.http), ("--grpc-port", ports.grpc), ("--metrics-port", ports.metrics)):
        with socket.socket(socket.AF_INET6 if ":" in ports.address else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ports.address, port))
            except OSError as exc:
                raise UsageError(f"{what} {port}: cannot listen on {ports.address}:{port} ({exc.strerror}); another "
                                 "server (another Triton?) has it: stop it or choose another port") from None


def _set_identity(triton, name: str, params: dict[str, str]) -> None:
    """The bundle's identity into the model's ``parameters`` before the model is loaded. PyTriton (0.7) has no
    public field for model parameters; its model's Triton config keeps backend parameters, which it writes as
    the config's ``parameters``. Checked: a client reads them back (tests/edgeinfer/test_triton_host.py)."""
    model = next((m for m in triton._model_manager.models if m.model_name == name), None)
    config = model._get_triton_model_config() if model is not None else None
    if config is None or not isinstance(getattr(config, "backend_parameters", None), dict):
        raise BackendUnavailable("this nvidia-pytriton keeps no model parameters where 0.7 did; the bundle's "
                                 "identity cannot be served (pin nvidia-pytriton 0.7)")
    config.backend_parameters.update(params)
