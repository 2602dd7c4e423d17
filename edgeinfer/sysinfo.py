"""What machine a measurement was taken on: CPU model and flags, cores, GPU, library versions, threads.

Standard library only, read from ``/proc`` and ``/sys`` on Linux (x86 and Jetson), with
``platform`` as the fallback elsewhere. Library versions come from package metadata, so
nothing heavy (openvino, tensorrt, torch) is imported to learn its version. Benchmarks put
:func:`machine_info` into every report: a number without its machine cannot be compared.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

#: CPU flags that decide which precision runs fast (Linux /proc/cpuinfo names)
FLAGS_X86 = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8")
#: the same for ARM (Jetson): NEON, dot product, half precision
FLAGS_ARM = ("asimd", "asimddp", "fphp", "asimdhp", "bf16", "i8mm", "sve")
FLAGS_OF_INTEREST = FLAGS_X86 + FLAGS_ARM
#: distributions whose versions a report states (metadata only; nothing is imported)
LIBRARIES = ("edgeinfer", "numpy", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "tensorrt-cu12",
             "tensorrt-cu13", "tensorrt-lean-cu13", "tensorrt-dispatch-cu13", "cuda-python", "cuda-bindings",
             "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "imagecodecs", "pillow",
             "opencv-python-headless", "onnx", "matplotlib", "pytest-benchmark")
#: environment variables that change how many threads the libraries use
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "OV_CPU_THREADS_NUM", "ORT_INTRA_OP_NUM_THREADS", "OPENCV_FOR_THREADS_NUM", "OPJ_NUM_THREADS")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def parse_cpuinfo(text: str) -> dict:
    """``/proc/cpuinfo`` text -> model, flags of interest, physical cores and sockets (pure)."""
    model = None
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    sockets: set[str] = set()
    phys = core = None
    for line in text.splitlines() + [""]:
        if not line.strip():  # end of one processor block
            if phys is not None and core is not None:
                cores.add((phys, core))
            phys = core = None
            continue
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value
        elif key in ("flags", "features"):
            flags.update(value.split())
        elif key == "physical id":
            phys = value
            sockets.add(value)
        elif key == "core id":
            core = value
    wanted = FLAGS_X86 if "sse2" in flags else FLAGS_ARM if "asimd" in flags or "fp" in flags else ()
    return {"model": model, "flags": {f: (f in flags) for f in wanted},
            "physical_cores": len(cores) or None, "sockets": len(sockets) or None}


def _cgroup_cpus() -> float | None:
    """CPU limit of this container (cgroup v2 ``cpu.max``), if one is set."""
    text = _read("/sys/fs/cgroup/cpu.max").split()
    if len(text) == 2 and text[0] != "max":
        try:
            return round(int(text[0]) / int(text[1]), 2)
        except (ValueError, ZeroDivisionError):
            return None
    return None


def gpu_info() -> list[dict] | str:
    """NVIDIA GPUs seen by ``nvidia-smi``, the Jetson model, or ``"none"``."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
            rows = [r.split(", ") for r in out.stdout.strip().splitlines() if r.strip()]
            if out.returncode == 0 and rows:
                return [{"name": r[0], "memory": r[1] if len(r) > 1 else None,
                         "driver": r[2] if len(r) > 2 else None} for r in rows]
        except (OSError, subprocess.SubprocessError):
            pass
    tegra = _read("/etc/nv_tegra_release").strip()
    if tegra:
        return [{"name": _read("/proc/device-tree/model").strip("\x00\n ") or "NVIDIA Jetson",
                 "l4t": tegra.splitlines()[0]}]
    return "none"


def library_versions(names=LIBRARIES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: glibc's allocator settings for image-sized buffers (:func:`tune_allocator`): blocks up to 32 MiB
#: (the largest this threshold may be) come from the heap instead of their own mmap, and up to 128 MiB
#: of free heap is kept before it is handed back to the system
ALLOCATOR = {"mmap_threshold": 32 << 20, "trim_threshold": 128 << 20}
#: the operator's own allocator settings, which tune_allocator leaves alone
ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_ALLOCATOR_STATE: dict = {"tuned": False, "why": "not asked"}


def tune_allocator() -> dict:
    """Keep image-sized buffers in the process instead of mapping and unmapping them for every image.

    Every image passes through a few buffers of its own size (the file's bytes, a decoded frame,
    float work arrays): 10-40 MB for a detector image. glibc gives blocks above its mmap threshold
    their own mapping and unmaps them on free, and trims free heap above its trim threshold, so the
    next image faults every page in again (and the kernel zeroes each). glibc raises the threshold
    after such a free, but only as far as the sizes it has seen, so how much is faulted again depends
    on the order images come in. With :data:`ALLOCATOR` the blocks stay in the heap and are reused.
    Only on glibc, once per process, and never over the operator's own ``MALLOC_*`` or
    ``GLIBC_TUNABLES`` settings. Returns what was done (reports carry it).
    """
    if _ALLOCATOR_STATE["why"] != "not asked":
        return dict(_ALLOCATOR_STATE)
    own = [k for k in ALLOCATOR_ENV if k in os.environ]
    if own:
        _ALLOCATOR_STATE.update(why=f"left to the environment ({', '.join(own)})")
    elif platform.libc_ver()[0] != "glibc":
        _ALLOCATOR_STATE.update(why="not glibc")
    else:
        import ctypes

        try:
            mallopt = ctypes.CDLL(None).mallopt
            ok = (mallopt(_M_MMAP_THRESHOLD, ALLOCATOR["mmap_threshold"]) == 1
                  and mallopt(_M_TRIM_THRESHOLD, ALLOCATOR["trim_threshold"]) == 1)
        except (OSError, AttributeError):
            ok = False
        _ALLOCATOR_STATE.update(tuned=ok, why="mallopt" if ok else "mallopt refused the settings",
                                **(ALLOCATOR if ok else {}))
    return dict(_ALLOCATOR_STATE)


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict:
    """The ``machine`` block of a benchmark report."""
    cpu = parse_cpuinfo(_read("/proc/cpuinfo"))
    model = cpu["model"] or platform.processor() or platform.machine()
    mem = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo"))
    return {
        "cpu": {"model": model, "arch": platform.machine(), "flags": cpu["flags"],
                "logical_cpus": os.cpu_count(), "usable_cpus": usable_cpus(),
                "physical_cores": cpu["physical_cores"], "sockets": cpu["sockets"],
                "cgroup_cpu_limit": _cgroup_cpus()},
        "memory_gb": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "gpu": gpu_info(),
        "os": platform.platform(),
        "libraries": library_versions(),
        "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        "allocator": dict(_ALLOCATOR_STATE),
        "load_average_at_start": load_average(),
        "python_executable": sys.executable,
    }


def openvino_cpu_info() -> dict | None:
    """OpenVINO's view of the CPU (capabilities such as BF16, INT8), if openvino is importable."""
    try:
        import openvino as ov  # only called once the OpenVINO backend has been used
    except ImportError:
        return None
    try:
        core = ov.Core()
        return {"devices": list(core.available_devices),
                "cpu_name": core.get_property("CPU", "FULL_DEVICE_NAME"),
                "cpu_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))}
    except Exception as exc:  # noqa: BLE001 - informational only
        return {"error": str(exc)}


__all__ = ["machine_info", "parse_cpuinfo", "gpu_info", "library_versions", "usable_cpus", "load_average",
           "openvino_cpu_info", "tune_allocator", "FLAGS_OF_INTEREST"]
