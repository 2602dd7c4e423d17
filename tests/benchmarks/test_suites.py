"""The pytest-benchmark suites in benchmarks/ stay out of the normal test run, and they run."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib

from helpers import ROOT


def test_normal_test_run_does_not_collect_benchmarks():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert cfg["testpaths"] == ["tests"]  # `python -m pytest` collects tests/ only
    suites = {p.name for p in (ROOT / "benchmarks").glob("test_*.py")}
    assert {"test_bench_inference.py", "test_bench_preprocess.py"} <= suites
    # no basename shared with tests/: `pytest tests benchmarks` in one run must not clash (rootdir import mode)
    assert not suites & {p.name for p in (ROOT / "tests").rglob("test_*.py")}


def test_benchmark_suites_run_once_each(tiny_bundle, phantom_dir, tmp_path):
    """Every benchmark body runs once (--benchmark-disable): a smoke test, never a timing."""
    env = dict(os.environ, EDGEINFER_BENCH_BUNDLES=str(tiny_bundle), EDGEINFER_BENCH_DATA=str(phantom_dir),
               EDGEINFER_BENCH_BATCHES="1,2", EDGEINFER_BENCH_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-disable", "-q",
                          "-p", "no:cacheprovider", "-o", f"cache_dir={tmp_path}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    tail = out.stdout[-3000:] + out.stderr[-2000:]
    assert out.returncode == 0, tail
    assert " passed" in out.stdout and "error" not in out.stdout.lower().split("passed")[-1], tail
    assert not (ROOT / ".benchmarks").exists() or not any((ROOT / ".benchmarks").iterdir()), \
        "benchmarks must save under benchmarks/results, not ./.benchmarks"


def test_node_benchmark_runs_end_to_end_on_a_small_load(tmp_path):
    """benchmarks/node_bench.py drives a real node with storescu into Orthanc, and its ingest comparison sends the
    same instances to storescp, a second Orthanc, a bare pynetdicom SCP and the node (a smoke run, no timing
    asserted)."""
    import json

    import peers

    for binary in ("storescu", "storescp", "echoscu", "Orthanc"):
        peers.require_binary(binary)
    out = tmp_path / "node.json"
    r = subprocess.run([sys.executable, "benchmarks/node_bench.py", "--studies", "2", "--intervals", "0",
                        "--burst", "10", "--compare", "4", "--quiet-seconds", "1",
                        "--json", str(out), "--report", str(tmp_path / "node.md")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["edgeinfer_node_bench"] == 1 and report["machine"]["cpu"]["model"]
    receivers = report["ingest_comparison"]["receivers"]
    assert list(receivers) == ["storescp", "orthanc", "bare_pynetdicom", "node"]
    for name, d in receivers.items():
        assert d["instances"] == d["acknowledged"] == d["stored_instances"] == 4, (name, d)
        assert d["ingest_instances_per_s"] > 0, (name, d)
    assert receivers["node"]["acknowledged_and_durable"] == 4
    assert set(report["targets"]) == {"ingest_vs_bare_scp", "own_cost_vs_inference", "burst"}
    assert all(t["met"] in (True, False) for t in report["targets"].values()), report["targets"]
    assert report["burst"]["refused_a700"] == 0  # only disk space refuses
    md = (tmp_path / "node.md").read_text()
    assert "| burst" in md and "## Targets" in md and "bare pynetdicom SCP" in md and "**machine**" in md


def test_worklist_load_benchmark_runs_on_a_small_state(tmp_path):
    """benchmarks/worklist_load.py: a node with a filled state, pollers in processes of their own, timed C-STOREs
    (a smoke run: every pass and its figures are there; the timing target is the benchmark's, not the test's)."""
    import json

    out = tmp_path / "wl.json"
    r = subprocess.run([sys.executable, "benchmarks/worklist_load.py", "--studies", "300", "--instances", "5",
                        "--pollers", "2", "--json", str(out), "--report", str(tmp_path / "wl.md")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1), r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["edgeinfer_worklist_load"] == 1 and report["studies"] == 300
    assert list(report["passes"]) == ["no pollers", "2 pollers, default window", "2 pollers, ?limit=10000"]
    for name, p in report["passes"].items():
        assert p["c_store_s"]["n"] == 5
        if p["polls"] is not None:
            assert p["polls"]["n"] > 0 and p["polls"]["non_200"] == 0, (name, p["polls"])
    assert "Target: C-STORE p99" in (tmp_path / "wl.md").read_text()
