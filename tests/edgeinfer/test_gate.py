"""The accuracy gate: pure verdicts on crafted metrics, and the runtime's refusal rules."""
from __future__ import annotations

import subprocess
import sys

import pytest

from edgeinfer.errors import PrecisionNotValidated
from edgeinfer.gate import (GateConfig, check_runtime_precision, check_usable, evaluate_gate,
                            runtime_precision_key)

FP32 = {"auc": 0.950, "sensitivity": 0.900, "specificity": 0.800, "agreement": 1.0, "n_studies": 400}


def ok(**over):
    m = {"auc": 0.949, "sensitivity": 0.900, "specificity": 0.801, "agreement": 0.9975,
         "max_abs_score_diff": 0.01, "n_studies": 400}
    m.update(over)
    return m


def test_defaults_are_the_project_gate():
    g = GateConfig()
    assert (g.min_agreement, g.max_auc_drop, g.max_sensitivity_drop) == (0.995, 0.005, 0.005)


def test_passes_within_every_threshold():
    r = evaluate_gate(FP32, ok())
    assert r.passed and r.reasons == ()
    assert {"agreement", "auc_drop", "sensitivity_drop"} <= set(r.checked)


@pytest.mark.parametrize("over, words", [
    ({"agreement": 0.990}, "agreement"),
    ({"auc": 0.9440}, "AUC dropped by 0.0060"),
    ({"sensitivity": 0.8940}, "sensitivity at the operating point dropped by 0.0060"),
    ({"agreement": None}, "agreement with FP32 was not measured"),
    ({"auc": None}, "measured for FP32"),
])
def test_fails_and_says_why(over, words):
    r = evaluate_gate(FP32, ok(**over))
    assert not r.passed
    assert any(words in x for x in r.reasons), r.reasons


def test_boundaries_are_inclusive():
    assert evaluate_gate(FP32, ok(agreement=0.995, auc=0.945, sensitivity=0.895)).passed


def test_improvements_never_fail():
    assert evaluate_gate(FP32, ok(auc=0.99, sensitivity=1.0)).passed


def test_without_labels_only_agreement_is_checked_unless_labels_are_required():
    ref = {"agreement": 1.0, "auc": None, "sensitivity": None}
    m = {"agreement": 1.0, "auc": None, "sensitivity": None, "n_studies": 300}
    r = evaluate_gate(ref, m)
    assert r.passed and "auc_drop" not in r.checked
    assert any("no reference labels" in n for n in r.notes)
    strict = evaluate_gate(ref, m, GateConfig(require_labels=True))
    assert not strict.passed and any("required but not measured" in x for x in strict.reasons)


def test_optional_score_bound_and_minimum_studies():
    assert not evaluate_gate(FP32, ok(max_abs_score_diff=0.2), GateConfig(max_abs_score_diff=0.05)).passed
    assert evaluate_gate(FP32, ok(max_abs_score_diff=0.01), GateConfig(max_abs_score_diff=0.05)).passed
    assert not evaluate_gate(FP32, ok(n_studies=10), GateConfig(min_studies=50)).passed


def test_small_sets_pass_with_a_note_about_resolution():
    r = evaluate_gate(FP32, ok(n_studies=20, agreement=1.0))
    assert r.passed and any("cannot resolve" in n for n in r.notes)


def test_nan_counts_as_not_measured():
    assert not evaluate_gate(FP32, ok(agreement=float("nan"))).passed


MAPS_FP32 = FP32 | {"pointing_game": {"score": 0.90, "n": 100}, "heatmap_agreement": {"r_mean": 1.0}}


def maps(r_mean=0.95, pointing=0.89):
    return ok(heatmap_agreement={"r_mean": r_mean, "n": 100}, pointing_game={"score": pointing, "n": 100})


def test_heatmaps_are_checked_when_the_bundle_has_them():
    r = evaluate_gate(MAPS_FP32, maps())
    assert r.passed and {"heatmap_r", "pointing_drop"} <= set(r.checked)
    assert evaluate_gate(MAPS_FP32, maps(r_mean=0.9, pointing=0.88)).passed          # both bounds inclusive
    assert "heatmap_r" not in evaluate_gate(FP32, ok()).checked                     # no maps: nothing to check


