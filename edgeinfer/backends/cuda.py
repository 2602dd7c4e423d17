"""CUDA and TensorRT plumbing shared by the TensorRT runner and ``edgeinfer build``.

Both sides of a TensorRT plan's life use the same few pieces: the lazily imported
``tensorrt`` and cuda-python runtime modules, the unpacking of cuda-python's
``(err, *values)`` results into a :class:`~edgeinfer.errors.CudaError`, the one
process-wide TensorRT logger, and :func:`device_info`, the description of this device
that :mod:`edgeinfer.trt_policy` checks plans against. The runner
(:mod:`edgeinfer.backends.tensorrt`) and the builder (``export/trt_build.py``) import them
from here.

Three TensorRT runtimes can run a plan. The full ``tensorrt`` package (builder and runtime,
1 GB and more), the *dispatch* runtime ``tensorrt_dispatch`` and the *lean* runtime
``tensorrt_lean`` (44 MB, no builder): the last two run only version-compatible plans, which
is what a device image wants. :func:`import_trt_runtime` takes the first of them installed,
in that order, and says which; the builder needs the full package (:func:`import_tensorrt`).

The CUDA major a TensorRT build targets (cu12, cu13) comes from its installed distribution
(:func:`tensorrt_cuda_major`), not from cuda-python: cuda-bindings links its CUDA runtime
statically, so ``cudaRuntimeGetVersion`` reports cuda-python's own CUDA whatever TensorRT or
the driver is. That value is kept as information only (``cuda_python``).

Importing this module imports neither ``tensorrt`` nor ``cuda-python``: they load on the
first call of :func:`import_tensorrt` / :func:`import_trt_runtime` / :func:`import_cudart`.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import platform as _platform
import re
import sys
from typing import Iterable

from .._lazy import lazy_import
from ..errors import BackendUnavailable, CudaError, MissingDependency

#: TensorRT's own messages are forwarded to this logger (by the runner and the builder alike)
log = logging.getLogger("edgeinfer.tensorrt")


# --- lazy imports -------------------------------------------------------------------------------
#: the TensorRT runtimes a plan can run on, in the order they are tried: the full package,
#: the dispatch runtime, the lean runtime (the last two run version-compatible plans only)
RUNTIMES = ("tensorrt", "tensorrt_dispatch", "tensorrt_lean")
#: runtimes that deserialize only version-compatible plans
LEAN_RUNTIMES = ("tensorrt_dispatch", "tensorrt_lean")
_RUNTIME_INSTALL = ("pip install 'edgeinfer[trt]' (CUDA 12, builder and runtime), 'edgeinfer[trt-cu13]', or "
                    "'edgeinfer[trt-lean]' (the 44 MB lean runtime, version-compatible plans only); "
                    "on Jetson, TensorRT comes with JetPack")


def import_tensorrt(purpose: str = "the TensorRT backend"):
    """The full ``tensorrt`` module (the builder needs it); MissingDependency naming the extra if absent."""
    return lazy_import("tensorrt", extra="trt", purpose=purpose)


def import_trt_runtime(names: Iterable[str] = RUNTIMES):
    """``(module, name)``: the first TensorRT runtime of ``names`` that imports.

    ``tensorrt``, else ``tensorrt_dispatch``, else ``tensorrt_lean``. MissingDependency lists
    why each one failed when none imports.
    """
    why = []
    for name in names:
        try:
            return importlib.import_module(name), name
        except ImportError as exc:  # absent, or present but its libraries are missing
            why.append(f"{name}: {exc.__class__.__name__}: {exc}")
        except OSError as exc:      # a library that loads but fails (wrong architecture, ...)
            why.append(f"{name}: {exc}")
    raise MissingDependency("no TensorRT runtime could be imported (" + "; ".join(why) + "). Install one: "
                            + _RUNTIME_INSTALL)


#: tensorrt-cu12, tensorrt_cu13_libs, tensorrt-lean-cu13-bindings, tensorrt-dispatch-cu12 ...
_TRT_DIST = re.compile(r"^tensorrt(?:[-_.](lean|dispatch))?[-_.]cu(\d+)(?:[-_.](?:libs|bindings))?$")


def tensorrt_cuda_major(distributions: Iterable[str], runtime: str = "tensorrt") -> str | None:
    """The CUDA major (``"12"``, ``"13"``) of the TensorRT ``runtime`` among installed distribution names.

    Pure: pass the names (``importlib.metadata``'s). None when no name says it (JetPack's
    Debian packages, a wheel without a ``cuXX`` suffix) or when two CUDA majors of that
    runtime are installed side by side (then nobody can tell which one Python imports).
    """
    flavour = {"tensorrt": None, "tensorrt_dispatch": "dispatch", "tensorrt_lean": "lean"}.get(runtime)
    majors = set()
    for name in distributions:
        m = _TRT_DIST.match(str(name).strip().lower())
        if m and m.group(1) == flavour:
            majors.add(m.group(2))
    return majors.pop() if len(majors) == 1 else None


def installed_distributions() -> list[str]:
    """Names of the installed Python distributions (for :func:`tensorrt_cuda_major`)."""
    out = []
    for d in importlib.metadata.distributions():
        try:
            name = d.metadata["Name"]
        except Exception:  # noqa: BLE001 - a broken dist-info folder: skip it
            continue
        if name:
            out.append(str(name))
    return out


def find_lean_library() -> str | None:
    """Path of TensorRT's lean runtime library (``libnvinfer_lean.so*``), or None.

    Needed to run a plan built without its lean runtime (EXCLUDE_LEAN_RUNTIME) on the full
    ``tensorrt`` runtime: ``Runtime.load_runtime(path)`` gives the runtime that deserializes
    it. Looked for in the wheels' library folders, then on the loader's path.
    """
    import ctypes.util
    import glob
    import os

    for pkg in ("tensorrt_libs", "tensorrt_lean_libs"):
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        for folder in (spec.submodule_search_locations or []) if spec else []:
            hits = sorted(glob.glob(os.path.join(folder, "libnvinfer_lean.so*")))
            if hits:
                return hits[0]
    return ctypes.util.find_library("nvinfer_lean")


def load_lean_runtime(runtime, logger=None):
    """``runtime.load_runtime(find_lean_library())``: the runtime that deserializes a plan built without
    its lean runtime (EXCLUDE_LEAN_RUNTIME) on the full ``tensorrt``. BackendUnavailable saying why
    when there is no such library or TensorRT cannot load it (``logger``: the TensorRT logger whose
    recent errors are quoted)."""
    lean = find_lean_library()
    if lean is None:
        raise BackendUnavailable("no libnvinfer_lean library was found here; install the lean runtime of the same "
                                 "TensorRT version (the trt-lean extra)")
    loaded = runtime.load_runtime(lean)
    if loaded is None:
        errors = "; ".join(getattr(logger, "errors", [])[-3:]) or "no reason given"
        raise BackendUnavailable(f"TensorRT could not load the lean runtime {lean}: {errors}")
    return loaded


def cuda_python_version() -> str | None:
    """The installed cuda-python / cuda-bindings version, or None."""
    from ..sysinfo import library_versions

    found = library_versions(("cuda-bindings", "cuda-python"))
    return found.get("cuda-bindings") or found.get("cuda-python")


def import_cudart():
    """cuda-python's runtime API: ``cuda.bindings.runtime`` (cuda-python >= 12.6), else the older ``cuda.cudart``."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        pass
    return lazy_import("cuda.cudart", extra="trt", purpose="the TensorRT backend (cuda-python)")


