"""The model the node runs: its bundle, the runner chosen for this machine, the intake's worker processes, and
the watchdog's replacement of a runner that hung. The worker holds one of these; nothing else loads models."""
from __future__ import annotations

import logging
import threading

from ..errors import UsageError

log = logging.getLogger("edgeinfer.node")


class ModelHost:
    """``runner()`` loads the model on first use (autoselect: the fastest mode the bundle's gate passed, or the
    pinned one), ``replace_runner()`` loads a fresh one after a hung inference, ``not_ready()`` says why the
    model cannot score now."""

    name = "model"

    def __init__(self, config, bundle):
        self.config, self.bundle = config, bundle
        self._runner = None
        self._lock = threading.Lock()
        self.selection = None
        #: inference threads the watchdog could not interrupt (a backend without cancellation)
        self.abandoned: list[threading.Thread] = []
        #: the intake's worker processes (``intake_processes``), started once and kept for every study
        self.intake_pool = None

    def runner(self):
        with self._lock:
            if self._runner is None:
                from .. import autoselect

                c = self.config
                backend, extra = c.inference_backend()
                precision = None if c.precision in (None, "auto") else c.precision
                self.selection = autoselect.choose(self.bundle, threads=c.threads, device=c.device, backend=backend,
                                                   precision=precision, extra=extra)
                self._runner = self.selection.create_runner().activate()
                log.info("model %s %s ready on %s %s", self.bundle.name, self.bundle.version,
                         self.selection.backend, self.selection.precision)
            return self._runner

    def current_runner(self):
        return self._runner

    def replace_runner(self) -> None:
        """After a hung inference: drop the runner (its thread may never return) and load a fresh one now,
        so /readyz stays true and the next study does not wait for a model load."""
        with self._lock:
            self._runner = None
        try:
            self.runner()
        except Exception as exc:  # noqa: BLE001 - /readyz says "model not loaded"; the next study retries
            log.error("could not load a fresh runner (%s)", exc.__class__.__name__)

    def start_intake(self) -> None:
        """The intake's worker processes (``intake_processes``), when asked for; UsageError if they cannot start."""
        if not self.config.intake_processes or self.bundle.manifest.get("task") == "segmentation":
            return      # a volume is read series by series in the worker (edgeinfer/volume_triage.py)
        from ..intake import Intake

        self.intake_pool = Intake.for_bundle(self.bundle).pool(self.config.intake_processes, processes=True)
        try:
            self.intake_pool.warm()
        except Exception as exc:  # noqa: BLE001 - a start-up problem of this machine, said as such
            raise UsageError(f"could not start {self.config.intake_processes} intake worker process(es) "
                             f"({exc.__class__.__name__}: {exc}); run without --intake-processes") from None

    def stop(self) -> None:
        if self.intake_pool is not None:
            self.intake_pool.shutdown()

    def not_ready(self) -> str | None:
        return "the model is not loaded" if self._runner is None else None

    def unreachable(self) -> str | None:
        """Why the model's server cannot be reached now (a remote runner), else None."""
        r = self._runner
        return r.unreachable() if r is not None else None

    def model_record(self) -> dict:
        sel = self.selection
        return {"bundle": self.bundle.name, "bundle_version": self.bundle.version,
                "precision": sel.precision if sel else None, "backend": sel.backend if sel else None}

    def run_record(self) -> dict:
        r = self._runner
        return (r.report().as_dict() if r is not None else {}) | (
            {"selection": self.selection.as_dict()} if self.selection else {})
