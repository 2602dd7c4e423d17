"""edgeinfer.bench.stats: percentiles, latency summaries, spread. Pure: no model, no clock."""
from __future__ import annotations

import numpy as np
import pytest

from edgeinfer import bench


def test_percentiles_on_known_samples():
    s = list(range(1, 101))
    assert bench.percentile(s, 50) == pytest.approx(50.5)
    assert bench.percentile(s, 90) == pytest.approx(90.1)
    assert bench.percentile(s, 95) == pytest.approx(95.05)
    assert bench.percentile(s, 99) == pytest.approx(99.01)
    assert bench.percentile([7.0], 99) == 7.0
    assert np.isnan(bench.percentile([], 50))


def test_latency_stats_and_throughput():
    st = bench.latency_stats([4.0, 1.0, 3.0, 2.0], batch=2)
    assert (st["min_ms"], st["max_ms"], st["mean_ms"], st["p50_ms"], st["n"]) == (1.0, 4.0, 2.5, 2.5, 4)
    # 2 images x 4 calls in 10 ms of calls = 800 images/s
    assert st["throughput"] == pytest.approx(800.0)
    assert set(st) >= {"p90_ms", "p95_ms", "p99_ms", "std_ms"}
    assert bench.latency_stats([]) == {"n": 0}


def test_spread_and_no_difference():
    a = bench.block_spread([10.0, 11.0, 10.5])
    assert (a["min_ms"], a["max_ms"], a["blocks"]) == (10.0, 11.0, 3)
    assert a["rel"] == pytest.approx(1.0 / 10.5)
    assert bench.no_difference(a, bench.block_spread([10.9, 12.0]))      # overlap: within the noise
    assert not bench.no_difference(a, bench.block_spread([11.2, 12.0]))  # disjoint: a real difference
    assert bench.no_difference(a, bench.block_spread([]))                # unknown spread: never claim one


def test_split_and_distribution():
    assert bench.split(10, 3) == [4, 3, 3]
    assert bench.split(2, 5) == [1, 1, 1, 1, 1]  # every block gets a call
    d = bench.distribution(list(range(1, 101)))
    assert len(d) == 101 and d[0] == 1 and d[-1] == 100 and d[50] == pytest.approx(50.5)