# --- pinned host memory ---------------------------------------------------------------------------
def pinned_view(ptr: int, nbytes: int):
    """A uint8 NumPy view over ``nbytes`` of host memory at ``ptr`` (a pinned buffer from cudaMallocHost)."""
    import ctypes

    import numpy as np

    buf = (ctypes.c_ubyte * nbytes).from_address(ptr)
    return np.ctypeslib.as_array(buf)


class PinnedBuffer:
    """Page-locked host memory (``cudaMallocHost``) seen as a NumPy array.

    Copies between pinned memory and the device run at the link's full rate, and a
    ``cudaMemcpy`` from it returns only when the copy is done; pageable memory is first
    copied by the driver into a staging buffer of its own. :meth:`free` releases it (also
    from ``__del__``); a freed buffer's array must not be used again.
    """

    def __init__(self, shape, dtype, cudart=None):
        import numpy as np

        self.cudart = cudart or import_cudart()
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)
        self.nbytes = max(1, int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize)
        self.ptr = int(check(self.cudart.cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes})", self.cudart))
        self.array = pinned_view(self.ptr, self.nbytes)[:self.nbytes].view(self.dtype).reshape(self.shape)

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr, self.array = self.ptr, 0, None
            check(self.cudart.cudaFreeHost(ptr), "cudaFreeHost", self.cudart)

    def __del__(self):
        try:
            self.free()
        except Exception:  # noqa: BLE001 - interpreter shutdown, driver gone: nothing left to do
            pass


