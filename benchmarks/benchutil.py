"""Settings shared by the benchmark suites (read from the environment; see benchmarks/README.md)."""
from __future__ import annotations

import os


def threads() -> int | None:
    """EDGEINFER_BENCH_THREADS (0 = each backend's default), else the CPUs this process may use."""
    from edgeinfer.sysinfo import usable_cpus

    value = os.environ.get("EDGEINFER_BENCH_THREADS")
    if value:
        return int(value) or None
    return usable_cpus()


def bundle_paths() -> list[str | None]:
    """EDGEINFER_BENCH_BUNDLES as a list; None stands for the embedded phantom bundle."""
    value = os.environ.get("EDGEINFER_BENCH_BUNDLES", "").strip()
    return [p.strip() for p in value.split(",") if p.strip()] if value else [None]


def batches() -> list[int]:
    return [int(x) for x in os.environ.get("EDGEINFER_BENCH_BATCHES", "1,4").split(",") if x.strip()]
