"""benchmarks/triton_bench.py runs (a smoke run against a real Triton server, never a timing)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.slow


def test_the_triton_benchmark_runs_against_a_real_server(tmp_path):
    """benchmarks/triton_bench.py end to end, briefly (a smoke run, never a timing): both hosts start, every mode
    answers, the report and the plot are written."""
    import json

    import peers

    peers.require_triton_host()
    out = subprocess.run([sys.executable, "benchmarks/triton_bench.py", "--clients", "1,2", "--warmup-s", "0.2",
                          "--duration-s", "1", "--threads", "1", "--json", str(tmp_path / "t.json"),
                          "--report", str(tmp_path / "t.md"), "--plot", str(tmp_path / "t.png")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / "t.json").read_text())
    assert [(x["mode"], x["clients"]) for x in r["rows"]] == [
        (m, n) for m in ("in-process", "triton", "triton, no batching") for n in (1, 2)]
    # a whole second per cell: one slow call on a loaded machine must not leave a cell without a timed call
    assert all(x["calls"] > 0 and not x["errors"] for x in r["rows"]), [
        (x["mode"], x["clients"], x["calls"], x["errors"]) for x in r["rows"]]
    assert all(x["mean_batch"] == 1.0 for x in r["rows"] if x["mode"] == "triton, no batching")
    assert (tmp_path / "t.png").stat().st_size > 10_000 and "dynamic batching" in (tmp_path / "t.md").read_text()