def memcpy(cudart, dst: int, src: int, nbytes: int, kind: str) -> None:
    """Synchronous ``cudaMemcpy`` of ``nbytes``; ``kind`` is ``"h2d"`` or ``"d2h"``."""
    k = cudart.cudaMemcpyKind
    kinds = {"h2d": k.cudaMemcpyHostToDevice, "d2h": k.cudaMemcpyDeviceToHost}
    check(cudart.cudaMemcpy(dst, src, nbytes, kinds[kind]), f"cudaMemcpy {kind.upper()} ({nbytes} bytes)", cudart)


# --- error checking -------------------------------------------------------------------------------
#: cudaErrorInsufficientDriver: the CUDA runtime (here cuda-python's, linked statically) is newer
#: than the driver supports
INSUFFICIENT_DRIVER = 35


def driver_mismatch_hint(cuda_python: str | None, driver_cuda: str | None) -> str:
    """What to do when cuda-python's CUDA is newer than the driver (pure; both versions optional)."""
    have = f"cuda-python {cuda_python}" if cuda_python else "the installed cuda-python"
    drv = f"this driver supports CUDA {driver_cuda}" if driver_cuda else "this driver is older"
    cu = (cuda_python or "").split(".")[0]
    need = ""
    if cu.isdigit():
        need = f" (cuda-python {cu}.x needs a driver for CUDA {cu}.x" + ("; that is r580 or newer)" if cu == "13" else ")")
    return (f"{have} is built for a newer CUDA than the NVIDIA driver: {drv}{need}. Install the cuda-python that "
            "matches the driver (CUDA 12 drivers, JetPack 6 included: pip install 'cuda-python>=12.6,<13', which "
            "the 'trt' extra pins), or upgrade the driver")


def check(result, what: str, cudart=None):
    """Unpack a cuda-python ``(err, *values)`` tuple; raise CudaError naming the call on failure.

    The error's ``code`` attribute is CUDA's error number; an insufficient driver is explained
    (:func:`driver_mismatch_hint`).
    """
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
        message = f"{what} failed: CUDA error {code} ({name})"
        if code == INSUFFICIENT_DRIVER:
            driver = None
            if cudart is not None:
                try:
                    e2, v = cudart.cudaDriverGetVersion()
                    driver = _cuda_version(int(v)) if int(getattr(e2, "value", e2)) == 0 and int(v) else None
                except Exception:  # noqa: BLE001 - only decoration
                    pass
            message += ": " + driver_mismatch_hint(cuda_python_version(), driver)
        error = CudaError(message)
        error.code = code
        raise error
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


def gpu_count() -> int:
    """CUDA devices cuda-python sees here; CudaError (an insufficient driver explained) or
    MissingDependency when it cannot tell. The one GPU probe: the runner, ``make test-gpu``
    and ``deploy/gpu-smoke.sh`` all ask it, never ``nvidia-smi``."""
    cudart = import_cudart()
    return int(check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount", cudart))


def device_info(device_id: int = 0, runtime: tuple | None = None) -> dict:
    """What this device offers a TensorRT plan (the ``device`` argument of trt_policy checks).

    The runner checks plans against it before deserializing them; the builder records it
    in the plan's compatibility record. ``runtime`` is ``(module, name)`` as from
    :func:`import_trt_runtime` (the default: the first one installed). Keys: tensorrt_version,
    tensorrt_runtime (tensorrt | tensorrt_dispatch | tensorrt_lean), tensorrt_cuda (the CUDA
    major of the TensorRT build, from its distribution; None when unknown), cuda_python
    (cuda-python's own CUDA runtime version: information only), cuda_driver_version,
    gpu_name, compute_capability ("8.7"), integrated (Jetson), dla_cores, platform, device_id.
    """
    trt, runtime_name = runtime or import_trt_runtime()
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
        "tensorrt_runtime": runtime_name,
        "tensorrt_cuda": tensorrt_cuda_major(installed_distributions(), runtime_name),
        "cuda_python": _cuda_version(int(runtime_v)),
        "cuda_driver_version": _cuda_version(int(driver_v)),
        "gpu_name": str(name).strip(),
        "compute_capability": f"{prop.major}.{prop.minor}",
        "integrated": bool(getattr(prop, "integrated", False)),
        "dla_cores": dla,
        "platform": platform_tag(),
        "device_id": device_id,
    }


__all__ = ["RUNTIMES", "LEAN_RUNTIMES", "import_tensorrt", "import_trt_runtime", "import_cudart", "check",
           "make_logger", "device_info", "gpu_count", "platform_tag", "tensorrt_cuda_major", "installed_distributions",
           "cuda_python_version", "driver_mismatch_hint", "INSUFFICIENT_DRIVER", "find_lean_library",
           "load_lean_runtime", "pinned_view", "PinnedBuffer", "memcpy"]
