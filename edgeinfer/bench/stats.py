"""Statistics for ``edgeinfer bench`` (pure): percentiles, latency summaries, run-to-run spread.

Also the two conversions every part of the report shares: nanoseconds to milliseconds, and
values made JSON-safe.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

_MS = 1e-6  # ns -> ms


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default).

    On the samples 1..100: p50 = 50.5, p90 = 90.1, p99 = 99.01.
    """
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return float("nan")
    return float(np.percentile(a, q))


def latency_stats(samples_ms: Sequence[float], batch: int = 1) -> dict:
    """Summary of per-call latencies in ms; throughput in images/s = batch x calls / time spent in calls."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    total_s = float(a.sum()) / 1e3
    return {"n": int(a.size), "min_ms": float(a.min()), "mean_ms": float(a.mean()), "std_ms": float(a.std()),
            "p50_ms": percentile(a, 50), "p90_ms": percentile(a, 90), "p95_ms": percentile(a, 95),
            "p99_ms": percentile(a, 99), "max_ms": float(a.max()),
            "throughput": (batch * a.size / total_s) if total_s > 0 else float("nan")}


def block_spread(block_p50s: Sequence[float]) -> dict:
    """Run-to-run spread: the range of the per-block medians, and that range relative to their median."""
    v = [float(x) for x in block_p50s if x is not None and math.isfinite(x)]
    if not v:
        return {"blocks": 0, "block_p50_ms": [], "min_ms": None, "max_ms": None, "rel": None}
    mid = float(np.median(v))
    return {"blocks": len(v), "block_p50_ms": v, "min_ms": min(v), "max_ms": max(v),
            "rel": (max(v) - min(v)) / mid if mid > 0 else None}


def no_difference(a: dict, b: dict) -> bool:
    """True when two spreads (from :func:`block_spread`) overlap: the difference is within the noise."""
    if not a or not b or a.get("min_ms") is None or b.get("min_ms") is None:
        return True
    return not (a["max_ms"] < b["min_ms"] or b["max_ms"] < a["min_ms"])


def distribution(samples_ms: Sequence[float], points: int = 101) -> list[float]:
    """Quantiles 0, 1, ..., 100 % of the samples: enough to redraw the distribution from the JSON."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return []
    return [round(float(x), 5) for x in np.percentile(a, np.linspace(0, 100, points))]


def split(total: int, parts: int) -> list[int]:
    """``total`` iterations over ``parts`` blocks, as evenly as possible, each at least 1."""
    base, extra = divmod(max(int(total), parts), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _ms(ns: int) -> float:
    return ns * _MS


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return float(f"{x:.6g}") if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    return x
