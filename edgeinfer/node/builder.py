"""Where the node builds the objects it files into PACS (the SR, and what else ``results`` names).

Building an SR is pure Python (highdicom and pydicom: tens of milliseconds a study on a small CPU), and in
the node's own process it would hold the interpreter lock that receiving and sending need too. With
``result_processes`` (default 1) it runs in a spawned process of its own: the worker hands a study's
result over and scores the next study meanwhile, and receiving goes on beside both, so a node on two cores
uses both. With 0 it runs in the worker's thread, as one step after scoring.

What travels to the process is what a writer needs and nothing it could act on: the study record, the
source headers kept at receive time (bytes), the bundle summary, the run record and the version; what
comes back is the objects (SOP Instance UID, Part 10 bytes). A builder process that dies while building
(a library crash) is replaced and the study tried once more in the fresh one; if that one dies too the
study gets no result object (an SRError: a human read, counted as a study without an SR). A build that
takes longer than ``timeout`` is abandoned the same way.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor, TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Sequence

from ..errors import EdgeInferError, SRError

log = logging.getLogger("edgeinfer.node")


def build_results(names: Sequence[str], study: dict, kept: Sequence[tuple[str, bytes | None]], *, bundle: dict,
                  run: dict, version: int) -> list:
    """Every result object of one study version, from the headers kept at receive time (``(path, header
    bytes or None)`` per instance; None: read the start of the spool file). SRError when no header can be read."""
    from ..dicomout import source_header, write_results

    sources = [ds for ds in (source_header(p, header) for p, header in kept) if ds is not None]
    if not sources:
        raise SRError(f"no header of the study's {len(kept)} instance(s) could be read")
    return write_results(names, study, sources, bundle=bundle, run=run, version=version)


def _exit_with_parent() -> None:
    """In the builder process: leave when the node does, however it ended (a SIGKILL of the node must
    not leave a builder behind)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        parent.join()
        os._exit(0)

    threading.Thread(target=watch, name="edgeinfer-builder-parent-watch", daemon=True).start()


def _warm() -> None:
    """Import what a build needs, so the first study does not pay for it."""
    import highdicom  # noqa: F401

    from .. import dicomout  # noqa: F401


class ResultBuilder:
    """``submit(...)`` -> a Future of the objects; ``result(future, ...)`` waits for one within ``timeout`` and
    turns a dead or stuck process into an SRError (after one retry in a fresh process)."""

    name = "result builder"

    def __init__(self, processes: int = 1, timeout: float = 120.0):
        self.processes, self.timeout = int(processes), float(timeout)
        self._executor: ProcessPoolExecutor | None = None

    def start(self) -> "ResultBuilder":
        """Start the process (and import highdicom in it) now rather than at the first study."""
        if self.processes > 0:
            self._executor = self._new()
            self._executor.submit(_warm).result(timeout=max(self.timeout, 60.0))
        return self

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_exit_with_parent)

    def submit(self, names, study: dict, kept, *, bundle: dict, run: dict, version: int) -> Future:
        args = (tuple(names), study, list(kept))
        kw = dict(bundle=bundle, run=run, version=version)
        if self.processes <= 0:
            done: Future = Future()
            try:
                done.set_result(build_results(*args, **kw))
            except BaseException as exc:  # noqa: BLE001 - handed to result() like a process's failure
                done.set_exception(exc)
            done.retry = None
            return done
        if self._executor is None:
            self._executor = self._new()
        try:
            future = self._executor.submit(build_results, *args, **kw)
        except (BrokenProcessPool, RuntimeError):   # died while idle (killed from outside): start afresh
            self.restart()
            future = self._executor.submit(build_results, *args, **kw)
        future.retry = (args, kw)
        return future

    def result(self, future: Future, study_uid: str) -> list:
        """The objects of ``future``; SRError if they cannot be built (the message names no data value)."""
        try:
            return future.result(timeout=self.timeout)
        except EdgeInferError:
            raise
        except FutureTimeout:
            log.error("study %s: building its result took longer than %.0f s; the builder process is replaced",
                      study_uid, self.timeout)
            self.restart()
            raise SRError(f"building the result took longer than {self.timeout:.0f} s") from None
        except BrokenProcessPool:
            retry = getattr(future, "retry", None)
            log.error("study %s: the result builder process died while building its result; trying once more in "
                      "a fresh one", study_uid)
            self.restart()
            if retry is not None:
                try:
                    return self._executor.submit(build_results, *retry[0], **retry[1]).result(timeout=self.timeout)
                except EdgeInferError:
                    raise
                except (BrokenProcessPool, FutureTimeout):
                    self.restart()
            raise SRError("the result builder process died while building this study's result, twice") from None
        except Exception as exc:  # noqa: BLE001 - e.g. MemoryError in the builder: the class only
            raise SRError(f"building the result failed ({exc.__class__.__name__})") from None

    def restart(self) -> None:
        old, self._executor = self._executor, None
        if old is not None:
            for proc in list(getattr(old, "_processes", {}).values()):   # a stuck build: nothing else stops it
                proc.terminate()
            old.shutdown(wait=False, cancel_futures=True)
        if self.processes > 0:
            self._executor = self._new()

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def not_ready(self) -> str | None:
        return None
