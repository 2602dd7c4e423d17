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
#: is held by one thread at a time (re-entrant for nesting in the same thread).
_boundary_lock = threading.RLock()


@contextmanager
def _library_quiet() -> Iterator[list[warnings.WarningMessage]]:
    """Record (and drop) every warning and drop library log records in this block (one thread at a time)."""
    with _boundary_lock, _logs_quiet(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


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
