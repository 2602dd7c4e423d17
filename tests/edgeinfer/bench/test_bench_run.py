"""edgeinfer.bench.matrix and .compare: a whole run (correctness only, on a tiny model with tiny
durations; never a timed assertion)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from edgeinfer import bench, sysinfo

ROW_KEYS = {"backend", "precision", "batch", "p50_ms", "p90_ms", "p99_ms", "throughput", "overhead_ratio"}


def _has_openvino() -> bool:
    return importlib.util.find_spec("openvino") is not None


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


def test_report_format_version_and_target_key(report):
    assert report["edgeinfer_bench"] == bench.REPORT_VERSION == 2
    assert list(report["targets"]) == ["openvino_gated_3x_vs_ort_fp32"] == [bench.OPENVINO_TARGET_KEY]


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
        t = report["targets"]["openvino_gated_3x_vs_ort_fp32"]
        assert t["evaluated"] and "speedup" in t and t["best"]["gate"] in ("reference", "passed")


def test_machine_block(report):
    m = report["machine"]
    assert m["cpu"]["model"] and m["cpu"]["usable_cpus"] >= 1
    assert m["gpu"] == "none" or isinstance(m["gpu"], list)
    assert "onnxruntime" in m["libraries"] and "numpy" in m["libraries"]
    assert "start" in m["load_average"]
    if m["cpu"]["arch"] in ("x86_64", "AMD64"):
        assert {"avx512f", "avx512_vnni", "amx_bf16", "avx512_bf16"} <= set(m["cpu"]["flags"])


def test_parse_cpuinfo():
    text = ("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16\nphysical id\t: 0\n"
            "core id\t\t: 0\n\nprocessor\t: 1\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16\n"
            "physical id\t: 0\ncore id\t\t: 0\n")
    info = sysinfo.parse_cpuinfo(text)
    assert info["model"] == "Test CPU" and info["physical_cores"] == 1 and info["sockets"] == 1
    assert info["flags"]["amx_bf16"] and info["flags"]["avx512f"] and not info["flags"]["avx512_vnni"]
