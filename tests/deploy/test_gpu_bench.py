"""deploy/gpu-bench.sh: its --cpu dry run end to end, and the tables it writes (pure)."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy"))

import gpu_bench  # noqa: E402


def _row(precision, batch, p50, **kw):
    return {"backend": "onnxruntime", "precision": precision, "batch": batch, "status": "ok", "p50_ms": p50,
            "p99_ms": p50 * 1.5, "throughput": batch / p50 * 1e3, **kw}


def test_copy_share_comes_from_the_runners_split():
    assert gpu_bench.copy_share({"device_timings_ms": {"h2d_ms": 1.0, "compute_ms": 6.0, "d2h_ms": 1.0}}) == 0.25
    assert gpu_bench.copy_share({"device_timings_ms": {"graph_ms": 2.0}}) is None
    assert gpu_bench.copy_share({}) is None


def test_main_table_puts_pytorchs_best_mode_of_the_same_precision_beside_ours():
    benches = {"unet": {"rows": [_row("fp16", 8, 2.0, device_timings_ms={"h2d_ms": .5, "compute_ms": 1.0, "d2h_ms": .5},
                                      memory={"gpu_mem_used_mb": 300.0},
                                      run={"details": {"cuda": {"cuda_graph": "on", "pinned": "on"}}}),
                                 _row("int8", 8, 3.0),
                                 {"precision": "fp32", "batch": 8, "status": "unavailable", "reason": "no artifact"}]}}
    torch = {"rows": [{"model": "unet", "mode": "eager-fp16", "batch": 8, "status": "ok", "p50_ms": 5.0, "throughput": 1600},
                      {"model": "unet", "mode": "compile-fp16", "batch": 8, "status": "ok", "p50_ms": 3.0, "throughput": 2666},
                      {"model": "unet", "mode": "eager-fp32", "batch": 8, "status": "error", "reason": "x"}]}
    rows = gpu_bench.main_table(benches, torch)
    fp16, int8, fp32 = rows
    assert fp16["peer"]["mode"] == "compile-fp16" and fp16["speedup_vs_peer"] == 1.5
    assert fp16["copy_share"] == 0.5 and fp16["gpu_mem_mb"] == 300.0 and fp16["cuda_graph"] == "on"
    assert fp16["torch_eager-fp16_p50_ms"] == 5.0 and fp16["torch_eager-fp32_p50_ms"] is None
    assert "peer" not in int8  # PyTorch has no INT8 mode on the GPU here: nothing to set beside it
    assert fp32["status"] == "unavailable" and fp32["reason"] == "no artifact"
    md = gpu_bench.render_summary({"main": rows, "machine": {}, "mode": "cuda"})
    assert "| unet | fp16 | 8 | 2.000 | 3.000 | 4,000 | 50 % | 300 | on |" in md and "1.50x" in md
    assert "| unet | fp32 | 8 | unavailable: no artifact |" in md
    assert md.count("\n| unet | fp16 | 8 |") == 1


def test_ablation_table_is_each_variant_over_the_default_run():
    benches = {"m": {"rows": [_row("fp16", 1, 2.0)]}}
    ab = {"m": {"session.run": {"rows": [_row("fp16", 1, 3.0)]},
                "NHWC": {"rows": [{"precision": "fp16", "batch": 1, "status": "error", "reason": "boom"}]}}}
    rows = gpu_bench.ablation_table(ab, benches)
    assert rows[0]["vs_default"] == 1.5 and rows[0]["default_p50_ms"] == 2.0
    assert rows[1]["status"] == "error" and rows[1]["reason"] == "boom"


@pytest.mark.slow
def test_the_cpu_dry_run_runs_every_step_and_writes_every_table(tmp_path):
    out, pack = tmp_path / "gb", tmp_path / "gb.tgz"
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "deploy" / "gpu-bench.sh"), "--cpu", str(out), "--models", "phantom-cxr",
                        "--batches", "1,2", "--ablation-batches", "1", "--warmup-s", "0.05", "--duration-s", "0.1",
                        "--blocks", "1", "--val-n", "4", "--val-parts", "2", "--workers", "2", "--e2e-repeats", "1",
                        "--torch-modes", "eager-fp32", "--compile-budget-s", "0", "--pack", str(pack)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert {st["name"]: st["status"] for st in s["steps"]} == {
        "machine": "ok", "data": "ok", "gpu tests": "ok", "bench": "ok", "torch eager": "ok", "fidelity": "ok",
        "e2e": "ok", "ablation": "ok", "torch compile": "skipped", "summary": "ok"}
    main = {(r["precision"], r["batch"]): r for r in s["main"]}
    assert set(main) == {(p, b) for p in ("fp32", "fp16", "int8") for b in (1, 2)}
    assert all(r["status"] == "ok" and r["p50_ms"] > 0 for r in main.values())
    assert main[("fp32", 1)]["torch_eager-fp32_p50_ms"] > 0 and main[("fp32", 1)]["speedup_vs_peer"] > 0
    variants = {(r["variant"], r["precision"]) for r in s["ablation"] if r["status"] == "ok"}
    assert variants == {(v, p) for v, (_, ps) in gpu_bench.VARIANTS.items() for p in ps}
    fid = s["fidelity"]
    assert fid["studies"] >= 4 and set(fid["precisions"]) == {"fp32", "fp16", "int8"}
    for e in fid["precisions"].values():  # CPU against CPU: the same worklist
        assert e["agreement"] == 1.0 and e["max_abs_score_diff"] == 0.0, e
    assert [e["precision"] for e in s["e2e"]] == ["fp32", "fp16"] and all(e["serial"] for e in s["e2e"])
    md = (out / "summary.md").read_text()
    for heading in ("beside PyTorch", "What each CUDA setting buys", "Same priorities as on the CPU", "End to end"):
        assert heading in md
    with tarfile.open(pack) as tar:  # the archive holds the results, not the generated studies
        names = tar.getnames()
    assert "gb/summary.md" in names and "gb/bench-phantom-cxr.json" in names
    assert not any("/data" in n for n in names)
