"""The node's background loops (worker, outbox): one thread each, stopped and woken the same way."""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("edgeinfer.node")


class Loop:
    """Runs :meth:`step` in a thread until :meth:`stop`. A step that did work is followed by another at
    once; otherwise the loop waits ``interval`` seconds or until :meth:`wake`. An exception in a step
    is logged (its class only) and the loop goes on after ``interval``."""

    name = "edgeinfer-loop"
    interval = 0.5

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    #: what the loop is, for readiness ("the outbox is not running")
    what = "background loop"

    def not_ready(self) -> str | None:
        return None if self.alive else f"the {self.what} is not running"

    def step(self) -> bool:
        """One pass; True if it did work (and the next pass should come at once)."""
        raise NotImplementedError

    def on_stop(self) -> None:
        """Called in the loop's thread after its last pass (finish what must not be left half done)."""

    def next_wait(self) -> float:
        """Seconds to wait before the next pass when the last one did nothing (``interval`` unless a loop
        knows when its next work is due)."""
        return self.interval

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.step():
                    continue
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one failure
                log.error("%s pass failed (%s); going on", self.name, exc.__class__.__name__)
            self._wake.wait(self.next_wait())
            self._wake.clear()
        try:
            self.on_stop()
        except Exception as exc:  # noqa: BLE001
            log.error("%s: finishing failed (%s)", self.name, exc.__class__.__name__)
