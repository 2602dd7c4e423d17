"""edgeinfer.bench.e2e: DICOM file to priority, per stage, serial and overlapped."""
from __future__ import annotations

import pytest

from edgeinfer import bench


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


def test_pre_model_cost_by_transfer_syntax_and_the_share_of_inference_only(report):
    e = report["e2e"][0]
    groups = e["premodel_by_transfer_syntax"]
    assert sum(g["images"] for g in groups) == e["images"] * e["repeats"]
    # the phantom set holds uncompressed and RLE files (edgeinfer.phantom)
    assert {"Explicit VR Little Endian", "RLE Lossless"} <= {g["transfer_syntax"] for g in groups}
    assert all(g["size"] in ("< 1 MP", "1-4 MP", "4-9 MP", ">= 9 MP") and g["p50_ms"] > 0 for g in groups)
    ratio = e["e2e_vs_inference_only"]
    assert e["inference_only_images_per_s"] > 0
    assert ratio["serial"] == pytest.approx(e["serial"]["images_per_s"] / e["inference_only_images_per_s"], rel=1e-3)
    md = bench.render_markdown(report)
    assert "| transfer syntax | size | images | p50 | mean |" in md and "inference only, images/s" in md


def test_grouping_helpers():
    # (the transfer syntax is named by dicomio.describe_transfer_syntax, tested with the reader)
    from edgeinfer.bench.e2e import _megapixels_bucket, premodel_by_syntax

    rows = premodel_by_syntax([("RLE Lossless", "1-4 MP", 4.0), ("RLE Lossless", "1-4 MP", 6.0),
                               ("Explicit VR Little Endian", "4-9 MP", 3.0)])
    assert [(r["transfer_syntax"], r["images"], r["p50_ms"]) for r in rows] == [
        ("Explicit VR Little Endian", 1, 3.0), ("RLE Lossless", 2, 5.0)]
    assert [_megapixels_bucket(*s) for s in ((512, 512), (1024, 1024), (2500, 2048), (3000, 3000))] == \
        ["< 1 MP", "1-4 MP", "4-9 MP", ">= 9 MP"]
