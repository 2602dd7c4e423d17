"""CUDA and TensorRT plumbing shared by the TensorRT runner and ``edgeinfer build``.

Both sides of a TensorRT plan's life use the same few pieces: the lazily imported
``tensorrt`` and cuda-python runtime modules, the unpacking of cuda-python's
``(err, *values)`` results into a :class:`~edgeinfer.errors.CudaError`, the one
process-wide TensorRT logger, and :func:`device_info`, the description of this device
that :mod:`edgeinfer.trt_policy` checks plans against. The runner
(:mod:`edgeinfer.backends.tensorrt`) and the builder (``export/trt_build.py``) import them
from here.

Importing this module imports neither ``tensorrt`` nor ``cuda-python``: they load on the
first call of :func:`import_tensorrt` / :func:`import_cudart`.
"""
from __future__ import annotations

import importlib
import logging
import platform as _platform
import sys

from .._lazy import lazy_import
from ..errors import BackendUnavailable, CudaError

#: TensorRT's own messages are forwarded to this logger (by the runner and the builder alike)
log = logging.getLogger("edgeinfer.tensorrt")


# --- lazy imports -------------------------------------------------------------------------------
def import_tensorrt(purpose: str = "the TensorRT backend"):
    """The ``tensorrt`` module; MissingDependency naming the ``trt`` extra and ``purpose`` if absent."""
    return lazy_import("tensorrt", extra="trt", purpose=purpose)


def import_cudart():
    """cuda-python's runtime API: ``cuda.bindings.runtime`` (cuda-python >= 12.6), else the older ``cuda.cudart``."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        pass
    return lazy_import("cuda.cudart", extra="trt", purpose="the TensorRT backend (cuda-python)")


# --- error checking -------------------------------------------------------------------------------
def check(result, what: str, cudart=None):
    """Unpack a cuda-python ``(err, *values)`` tuple; raise CudaError naming the call on failure."""
    if not isinstance(result, tuple):
        result = (result,)
    err, rest = result[0], result[1:]
    code = int(getattr(err, "value", err))
    if code != 0:
        name = str(err)
        if cudart is not None:
            try:
                name = cudart.cudaGetErrorName(err)[1]
                name = name.decode() if isinstance(name, bytes) else str(name)
            except Exception:  # noqa: BLE001 - the name is only decoration
                pass
        raise CudaError(f"{what} failed: CUDA error {code} ({name})")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


# --- the TensorRT logger ----------------------------------------------------------------------------
#: one logger per tensorrt module: TensorRT keeps the first logger it is given process-wide and
#: ignores (with a warning) any different one passed to a later Builder or Runtime
_LOGGERS: dict[int, tuple[object, object]] = {}


def make_logger(trt):
    """The process-wide TensorRT logger: forwards to Python logging and keeps recent errors.

    Callers clear ``logger.errors`` before an operation and quote it when the operation fails.
    """
    hit = _LOGGERS.get(id(trt))
    if hit is not None and hit[0] is trt:
        return hit[1]

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)  # required by the pybind trampoline
            self.errors: list[str] = []

        def log(self, severity, msg):
            sev = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
            if sev <= 1:
                self.errors.append(str(msg))
                del self.errors[:-50]
                log.error("TensorRT: %s", msg)
            elif sev == 2:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    logger = _Logger()
    _LOGGERS[id(trt)] = (trt, logger)
    return logger


# --- this device ------------------------------------------------------------------------------------
def platform_tag() -> str:
    """``linux-aarch64``, ``linux-x86_64``...: the ``platform`` of device_info and compatibility records."""
    return f"{sys.platform}-{_platform.machine().lower()}"


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def device_info(device_id: int = 0) -> dict:
    """What this device offers a TensorRT plan (the ``device`` argument of trt_policy checks).

    The runner checks plans against it before deserializing them; the builder records it
    in the plan's compatibility record. Keys: tensorrt_version, cuda_version (runtime),
    cuda_driver_version, gpu_name, compute_capability ("8.7"), integrated (Jetson),
    dla_cores, platform, device_id.
    """
    trt = import_tensorrt()
    cudart = import_cudart()
    count = check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount", cudart)
    if not count:
        raise BackendUnavailable("no CUDA GPU found (cudaGetDeviceCount returned 0)")
    if not 0 <= device_id < count:
        raise BackendUnavailable(f"CUDA device {device_id} asked, this machine has {count} (0..{count - 1})")
    check(cudart.cudaSetDevice(device_id), "cudaSetDevice", cudart)
    prop = check(cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties", cudart)
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace")
    runtime_v = check(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion", cudart)
    driver_v = check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion", cudart)
    try:
        dla = int(trt.Runtime(make_logger(trt)).num_DLA_cores)
    except Exception:  # noqa: BLE001 - no DLA API / no DLA: report none
        dla = 0
    return {
        "tensorrt_version": str(trt.__version__),
        "cuda_version": _cuda_version(int(runtime_v)),
        "cuda_driver_version": _cuda_version(int(driver_v)),
        "gpu_name": str(name).strip(),
        "compute_capability": f"{prop.major}.{prop.minor}",
        "integrated": bool(getattr(prop, "integrated", False)),
        "dla_cores": dla,
        "platform": platform_tag(),
        "device_id": device_id,
    }


__all__ = ["import_tensorrt", "import_cudart", "check", "make_logger", "device_info", "platform_tag"]
