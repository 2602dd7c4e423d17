"""edgeinfer.bench.measure: one row. What cannot run is a row with a reason, never invented numbers;
a row that breaks while running is an error row, never a crash."""
from __future__ import annotations

import onnx
import pytest

from edgeinfer import bench
from edgeinfer.bundle import artifact_record, load_bundle, write_manifest


def test_bf16_on_a_cpu_without_bf16_is_unavailable_with_the_backends_reason(bench_bundle, phantom_dir, bench_settings,
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
    row = bench.measure_case(case, b, inputs, 1, bench_settings(), bench.PeakRss(), 0.0)
    assert row["status"] == "unavailable" and "no native BF16" in row["reason"]
    assert "p50_ms" not in row  # nothing invented


def test_fixed_batch_graph_is_unavailable_for_other_batches(tmp_path, phantom_dir, bench_settings):
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
    rep = bench.run(d, bench_settings(backends=("onnxruntime",), precisions=("fp32",), data=str(phantom_dir),
                                      e2e="none"))
    by_batch = {r["batch"]: r for r in rep["rows"]}
    assert by_batch[1]["status"] == "ok"
    assert by_batch[2]["status"] == "unavailable" and "fixed batch of 1" in by_batch[2]["reason"]


def test_a_row_that_fails_while_running_is_an_error_row_not_a_crash(bench_bundle, phantom_dir, bench_settings,
                                                                   monkeypatch):
    from edgeinfer.backends.onnxruntime import OrtRunner

    def broken(self, feeds):
        raise RuntimeError("raw call broke")

    monkeypatch.setattr(OrtRunner, "raw_call", broken)
    rep = bench.run(bench_bundle, bench_settings(backends=("onnxruntime",), precisions=("fp32", "int8"),
                                                 batches=(1,), data=str(phantom_dir), e2e="none"))
    assert [r["status"] for r in rep["rows"]] == ["error", "error"]
    assert "raw call broke" in rep["rows"][0]["reason"]
    assert bench.exit_code(rep) == 1
