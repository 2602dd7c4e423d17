"""Keeping library chatter inside the DICOM boundary.

pydicom and the decoder plugins echo header values (patient data among them) in warnings
and log records. Everything in :mod:`edgeinfer.dicomio` that touches a library runs
inside ``_library_quiet()``: warnings are recorded and dropped, and records from the
pydicom/plugin loggers are dropped while the current thread is inside the boundary.
"""
from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pydicom.pixels  # noqa: F401  (creates the decoder loggers we quieten)

# --- keeping library chatter (which may echo header values) inside the boundary -------
_quiet_state = threading.local()
_LIBRARY_LOGGER_PREFIXES = ("pydicom", "pylibjpeg", "libjpeg", "openjpeg", "rle", "PIL", "gdcm", "jpeg_ls", "jpegls")
_filtered_loggers: set[str] = set()
_filter_lock = threading.Lock()
_seen_logger_count = -1


class _DropInsideBoundary(logging.Filter):
    """Drops library log records emitted by a thread that is inside ``_library_quiet``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet_state, "depth", 0)


_DROP_FILTER = _DropInsideBoundary()


def _install_logger_filters() -> None:
    global _seen_logger_count
    manager = logging.Logger.manager
    if len(manager.loggerDict) == _seen_logger_count:
        return
    with _filter_lock:
        names = [n for n in list(manager.loggerDict) if n.split(".")[0] in _LIBRARY_LOGGER_PREFIXES]
        for name in names:
            if name not in _filtered_loggers:
                logging.getLogger(name).addFilter(_DROP_FILTER)
                _filtered_loggers.add(name)
        _seen_logger_count = len(manager.loggerDict)


for _name in ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils"):
    logging.getLogger(_name)
_install_logger_filters()


#: ``warnings.catch_warnings`` swaps process-wide state (the filter list and the function that shows
#: a warning) on entry and puts back what it saw on exit; two threads interleaving those swaps can
#: leave a warning shown (with a patient's value in it) while a boundary is open. So the boundary
#: is held by one thread at a time (re-entrant for nesting in the same thread), and while no
#: thread holds it the warning state is the process's own.
_boundary_lock = threading.Lock()
_held = threading.local()  # .stack: [catch_warnings, caught] for each boundary this thread is inside


def _stack() -> list:
    if not hasattr(_held, "stack"):
        _held.stack = []
    return _held.stack


def _record_into(caught: list) -> warnings.catch_warnings:
    """Enter a catch_warnings whose every warning is appended to ``caught`` (and not shown)."""
    cm = warnings.catch_warnings()
    cm.__enter__()
    warnings.simplefilter("always")
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: caught.append(
        warnings.WarningMessage(message, category, filename, lineno, file, line))
    return cm


@contextmanager
def _library_quiet() -> Iterator[list[warnings.WarningMessage]]:
    """Record (and drop) every warning and drop library log records in this block (one thread at a time)."""
    stack = _stack()
    if not stack:
        _boundary_lock.acquire()
    try:
        with _logs_quiet():
            caught: list[warnings.WarningMessage] = []
            entry = [_record_into(caught), caught]
            stack.append(entry)
            try:
                yield caught
            finally:
                stack.pop()
                entry[0].__exit__(None, None, None)
    finally:
        if not stack:
            _boundary_lock.release()


@contextmanager
def _outside_boundary() -> Iterator[None]:
    """Let other threads into the boundary while this one runs a call that neither warns nor logs and
    releases the GIL (a codec's decode), so that the intake's threads decode at the same time.

    This thread's warning state is put back as the process had it before the boundary is let go,
    and recorded again, into the same lists, once the boundary is held again: whoever holds the
    boundary has its own state installed, and nobody else's. In between, the thread is outside
    every boundary (one it entered there would wait its turn like any other thread's). Outside any
    boundary this does nothing.
    """
    stack = _stack()
    if not stack:
        yield
        return
    for entry in reversed(stack):
        entry[0].__exit__(None, None, None)
    _held.stack = []
    _boundary_lock.release()
    try:
        yield
    finally:
        _boundary_lock.acquire()
        _held.stack = stack
        for entry in stack:
            entry[0] = _record_into(entry[1])


@contextmanager
def _logs_quiet() -> Iterator[None]:
    """Drop library log records emitted by this thread in this block; warnings are left to the
    process-wide filters. For threads that must not wait for the boundary (the node's receiver),
    in a process that ignores library warnings altogether (``edgeinfer serve`` does)."""
    _install_logger_filters()
    _quiet_state.depth = getattr(_quiet_state, "depth", 0) + 1
    try:
        yield
    finally:
        _quiet_state.depth -= 1
        _install_logger_filters()  # loggers created inside the block (lazy plugin imports)
