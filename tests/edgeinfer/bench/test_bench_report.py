"""edgeinfer.bench.report and .plot: the Markdown and the PNG; the committed reports stay readable."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeinfer import bench

RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results"


def test_markdown_and_png_are_written(report, tmp_path):
    md = bench.render_markdown(report)
    assert "| ort fp32 | 1 |" in md and "speed-up vs ORT fp32" in md and "Not measured here" in md
    assert "End to end" in md and "Fast CPU path target" in md and "How to read this" in md
    png = bench.render_plot(report, tmp_path / "plot.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


#: edgeinfer bench reports among benchmarks/results/*.json (node.json is the node benchmark's, another format)
BENCH_REPORTS = sorted(p.stem for p in RESULTS.glob("*.json") if '"edgeinfer_bench"' in p.read_text()[:200])


OTHER_KINDS = ("edgeinfer_node_bench", "edgeinfer_intake_bench", "edgeinfer_preprocess_agreement",
               "edgeinfer_intake_scaling", "edgeinfer_codec_bench", "edgeinfer_worklist_load", "edgeinfer_heatmap_cost",
               "edgeinfer_seg_bench", "edgeinfer_ct_bench", "edgeinfer_triton_bench")


def test_every_committed_result_is_a_known_kind():
    kinds = {p.stem: json.loads(p.read_text()) for p in RESULTS.glob("*.json")}
    assert all(any(k in d for k in ("edgeinfer_bench", *OTHER_KINDS)) for d in kinds.values())
    assert len(BENCH_REPORTS) >= 3 and "node" in kinds and "intake" in kinds and "preprocess-agreement" in kinds


@pytest.mark.parametrize("name, script", [("intake", "intake_bench"), ("intake-opencv1", "intake_bench"),
                                          ("preprocess-agreement", "preprocess_agreement"),
                                          ("preprocess-agreement-fullsize", "preprocess_agreement"),
                                          ("preprocess-agreement-j2k", "preprocess_agreement"),
                                          ("preprocess-agreement-jpeg-baseline", "preprocess_agreement"),
                                          ("preprocess-agreement-jpeg-extended", "preprocess_agreement"),
                                          ("intake-scaling-epyc2", "intake_scaling"),
                                          ("intake-scaling-xeon16", "intake_scaling"),
                                          ("codecs", "codec_bench")])
def test_the_intake_reports_render_to_their_markdown(name, script):
    import importlib.util

    spec = importlib.util.spec_from_file_location(script, RESULTS.parent / f"{script}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = json.loads((RESULTS / f"{name}.json").read_text())
    args = () if script in ("intake_scaling", "codec_bench") else (r["machine"] if script == "intake_bench" else r["data"]["path"],)
    assert mod.render(r, *args) == (RESULTS / f"{name}.md").read_text()


@pytest.mark.parametrize("name", BENCH_REPORTS)
def test_committed_reports_are_current_and_render_to_their_markdown(name):
    """benchmarks/results/*.json are in the current format, and their .md is what this code renders from them."""
    report = json.loads((RESULTS / f"{name}.json").read_text())
    assert report["edgeinfer_bench"] == bench.REPORT_VERSION
    assert bench.OPENVINO_TARGET_KEY in report["targets"]
    assert bench.render_markdown(report) == (RESULTS / f"{name}.md").read_text()
