"""The ``triton`` backend: a bundle's inference sent to a Triton Inference Server (``--triton-url URL``).

The server runs the model (a repository from ``edgeinfer export-triton`` on the stock server, or
``edgeinfer triton-host``); this runner sends each batch with ``tritonclient`` over KServe v2 HTTP
(``http://host:8000``) or gRPC (``grpc://host:8001``), with the study's priority (STAT requests overtake queued
ROUTINE ones), a timeout, and retries with back-off. Before its first inference, and again after every lost
connection, it reads the served model's parameters and refuses a model whose bundle digest or sha256 differs
from the local manifest's (:func:`edgeinfer.triton.identity_problem`).

An unreachable server is :class:`ServerUnreachable`: ``triage`` makes the images INDETERMINATE (human read),
never ROUTINE; the node keeps the study queued and retries (:mod:`edgeinfer.node.worker`). After a call failed
through all its retries the runner fails at once for :data:`RETRY_AFTER_S` seconds, so that a run of many images
does not wait out every image's retries against a server that is down.

``tritonclient``'s gRPC extra pins an older protobuf than ONNX and OpenVINO use; its grpc module works with the
newer one, so the ``triton`` extra installs ``tritonclient`` with ``grpcio`` and ``geventhttpclient`` itself.
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from .. import triton as policy
from ..bundle import Artifact
from ..errors import BackendUnavailable, InferenceError, IntegrityError, UsageError
from . import register
from .base import Backend, Runner, RunnerOptions, RunReport, TensorMeta

log = logging.getLogger("edgeinfer.triton")

#: after a call failed through all its retries, later calls fail at once for this long (then one is tried again)
RETRY_AFTER_S = 2.0
#: seconds a request may take, including its time in the server's queue
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 2
#: back-off before retry n (seconds): BACKOFF_S * 2**n
BACKOFF_S = 0.25
#: seconds to open a connection (a server that is down says so quickly; a host that does not answer takes this)
CONNECT_TIMEOUT_S = 3.0
#: gRPC status codes that mean the server could not be reached or did not answer in time
_GRPC_TRANSPORT = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"}


class ServerUnreachable(InferenceError):
    """The Triton server could not be reached (refused, reset, timed out): retry later; never ROUTINE meanwhile."""


def _is_transport(exc: BaseException) -> bool:
    """Whether ``exc`` says the server was not reached or did not answer (as opposed to refusing the request)."""
    if isinstance(exc, (OSError, EOFError)):   # refused, reset, timed out (socket.timeout is an OSError)
        return True
    try:
        import gevent

        if isinstance(exc, gevent.Timeout):
            return True
    except ImportError:
        pass
    status = getattr(exc, "status", None)    # tritonclient's InferenceServerException: gRPC's status code
    return str(status() if callable(status) else status) in _GRPC_TRANSPORT


def _settings(options: RunnerOptions) -> tuple[str, float, int]:
    ex = options.extra
    url = ex.get("triton_url")
    if not url:
        raise UsageError("the triton backend needs the server's URL: --triton-url http://HOST:8000 (or grpc://HOST:8001)")
    timeout = float(ex.get("triton_timeout_s", DEFAULT_TIMEOUT_S))
    retries = int(ex.get("triton_retries", DEFAULT_RETRIES))
    if not timeout > 0 or retries < 0:
        raise UsageError(f"triton timeout {timeout} s and retries {retries}: the timeout must be > 0, retries >= 0")
    return url, timeout, retries


class TritonRunner(Runner):
    backend_name = "triton"

    def __init__(self, artifact: Artifact, options: RunnerOptions):
        super().__init__(artifact, options)
        self.url, self.timeout_s, self.retries = _settings(options)
        self.protocol, self.address = policy.parse_url(self.url)
        self.bundle = options.extra.get("bundle")
        if self.bundle is None:
            raise UsageError("the triton backend needs the bundle (RunnerOptions.extra['bundle']) to check the "
                             "server's model against")
        self.model = policy.model_name(self.bundle.name, artifact.id)
        self._local = threading.local()     # tritonclient's clients are not shared between threads
        self._lock = threading.Lock()
        self.server: dict = {}              # name and version, once connected
        self.model_version: str | None = None
        self.verified = False
        self._retry_at = 0.0    # while down (Runner.down), calls fail at once until then
        m = self.bundle.manifest
        self._inputs = [TensorMeta(t["name"], tuple(t["shape"]), t["dtype"]) for t in m["inputs"]]
        self._outputs = [TensorMeta(t["name"], tuple(t["shape"]), t["dtype"]) for t in m["outputs"]]

    # -- the Runner protocol ------------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorMeta]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorMeta]:
        return self._outputs

    def report(self) -> RunReport:
        remote = {"url": self.url, "model": self.model, "model_version": self.model_version,
                  "server": self.server.get("name"), "server_version": self.server.get("version")}
        if self.down:
            remote["unreachable"] = self.down
        version = self.server.get("version")
        return RunReport(backend="triton", provider=f"triton {version}" if version else "triton (not reached)",
                         device=self.url, precision=self.artifact.precision, artifact_id=self.artifact.id,
                         artifact_sha256=self.artifact.sha256, details={"remote": remote})

    def activate_impl(self) -> None:
        """Connect and check the served model. A server that cannot be reached now is not an error here (the
        node starts, triage makes human reads); a server that serves another model, or not this one, is."""
        try:
            self._with_retries(lambda: None, reconnect=self._connect)
        except ServerUnreachable as exc:
            log.warning("%s; studies wait for it (node) or go to a human read (triage)", exc)

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._with_retries(lambda: self._infer_once(feeds))

    def unreachable(self) -> str | None:
        """Why the server's model cannot be used now (one check when it was down or never reached), or None. A
        server that does not serve this bundle's model (yet: a server being deployed) counts as unreachable."""
        if self.down is None and self.verified:
            return None
        try:
            self._connect()
        except (ServerUnreachable, BackendUnavailable, IntegrityError) as exc:
            self._mark_down(exc)
            return self.down
        return None

    def raw_call(self, feeds):
        return lambda: self._infer_once(feeds)

    # -- steps -------------------------------------------------------------------------------------
    def _with_retries(self, call, reconnect=None):
        """``call`` with retries while the server cannot be reached, after checking the served model when it
        was not checked since the last lost connection. ``reconnect``: how to check it (default: as at run time,
        where a server now serving another model, or none, makes the call fail like a server down, so that its
        study waits or goes to a human read; at activation that is said at once)."""
        if self.down is not None and time.monotonic() < self._retry_at:
            raise ServerUnreachable(self.down)
        last: ServerUnreachable | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                if not self.verified:
                    (reconnect or self._reconnect)()
                out = call()
                self.down = None
                return out
            except ServerUnreachable as exc:
                last = exc
                self.verified = False   # a server that comes back may serve another model: check it again
        self._mark_down(last)
        raise last

    def _reconnect(self) -> None:
        try:
            self._connect()
        except (BackendUnavailable, IntegrityError) as exc:
            raise ServerUnreachable(str(exc)) from None

    def _mark_down(self, exc: Exception) -> None:
        self.down = str(exc)
        self._retry_at = time.monotonic() + RETRY_AFTER_S
        self.transport_failures += 1

    def _client(self):
        c = getattr(self._local, "client", None)
        if c is None:
            try:
                if self.protocol == "grpc":
                    import tritonclient.grpc as m

                    c = m.InferenceServerClient(self.address)
                else:
                    import tritonclient.http as m

                    c = m.InferenceServerClient(self.address, connection_timeout=CONNECT_TIMEOUT_S,
                                                network_timeout=self.timeout_s)
            except ImportError as exc:
                raise BackendUnavailable(f"the triton backend needs tritonclient ({exc}): pip install "
                                         "'edgeinfer[triton]'") from None
            self._local.client, self._local.module = c, m
        return c, self._local.module

    def _call(self, what: str, fn, *args, **kwargs):
        """``fn`` (a tritonclient call) with the timeout (gRPC: per call; HTTP: the client's network timeout);
        ServerUnreachable when the server was not reached or did not answer in time, InferenceError when it
        refused."""
        if self.protocol == "grpc":
            kwargs.setdefault("client_timeout", self.timeout_s)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - sorted into unreachable / refused below
            if _is_transport(exc):
                self._local.client = None   # a fresh connection next time
                raise ServerUnreachable(f"the Triton server at {self.url} is unreachable "
                                        f"({exc.__class__.__name__}: {_short(exc)})") from None
            raise InferenceError(f"the Triton server at {self.url} refused {what} for model {self.model}: "
                                 f"{_short(exc)}") from None

    def _connect(self) -> None:
        """Server metadata, the model's readiness and its identity parameters: IntegrityError when the model is
        another bundle's, BackendUnavailable when the server does not serve it."""
        c, _ = self._client()
        grpc = self.protocol == "grpc"
        kw = {"as_json": True} if grpc else {}
        meta = self._call("its metadata", c.get_server_metadata, **kw)
        if not self._call("readiness", c.is_model_ready, self.model):
            if not self._model_known(c, kw):
                raise BackendUnavailable(
                    f"the Triton server at {self.url} does not serve {self.model}; serve it with 'edgeinfer "
                    f"export-triton' or 'edgeinfer triton-host {self.bundle.name} --precision {self.artifact.precision}'")
            # known to the server, loading (a server that just started) or failed: waited for like a server down
            raise ServerUnreachable(f"the Triton server at {self.url} is unreachable (its model {self.model} is "
                                    "not ready)")
        config = self._call("its model config", c.get_model_config, self.model, **kw)
        config = config.get("config", config)
        params = {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        problem = policy.identity_problem(params, self.bundle, self.artifact)
        if problem:
            raise IntegrityError(f"refusing the Triton model {self.model} at {self.url}: {problem}. Serve this "
                                 "bundle there, or run the bundle the server serves.")
        model_meta = self._call("the model's metadata", c.get_model_metadata, self.model, **kw)
        with self._lock:
            self.server = {"name": meta.get("name"), "version": meta.get("version")}
            versions = model_meta.get("versions") or []
            self.model_version = str(versions[-1]) if versions else self.model_version
            self.verified = True
            self.down = None

    def _model_known(self, c, kw) -> bool:
        """Whether the server knows the model (in any state). Its metadata answers "not found" for a model it
        does not have; the repository index, which would list states, is often restricted (PyTriton's is)."""
        try:
            self._call("the model's metadata", c.get_model_metadata, self.model, **kw)
            return True
        except ServerUnreachable:
            raise
        except InferenceError as exc:
            return "not found" not in str(exc) and "unknown model" not in str(exc).lower()

    def _infer_once(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        c, m = self._client()
        from tritonclient.utils import np_to_triton_dtype

        inputs = []
        for t in self._inputs:
            a = np.ascontiguousarray(feeds[t.name], dtype=np.dtype(t.dtype))
            i = m.InferInput(t.name, list(a.shape), np_to_triton_dtype(a.dtype))
            i.set_data_from_numpy(a)
            inputs.append(i)
        outputs = [m.InferRequestedOutput(t.name) for t in self._outputs]
        priority = policy.REQUEST_PRIORITY.get(self.request_priority, policy.DEFAULT_PRIORITY)
        result = self._call("the inference", c.infer, self.model, inputs, outputs=outputs, priority=priority)
        response = result.get_response(as_json=True) if self.protocol == "grpc" else result.get_response()
        version = (response or {}).get("model_version")
        if version:
            self.model_version = str(version)
        out = {}
        for t in self._outputs:
            a = result.as_numpy(t.name)
            if a is None:
                raise InferenceError(f"the Triton model {self.model} at {self.url} returned no {t.name} output")
            out[t.name] = a
        return out


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= limit else text[:limit] + "…"


@register
class TritonBackend(Backend):
    name = "triton"
    description = "a Triton Inference Server runs the model (KServe v2 over HTTP or gRPC; --triton-url)"
    module = "tritonclient"
    install_hint = "pip install 'edgeinfer[triton]'"
    #: runs elsewhere: never chosen unless asked for (--backend triton)
    remote = True

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import tritonclient.http  # noqa: F401
        except ImportError as exc:
            return False, f"tritonclient cannot be imported ({exc}); {cls.install_hint}"
        return True, ""

    @classmethod
    def accepts(cls, artifact: Artifact, options: RunnerOptions) -> tuple[bool, str]:
        if not options.extra.get("triton_url"):
            return False, "no Triton server given (--triton-url URL)"
        if options.precision_hint:
            return False, (f"{options.precision_hint} is a precision of a local runtime; a Triton server runs the "
                           "graphs the bundle has (fp32, fp16, int8)")
        if artifact.format not in ("onnx", "tensorrt"):
            return False, f"format {artifact.format!r}: Triton serves ONNX graphs and TensorRT plans"
        return True, ""

    @classmethod
    def create(cls, artifact: Artifact, options: RunnerOptions) -> Runner:
        return TritonRunner(artifact, options)

    @classmethod
    def served_precision(cls, bundle, options: RunnerOptions) -> str:
        """The precision the server serves this bundle at: the first of the bundle's artifacts whose model is ready
        there (asked by the model's readiness, which no server restricts)."""
        tried = []
        for a in bundle.artifacts:
            if a.format not in ("onnx", "tensorrt"):
                continue
            probe = TritonRunner(a, options)
            c, _ = probe._client()
            try:
                if probe._call("readiness", c.is_model_ready, probe.model):
                    return a.precision
            except ServerUnreachable as exc:
                raise BackendUnavailable(f"{exc}: which precision it serves {bundle.name} at cannot be asked; pass "
                                         "--precision (the studies then wait for the server, or go to a human "
                                         "read)") from None
            tried.append(probe.model)
        raise BackendUnavailable(f"the Triton server at {options.extra['triton_url']} has none of {', '.join(tried)} "
                                 f"ready; serve one with 'edgeinfer triton-host {bundle.name}' or 'edgeinfer "
                                 "export-triton'")