@pytest.mark.parametrize("kw, words", [
    ({"r_mean": 0.85}, "mean r 0.850, below the required 0.9: the scores may hold but the evidence moved"),
    ({"pointing": 0.86}, "pointing game dropped by 4.0 points (0.900 -> 0.860)"),
    ({"r_mean": None}, "could not be compared with FP32's"),
    ({"pointing": None}, "measured for FP32 (0.900) but not for this precision"),
])
def test_a_graph_that_keeps_the_scores_but_moves_the_evidence_fails(kw, words):
    r = evaluate_gate(MAPS_FP32, maps(**kw))
    assert not r.passed and any(words in x for x in r.reasons), r.reasons


def test_without_finding_locations_the_pointing_game_is_a_note():
    r = evaluate_gate(FP32 | {"heatmap_agreement": {"r_mean": 1.0}, "pointing_game": None}, maps(pointing=None)
                      | {"pointing_game": None})
    assert r.passed and any("pointing game not checked" in n for n in r.notes)
    assert evaluate_gate(MAPS_FP32, maps(r_mean=0.5), GateConfig(min_heatmap_r=0.4)).passed


@pytest.mark.parametrize("bad", [{"min_agreement": 1.5}, {"max_auc_drop": -0.1}, {"min_studies": 0},
                                 {"max_sensitivity_drop": float("inf")}, {"min_heatmap_r": 1.5},
                                 {"max_pointing_drop": -0.01}])
def test_config_is_checked(bad):
    with pytest.raises(ValueError):
        GateConfig(**bad)


def test_config_round_trips_through_dict():
    g = GateConfig(min_agreement=0.99, max_abs_score_diff=0.1)
    assert GateConfig.from_dict(g.as_dict() | {"unknown": 1}) == g


# --- the runtime side ---------------------------------------------------------------------------
SHA = "a" * 64


def record(precision="int8", validation=None, sha=SHA):
    r = {"id": precision, "precision": precision, "format": "onnx", "file": f"m.{precision}.onnx", "sha256": sha}
    if validation is not None:
        r["validation"] = validation
    return r


def test_fp32_is_usable_by_definition():
    assert check_usable(record("fp32")).usable


def test_never_validated_is_refused_with_the_fix():
    with pytest.raises(PrecisionNotValidated) as e:
        check_usable(record())
    msg = str(e.value)
    assert "never been validated" in msg and "edgeinfer validate" in msg and "--force" in msg
    assert msg.startswith("refusing to run artifact 'int8' (int8, onnx): it has never been validated")


def test_failed_gate_is_refused_with_its_reasons():
    v = {"passed": False, "reasons": ["agreement with FP32 priorities is 97.00%"], "artifact_sha256": SHA}
    with pytest.raises(PrecisionNotValidated, match="failed the accuracy gate.*97.00%") as e:
        check_usable(record(validation=v))
    assert "edgeinfer calibrate" in str(e.value) and "--precision fp32" in str(e.value)


def test_passed_is_usable():
    u = check_usable(record(validation={"passed": True, "reasons": [], "artifact_sha256": SHA}))
    assert u.usable and not u.forced


def test_validation_of_another_file_does_not_count():
    with pytest.raises(PrecisionNotValidated, match="for another file"):
        check_usable(record(validation={"passed": True, "artifact_sha256": "b" * 64}))


def test_incomplete_record_is_refused():
    with pytest.raises(PrecisionNotValidated, match="incomplete"):
        check_usable(record(validation={"artifact_sha256": SHA}))


def test_force_returns_a_forced_verdict_instead_of_raising():
    u = check_usable(record(validation={"passed": False, "reasons": ["x"], "artifact_sha256": SHA}), force=True)
    assert not u.usable and u.forced and u.message.startswith("FORCED")


def test_runtime_precision_without_artifact():
    base = record("fp32")
    manifest = {"validation": {"runtime_precisions": {
        "openvino:bf16": {"passed": True, "reasons": [], "artifact": "fp32", "artifact_sha256": SHA}}}}
    assert runtime_precision_key("OpenVINO", "BF16") == "openvino:bf16"
    assert check_runtime_precision(manifest, "openvino", "bf16", base).usable
    with pytest.raises(PrecisionNotValidated, match="runtime precision openvino:fp16"):
        check_runtime_precision(manifest, "openvino", "fp16", base)
    # the graph's own precision needs no runtime record
    assert check_runtime_precision({}, "openvino", "fp32", base).usable
    stale = {"validation": {"runtime_precisions": {"openvino:bf16": {"passed": True, "artifact_sha256": "c" * 64}}}}
    with pytest.raises(PrecisionNotValidated, match="another file"):
        check_runtime_precision(stale, "openvino", "bf16", base)


def test_gate_module_is_light():
    code = "import sys, edgeinfer.gate; print(sorted({'numpy', 'onnx', 'onnxruntime', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
