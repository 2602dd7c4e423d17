"""The default mode is the fastest *allowed* one, and pinning restricts the choice."""
import json
import shutil

import pytest
from helpers import make_bundle

from edgeinfer import autoselect
from edgeinfer.bundle import load_bundle, write_manifest
from edgeinfer.errors import BackendUnavailable


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _with_bf16_record(tmp_path, passed):
    d = make_bundle(tmp_path / f"b{passed}")
    b = load_bundle(d)
    m = b.manifest
    m["validation"] = {"runtime_precisions": {"openvino:bf16": {
        "passed": passed, "artifact_sha256": b.artifact(precision="fp32").sha256, "reasons": [] if passed else ["agreement 0.9"]}}}
    write_manifest(d, m)
    return load_bundle(d)


def test_unvalidated_precisions_are_not_candidates(tiny_bundle):
    pairs, rejected = autoselect.candidates(load_bundle(tiny_bundle))
    assert {(b, p) for b, p, _ in pairs} == {("onnxruntime", "fp32"), ("openvino", "fp32")}
    assert any(r.startswith("openvino bf16") and "never been validated" in r for r in rejected)


def test_a_validated_runtime_precision_becomes_a_candidate(tmp_path):
    pytest.importorskip("openvino")
    pairs, _ = autoselect.candidates(_with_bf16_record(tmp_path, True))
    assert ("openvino", "bf16") in {(b, p) for b, p, _ in pairs}
    pairs, rejected = autoselect.candidates(_with_bf16_record(tmp_path, False))
    assert ("openvino", "bf16") not in {(b, p) for b, p, _ in pairs}
    assert any("failed the accuracy gate" in r for r in rejected)


def test_choose_picks_the_fastest_and_caches_the_probe(tiny_bundle, cache, monkeypatch):
    b = load_bundle(tiny_bundle)
    fake = {("onnxruntime", "fp32"): 5.0, ("openvino", "fp32"): 2.0}
    calls = []

    def probe(bundle, backend, precision, **kw):
        calls.append((backend, precision))
        return fake[(backend, precision)]

    monkeypatch.setattr(autoselect, "probe", probe)
    sel = autoselect.choose(b)
    assert (sel.backend, sel.precision) == ("openvino", "fp32")
    assert "2.5x ONNX Runtime fp32" in sel.reason and "probed now" in sel.reason
    assert len(calls) == 2
    sel2 = autoselect.choose(b)
    assert len(calls) == 2 and "cached probe" in sel2.reason  # no second probe
    saved = json.loads(next((cache / "speed").iterdir()).read_text())
    assert saved["p50_ms"] == {"onnxruntime:fp32": 5.0, "openvino:fp32": 2.0}


def test_pinning_restricts_and_skips_the_probe(tiny_bundle, monkeypatch):
    monkeypatch.setattr(autoselect, "probe", lambda *a, **k: pytest.fail("pinned choice must not probe"))
    sel = autoselect.choose(load_bundle(tiny_bundle), backend="ort", precision="fp32")
    assert (sel.backend, sel.precision, sel.reason) == ("onnxruntime", "fp32", "as pinned")


def test_nothing_allowed_is_a_clear_error(tiny_bundle):
    with pytest.raises(BackendUnavailable, match="never been validated"):
        autoselect.choose(load_bundle(tiny_bundle), backend="openvino", precision="bf16")


def test_real_probe_measures_something(tiny_bundle):
    ms = autoselect.probe(load_bundle(tiny_bundle), "onnxruntime", "fp32", threads=1, warmup=1, iterations=3)
    assert ms > 0
