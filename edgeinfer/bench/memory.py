"""Memory probes for ``edgeinfer bench``: peak resident memory per row, and GPU memory in use.

Peak RSS is Linux's ``VmHWM``, reset before each row through ``/proc/self/clear_refs``; where
that is not possible, ``getrusage``'s process-lifetime peak, which is never reset (the report
says which). GPU memory comes from cuda-python's ``cudaMemGetInfo`` when it is installed.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path


class PeakRss:
    """Peak resident set size of this process, reset per row where the kernel allows it."""

    def __init__(self) -> None:
        self.resettable = self._try_reset()
        self.method = ("VmHWM from /proc/self/status, reset before each row via /proc/self/clear_refs"
                       if self.resettable else
                       "resource.getrusage ru_maxrss: the process-lifetime peak, NOT reset between rows")

    @staticmethod
    def _status(key: str) -> float | None:
        try:
            m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        except OSError:
            return None
        return int(m.group(1)) / 1024 if m else None

    def _try_reset(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return self._status("VmHWM") is not None
        except OSError:
            return False

    def reset(self) -> None:
        if self.resettable:
            self._try_reset()

    def current_mb(self) -> float | None:
        return self._status("VmRSS")

    def peak_mb(self) -> float | None:
        if self.resettable:
            return self._status("VmHWM")
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        except (ImportError, OSError):
            return None
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def gpu_memory_used_mb() -> float | None:
    """Device-wide used memory on CUDA device 0 (cuda-python), or None without a GPU."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            if importlib.util.find_spec(name) is None:
                continue
            cudart = importlib.import_module(name)
            err, free, total = cudart.cudaMemGetInfo()
            if int(err) == 0:
                return (total - free) / 2**20
        except Exception:  # noqa: BLE001 - no driver, no device: no number
            return None
    return None
