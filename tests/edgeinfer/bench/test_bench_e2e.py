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
