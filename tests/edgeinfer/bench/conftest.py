"""Shared fixtures of the edgeinfer bench tests: a tiny bundle with validation records, settings with
tiny durations, and one full run shared by the tests that only read its report."""
from __future__ import annotations

import shutil

import pytest

from edgeinfer import bench
from edgeinfer.bundle import artifact_record, load_bundle, write_manifest


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


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def bench_settings():
    """``bench_settings(**overrides)``: BenchSettings for every backend and precision, batches 1 and 2,
    tiny durations, one thread."""
    return _settings


@pytest.fixture(scope="session")
def report(bench_bundle, phantom_dir):
    """One full run, shared by the tests that read it (every backend and precision, two batches, end to end)."""
    return bench.run(bench_bundle, _settings(data=str(phantom_dir)))
