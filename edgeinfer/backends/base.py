"""The Runner protocol and its lifecycle (after Polygraphy's BaseRunner).

Public methods check state and time things; subclasses implement ``*_impl``. A runner
always reports what actually ran (backend, provider, device, precision) and never falls
back silently: a fallback happens only when the caller allowed it, and it is reported.
"""
from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .._lazy import module_present
from ..bundle import Artifact
from ..errors import BackendError, InferenceError, IntegrityError


@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple          # ints, or strings for dynamic axes
    dtype: str


@dataclass
class RunnerOptions:
    """What the user asked for. Backends read the fields that concern them."""

    device: str = "cpu"                 # cpu | cuda | tensorrt | npu...; backend-specific meaning
    threads: int | None = None          # intra-op threads; None = backend default
    allow_fallback: bool = False        # may a backend run on another device than asked? (reported)
    precision_hint: str | None = None   # runtime precision (e.g. OpenVINO bf16); None = the graph's
    cache_dir: str | None = None        # compiled-model cache where a backend supports it
    #: other CPU work (an intake pool reading and decoding the next images) runs beside inference:
    #: a backend's idle threads wait asleep instead of spinning on the cores that work needs
    shared_cpu: bool = False
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunReport:
    """What actually ran. Goes into every worklist entry and benchmark row."""

    backend: str
    provider: str
    device: str
    precision: str
    artifact_id: str
    artifact_sha256: str
    fallback_from: str | None = None
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {"backend": self.backend, "provider": self.provider, "device": self.device,
             "precision": self.precision, "artifact": self.artifact_id, "sha256": self.artifact_sha256}
        if self.fallback_from:
            d["fallback_from"] = self.fallback_from
        if self.details:
            d["details"] = self.details
        return d


class Runner(ABC):
    backend_name: ClassVar[str] = "?"

    def __init__(self, artifact: Artifact, options: RunnerOptions | None = None):
        self.artifact = artifact
        self.options = options or RunnerOptions()
        self.is_active = False
        self.activate_ms: float | None = None
        self.last_infer_ms: float | None = None
        self.cancelled = False
        #: the worklist priority of the study the next calls are for (STAT, URGENT, INDETERMINATE, ROUTINE): a
        #: remote runner sends it with each request so that its server serves urgent studies first
        self.request_priority = "ROUTINE"
        #: calls that failed because a remote server could not be reached (local runners: always 0), and why the
        #: server cannot be reached now (None: it can, or the runner is local)
        self.transport_failures = 0
        self.down: str | None = None

    # -- lifecycle --------------------------------------------------------------------
    def activate(self) -> "Runner":
        if self.is_active:
            return self
        t0 = time.perf_counter()
        self.activate_impl()
        self.activate_ms = (time.perf_counter() - t0) * 1e3
        self._input_names = frozenset(t.name for t in self.inputs)  # once: metadata calls are slow
        self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self.deactivate_impl()
            finally:
                self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def read_verified(self, action: str = "load") -> bytes:
        """The artifact's bytes, checked against the manifest's sha256.

        Backends hand these very bytes to their library, so what runs is what was verified
        (the file could have changed since the bundle was loaded).
        """
        data = self.artifact.path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.artifact.sha256:
            raise IntegrityError(f"{self.artifact.path.name} changed after the bundle was loaded "
                                 f"(sha256 {digest[:16]}…, expected {self.artifact.sha256[:16]}…); "
                                 f"refusing to {action} it.")
        return data

    # -- inference ---------------------------------------------------------------------
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise BackendError(f"{self.backend_name} runner for {self.artifact.id} is not active; "
                               "call activate() or use it as a context manager.")
        if self.cancelled:
            raise InferenceError(f"{self.backend_name} runner for {self.artifact.id} was cancelled (watchdog); "
                                 "a new runner takes over")
        if feeds.keys() != self._input_names:
            raise InferenceError(f"inputs {sorted(feeds)} given, the model takes {sorted(self._input_names)}.")
        t0 = time.perf_counter()
        out = self.infer_impl(feeds)
        self.last_infer_ms = (time.perf_counter() - t0) * 1e3
        return out

    @property
    @abstractmethod
    def inputs(self) -> list[TensorMeta]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorMeta]: ...

    @abstractmethod
    def report(self) -> RunReport: ...

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def deactivate_impl(self) -> None:
        pass

    def unreachable(self) -> str | None:
        """Why a remote runner's server cannot be reached now (None when it can; local runners: always None)."""
        return None

    def cancel(self) -> bool:
        """From another thread: stop this runner. Every later ``infer`` fails at once, and a call in
        flight is interrupted where the backend can do that (True), else it runs to its end (False)."""
        self.cancelled = True
        return self.cancel_impl()

    def cancel_impl(self) -> bool:
        return False

    def raw_call(self, feeds: dict[str, np.ndarray]):
        """The backend's own inference call on ``feeds``, for overhead benchmarks.

        Returns a zero-argument callable that runs exactly what the backend would run
        (ONNX Runtime's ``session.run``, TensorRT's execute), without edgeinfer's checks.
        """
        raise NotImplementedError


class Backend(ABC):
    """A registry entry: says whether it can run an artifact here, and makes runners."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: the module whose presence says the backend is installed, and how to install it
    #: (None: only :meth:`available` can tell)
    module: ClassVar[str | None] = None
    install_hint: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def available(cls) -> tuple[bool, str]:
        """(usable on this machine, reason if not)."""

    @classmethod
    def installed(cls) -> tuple[bool, str]:
        """:meth:`available`, told without importing the backend's library: whether :attr:`module` is
        installed (a backend without one asks :meth:`available` itself).

        Listing what could run (:func:`edgeinfer.autoselect.candidates`) uses this, so that a
        cached choice loads the chosen runtime only; the choice is then checked with
        :meth:`available` before it is returned.
        """
        if cls.module is None:
            return cls.available()
        if module_present(cls.module):
            return True, ""
        return False, f"{cls.module} is not installed" + (f" ({cls.install_hint})" if cls.install_hint else "")

    @classmethod
    @abstractmethod
    def accepts(cls, artifact: Artifact, options: RunnerOptions) -> tuple[bool, str]:
        """(can run this artifact with these options, reason if not)."""

    @classmethod
    @abstractmethod
    def create(cls, artifact: Artifact, options: RunnerOptions) -> Runner: ...

    #: the model runs elsewhere (a server): such a backend is used only when asked for by name
    remote: ClassVar[bool] = False

    @classmethod
    def served_precision(cls, bundle, options: RunnerOptions) -> str | None:
        """A remote backend: the precision its server runs ``bundle`` at (asked when none was given). Local: None."""
        return None
