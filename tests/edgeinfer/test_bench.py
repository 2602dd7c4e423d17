"""edgeinfer bench: correctness only, on tiny models with tiny durations. Never a timed assertion."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from edgeinfer import bench, sysinfo
from edgeinfer.bundle import artifact_record, load_bundle, write_manifest
from edgeinfer.errors import UsageError

ROW_KEYS = {"backend", "precision", "batch", "p50_ms", "p90_ms", "p99_ms", "throughput", "overhead_ratio"}


def _has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


# --- a tiny bundle with fp32 + int8 artifacts and validation records ---------------------------
def _add_artifact(bundle_dir, src, file, id, precision, validation=None):
    shutil.copy(bundle_dir / src, bundle_dir / file)
    m = load_bundle(bundle_dir, verify=False).manifest
    rec = artifact_record(bundle_dir, file, id=id, precision=precision, format="onnx", produced_by={"tool": "tests"})
    if validation is not None:
        rec["validation"] = {**validation, "artifact_sha256": rec["sha256"]}
    m["artifacts"].append(rec)
    write_manifest(bundle_dir, m)
    return rec


@pytest.fixture(scope="module")
def bench_bundle(tmp_path_factory):
    """fp32 + an 'int8' artifact (a copy: bench does not care what is inside) that passed the gate,
    and a failed openvino:bf16 runtime-precision record."""
    from helpers import make_bundle

    d = make_bundle(tmp_path_factory.mktemp("bench") / "b")
    _add_artifact(d, "model.onnx", "model-int8.onnx", "int8", "int8",
                  {"auc": 0.97, "sensitivity": 0.95, "specificity": 0.9, "agreement": 0.998,
                   "max_abs_score_diff": 0.004, "passed": True, "reasons": [], "ran_on": {"backend": "onnxruntime"}})
    m = load_bundle(d).manifest
    fp32 = m["artifacts"][0]
    m["validation"] = {"runtime_precisions": {"openvino:bf16": {
        "auc": 0.969, "agreement": 0.99, "max_abs_score_diff": 0.02, "passed": False,
        "reasons": ["agreement below 99.5%"], "artifact": fp32["id"], "artifact_sha256": fp32["sha256"]}}}
    write_manifest(d, m)
    return d


def _settings(**kw):
    base = dict(backends=bench.BACKENDS, precisions=bench.PRECISIONS, batches=(1, 2), warmup_s=0.02,
                duration_s=0.05, blocks=3, threads=1, images=3, e2e="auto", e2e_repeats=1)
    base.update(kw)
    return bench.BenchSettings(**base)


@pytest.fixture(scope="module")
def report(bench_bundle, phantom_dir):
    """One full run, shared by the tests below (every backend and precision, two batches, end to end)."""
    return bench.run(bench_bundle, _settings(data=str(phantom_dir)))


# --- statistics --------------------------------------------------------------------------------
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


def test_parse_lists():
    assert bench.parse_list("all", bench.PRECISIONS, "precision") == list(bench.PRECISIONS)
    assert bench.parse_list("int8,fp32", bench.PRECISIONS, "precision") == ["fp32", "int8"]
    assert bench.parse_list("ort,trt", bench.BACKENDS, "backend", {"ort": "onnxruntime", "trt": "tensorrt"}) == \
        ["onnxruntime", "tensorrt"]
    with pytest.raises(UsageError, match="fp64"):
        bench.parse_list("fp64", bench.PRECISIONS, "precision")
    assert bench.parse_batches("4,1,4") == [1, 4]
    for bad in ("0", "x", "1,1000"):
        with pytest.raises(UsageError):
            bench.parse_batches(bad)


def test_inputs_rotate_over_distinct_real_images():
    imgs = [np.full((1, 4, 4), i, np.float32) for i in range(3)]
    feeds = bench.make_feeds(imgs, 2, "image")
    assert len(feeds) == 3
    firsts = [f["image"][:, 0, 0, 0].tolist() for f in feeds]
    assert firsts == [[0, 1], [2, 0], [1, 2]]  # wraps around the images, every batch differs


def test_parse_cpuinfo():
    text = ("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16\nphysical id\t: 0\n"
            "core id\t\t: 0\n\nprocessor\t: 1\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16\n"
            "physical id\t: 0\ncore id\t\t: 0\n")
    info = sysinfo.parse_cpuinfo(text)
    assert info["model"] == "Test CPU" and info["physical_cores"] == 1 and info["sockets"] == 1
    assert info["flags"]["amx_bf16"] and info["flags"]["avx512f"] and not info["flags"]["avx512_vnni"]


# --- accuracy columns --------------------------------------------------------------------------
def test_accuracy_columns_from_validation_records(bench_bundle):
    b = load_bundle(bench_bundle)
    fp32, int8 = b.artifact(id="fp32"), b.artifact(id="int8")
    assert bench.accuracy_for(b, "onnxruntime", "fp32", fp32)["gate"] == "reference"
    acc = bench.accuracy_for(b, "onnxruntime", "int8", int8)
    assert acc["gate"] == "passed" and acc["auc"] == 0.97 and acc["agreement"] == 0.998
    on_ov = bench.accuracy_for(b, "openvino", "int8", int8)  # the artifact's record, made on another backend
    assert on_ov["gate"] == "passed" and on_ov["validated_on"] == "onnxruntime"
    assert bench._gate_cell(on_ov, "openvino") == "passed (on ort)" and bench._gate_cell(acc, "onnxruntime") == "passed"
    bf16 = bench.accuracy_for(b, "openvino", "bf16", fp32)
    assert bf16["gate"] == "failed" and bf16["max_abs_score_diff"] == 0.02 and "runtime_precisions" in bf16["source"]


def test_accuracy_absent_or_for_another_file_is_not_validated(bench_bundle, tmp_path):
    b = load_bundle(bench_bundle)
    fp32 = b.artifact(id="fp32")
    b.manifest = json.loads(json.dumps(b.manifest))
    b.manifest.pop("validation")
    acc = bench.accuracy_for(b, "openvino", "bf16", fp32)
    assert acc["gate"] == "not validated" and all(acc[k] is None for k in bench.ACCURACY_KEYS)
    b.manifest["artifacts"][1]["validation"]["artifact_sha256"] = "0" * 64
    acc = bench.accuracy_for(b, "onnxruntime", "int8", b.artifact(id="int8"))
    assert acc["gate"] == "not validated" and "another file" in acc["note"]


# --- the planned matrix --------------------------------------------------------------------------
def test_plan_gives_every_impossible_case_a_reason(bench_bundle):
    b = load_bundle(bench_bundle)
    cases = {(c.backend, c.precision): c for c in bench.plan_cases(b, bench.BACKENDS, bench.PRECISIONS)}
    assert len(cases) == len(bench.BACKENDS) * len(bench.PRECISIONS)
    assert cases[("onnxruntime", "fp32")].reason is None and cases[("onnxruntime", "int8")].reason is None
    assert "no fp16 ONNX artifact" in cases[("onnxruntime", "fp16")].reason
    assert "BF16" in cases[("onnxruntime", "bf16")].reason
    for p in bench.PRECISIONS:
        assert cases[("tensorrt", p)].reason  # no TensorRT plan in this bundle, whatever the machine
    if _has_openvino():
        ov = cases[("openvino", "bf16")]
        assert ov.reason is None and ov.hint == "bf16" and ov.artifact.id == "fp32"


def test_bf16_on_a_cpu_without_bf16_is_unavailable_with_the_backends_reason(bench_bundle, phantom_dir,
                                                                            monkeypatch, tmp_path):
    pytest.importorskip("openvino")
    from edgeinfer.backends import openvino as ov_backend

    real = ov_backend.hint_for

    def no_bf16(artifact_precision, requested, caps):
        return real(artifact_precision, requested, [c for c in caps if c.upper() != "BF16"])

    monkeypatch.setattr(ov_backend, "hint_for", no_bf16)
    b = load_bundle(bench_bundle)
    case = next(c for c in bench.plan_cases(b, ["openvino"], ["bf16"]))
    inputs = bench.load_inputs(b, phantom_dir, 2, tmp_path)
    row = bench.measure_case(case, b, inputs, 1, _settings(), bench.PeakRss(), 0.0)
    assert row["status"] == "unavailable" and "no native BF16" in row["reason"]
    assert "p50_ms" not in row  # nothing invented


def test_fixed_batch_graph_is_unavailable_for_other_batches(tmp_path, phantom_dir):
    from helpers import make_bundle

    d = make_bundle(tmp_path / "fixed")
    model = onnx.load(str(d / "model.onnx"))
    for v in (model.graph.input[0], model.graph.output[0]):
        v.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(d / "model.onnx"))
    m = load_bundle(d, verify=False).manifest
    m["artifacts"] = [artifact_record(d, "model.onnx", id="fp32", precision="fp32", format="onnx",
                                      produced_by={"tool": "tests"})]
    write_manifest(d, m)
    rep = bench.run(d, _settings(backends=("onnxruntime",), precisions=("fp32",), data=str(phantom_dir),
                                 e2e="none"))
    by_batch = {r["batch"]: r for r in rep["rows"]}
    assert by_batch[1]["status"] == "ok"
    assert by_batch[2]["status"] == "unavailable" and "fixed batch of 1" in by_batch[2]["reason"]


# --- a whole run ----------------------------------------------------------------------------------
def test_every_measured_row_has_the_required_keys(report):
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    assert {(r["backend"], r["precision"]) for r in ok} >= {("onnxruntime", "fp32"), ("onnxruntime", "int8")}
    for r in ok:
        assert ROW_KEYS <= set(r), r.keys()
        assert r["p50_ms"] > 0 and r["throughput"] > 0
        assert r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert {"bundle_load_ms", "backend_import_ms", "session_create_ms", "first_infer_ms"} <= set(r["cold"])
        assert r["memory"]["peak_rss_mb"] > 0 and r["memory"]["peak_rss_method"]
        assert r["threads"]["requested"] == 1
        assert r["spread"]["blocks"] == 3 and r["raw"]["spread"]["blocks"] == 3
    assert len(report["rows"]) == len(bench.BACKENDS) * len(bench.PRECISIONS) * 2
    json.dumps(report, allow_nan=False)  # JSON-safe as it is


def test_overhead_ratio_comes_from_the_same_run(report):
    for r in (r for r in report["rows"] if r["status"] == "ok"):
        assert r["raw"]["n"] > 0 and r["n"] > 0
        assert r["overhead_ratio"] == pytest.approx(r["p50_ms"] / r["raw"]["p50_ms"], rel=1e-4)
        assert len(r["overhead"]["block_ratios"]) == 3


def test_unavailable_rows_have_reasons_and_no_numbers(report):
    bad = [r for r in report["rows"] if r["status"] != "ok"]
    assert {(r["backend"], r["precision"]) for r in bad} >= {("onnxruntime", "fp16"), ("onnxruntime", "bf16"),
                                                              ("tensorrt", "fp32")}
    for r in bad:
        assert r["status"] in ("unavailable", "error") and len(r["reason"]) > 10
        assert "p50_ms" not in r and r.get("speedup_vs_ort_fp32") is None


def test_accuracy_and_speedup_columns(report):
    rows = {(r["backend"], r["precision"], r["batch"]): r for r in report["rows"]}
    base = rows[("onnxruntime", "fp32", 1)]
    assert base["speedup_vs_ort_fp32"] == 1.0 and base["accuracy"]["gate"] == "reference"
    int8 = rows[("onnxruntime", "int8", 1)]
    assert int8["accuracy"]["gate"] == "passed" and int8["accuracy"]["auc"] == 0.97
    assert int8["speedup_vs_ort_fp32"] == pytest.approx(base["p50_ms"] / int8["p50_ms"], rel=1e-4)
    assert isinstance(int8["speedup_within_noise"], bool)
    if _has_openvino():
        assert rows[("openvino", "bf16", 1)]["accuracy"]["gate"] == "failed"
        t = report["targets"]["issue5_openvino_3x"]
        assert t["evaluated"] and "speedup" in t and t["best"]["gate"] in ("reference", "passed")


def test_machine_block(report):
    m = report["machine"]
    assert m["cpu"]["model"] and m["cpu"]["usable_cpus"] >= 1
    assert m["gpu"] == "none" or isinstance(m["gpu"], list)
    assert "onnxruntime" in m["libraries"] and "numpy" in m["libraries"]
    assert "start" in m["load_average"]
    if m["cpu"]["arch"] in ("x86_64", "AMD64"):
        assert {"avx512f", "avx512_vnni", "amx_bf16", "avx512_bf16"} <= set(m["cpu"]["flags"])


def test_end_to_end_breakdown(report, phantom_dir):
    assert report["e2e"], "auto mode runs at least ORT fp32"
    e = report["e2e"][0]
    assert (e["backend"], e["precision"]) == ("onnxruntime", "fp32")
    n_files = len(bench.discover_files(phantom_dir))
    assert e["files"] == n_files and e["images"] + e["skipped"] + e["errors"] == n_files
    assert e["studies"] >= 1 and sum(e["priorities"].values()) == e["studies"]
    assert set(e["serial"]["per_image_ms"]) == set(bench.STAGES)
    assert sum(e["serial"]["share"].values()) == pytest.approx(1.0, abs=1e-5)  # each share is rounded to 6 places
    assert e["serial"]["studies_per_s"] > 0 and e["overlapped"]["studies_per_s"] > 0
    assert isinstance(e["overlapped"]["pays"], bool)


def test_markdown_and_png_are_written(report, tmp_path):
    md = bench.render_markdown(report)
    assert "| ort fp32 | 1 |" in md and "speed-up vs ORT fp32" in md and "Not measured here" in md
    assert "End to end" in md and "Fast CPU path target" in md and "How to read this" in md
    png = bench.render_plot(report, tmp_path / "plot.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_exit_code():
    assert bench.exit_code({"rows": [{"status": "unavailable"}], "e2e": []}) == 1
    assert bench.exit_code({"rows": [{"status": "ok"}, {"status": "unavailable"}], "e2e": []}) == 0
    assert bench.exit_code({"rows": [{"status": "ok"}, {"status": "error"}], "e2e": []}) == 2


# --- the CLI handler --------------------------------------------------------------------------------
def _parser():
    p = argparse.ArgumentParser(prog="edgeinfer")
    bench.add_parser(p.add_subparsers(dest="command"))
    return p


def test_cli_handler_end_to_end_without_data(bench_bundle, tmp_path, capsys):
    """No --data: the inputs come from phantoms generated on the fly. Every report is written."""
    out = tmp_path / "r"
    args = _parser().parse_args([
        "bench", str(bench_bundle), "--backend", "ort", "--precision", "fp32,int8,fp16", "--batch", "1",
        "--warmup-s", "0.01", "--duration-s", "0.03", "--blocks", "2", "--images", "2", "--e2e-repeats", "1",
        "--json", str(out / "b.json"), "--report", str(out / "b.md"), "--plot", str(out / "b.png"), "--no-progress"])
    assert args.func(args) == 0
    d = json.loads((out / "b.json").read_text())
    assert [r["status"] for r in d["rows"]] == ["ok", "unavailable", "ok"]
    assert "phantom" in d["data"]["source"]
    assert (out / "b.md").stat().st_size > 500 and (out / "b.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "ort fp32" in printed and "wrote" in printed


def test_cli_json_to_stdout_and_usage_errors(bench_bundle, phantom_dir, capsys):
    args = _parser().parse_args(["bench", str(bench_bundle), "--backend", "ort", "--precision", "fp32",
                                 "--iterations", "4", "--blocks", "2", "--warmup-s", "0", "--data", str(phantom_dir),
                                 "--images", "2", "--e2e", "none", "--json", "-", "--no-progress"])
    assert args.func(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["rows"][0]["n"] == 4 and d["rows"][0]["raw"]["n"] == 4 and d["e2e"] == []
    with pytest.raises(SystemExit):  # --duration-s and --iterations exclude each other
        _parser().parse_args(["bench", "--duration-s", "1", "--iterations", "3"])
    for bad in (["--precision", "fp64"], ["--batch", "0"], ["--blocks", "0"]):
        with pytest.raises(UsageError):
            bench.settings_from_args(_parser().parse_args(["bench", *bad]))


def test_bench_import_is_light():
    code = ("import sys, edgeinfer.bench, edgeinfer.sysinfo; "
            "print(sorted(m for m in ('matplotlib', 'openvino', 'torch', 'monai', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_row_that_fails_while_running_is_an_error_row_not_a_crash(bench_bundle, phantom_dir, monkeypatch):
    from edgeinfer.backends.onnxruntime import OrtRunner

    def broken(self, feeds):
        raise RuntimeError("raw call broke")

    monkeypatch.setattr(OrtRunner, "raw_call", broken)
    rep = bench.run(bench_bundle, _settings(backends=("onnxruntime",), precisions=("fp32", "int8"), batches=(1,),
                                            data=str(phantom_dir), e2e="none"))
    assert [r["status"] for r in rep["rows"]] == ["error", "error"]
    assert "raw call broke" in rep["rows"][0]["reason"]
    assert bench.exit_code(rep) == 1
