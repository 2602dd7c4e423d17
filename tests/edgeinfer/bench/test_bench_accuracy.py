"""edgeinfer.bench.accuracy: the accuracy columns come from the bundle's validation records."""
from __future__ import annotations

import json

from edgeinfer import bench
from edgeinfer.bundle import load_bundle


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
