"""The triage engine: grouping, priorities, fail-safe handling, and every file exactly once."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import make_bundle

from edgeinfer.backends import create_runner
from edgeinfer.bundle import load_bundle
from edgeinfer.triage import (INDETERMINATE, TriageEngine, discover, evaluate_worklist, priority_for,
                              priority_order, read_study_labels)


def run(bundle_dir, inputs, **kw):
    bundle = load_bundle(bundle_dir)
    with create_runner(bundle.artifact(precision="fp32")) as runner:
        return TriageEngine(bundle, runner, **kw).run(discover(inputs))


def all_paths(wl):
    d = wl.as_dict()
    return ([i["path"] for s in d["studies"] for i in s["images"]]
            + [r["path"] for r in d["skipped"]] + [r["path"] for r in d["errors"]])


@pytest.fixture
def mixed_dir(phantom_dir, corpus_dir, tmp_path):
    """Phantoms plus the kinds of junk a real folder holds."""
    d = tmp_path / "in"
    shutil.copytree(phantom_dir, d)
    (d / "empty.dcm").write_bytes(b"")
    (d / "notes.dcm").write_text("not dicom\n")
    (d / "random.bin").write_bytes(np.random.default_rng(1).bytes(4096))
    good = sorted(d.rglob("*.dcm"))[0]
    (d / "cut.dcm").write_bytes(good.read_bytes()[:2000])
    shutil.copy(corpus_dir / "test-SR.dcm", d / "report.dcm")
    shutil.copy(corpus_dir / "CT_small.dcm", d / "ct.dcm")
    return d


def test_every_file_appears_exactly_once(tiny_bundle, mixed_dir):
    wl = run(tiny_bundle, [mixed_dir], batch_size=4)
    files = [str(p) for p in discover([mixed_dir])]
    assert sorted(all_paths(wl)) == sorted(files)
    reasons = {Path(r["path"]).name: r for r in wl.errors + wl.skipped}
    assert reasons["empty.dcm"]["code"] == "not-dicom" and "empty" in reasons["empty.dcm"]["reason"]
    assert reasons["report.dcm"]["code"] == "not-applicable" and reasons["report.dcm"] in wl.skipped
    assert "modality CT" in reasons["ct.dcm"]["reason"] and reasons["ct.dcm"] in wl.skipped
    assert reasons["cut.dcm"] in wl.errors and reasons["labels.csv"]["code"] == "ignored"
    assert wl.exit_code == 2
    assert wl.summary["files"] == len(files)


def test_studies_grouped_scored_and_ordered(tiny_bundle, phantom_dir):
    wl = run(tiny_bundle, [phantom_dir])
    rows = list(csv.DictReader(open(phantom_dir / "labels.csv")))
    assert {s["study_uid"] for s in wl.studies} == {r["study_uid"] for r in rows}
    assert sum(len(s["images"]) for s in wl.studies) == len(rows)
    multi = [s for s in wl.studies if len(s["images"]) > 1]
    assert multi, "the phantom set should hold a study with two images"
    s = multi[0]
    assert s["score"] == max(i["score"] for i in s["images"])
    order = priority_order(load_bundle(tiny_bundle))
    keys = [(order.index(s["priority"]), -s["score"]) for s in wl.studies]
    assert keys == sorted(keys)
    assert wl.exit_code == 0 and not wl.errors


def test_result_records_model_and_timings(tiny_bundle, phantom_dir):
    d = run(tiny_bundle, [phantom_dir]).as_dict()
    s = d["studies"][0]
    assert set(s["model"]) == {"bundle", "bundle_version", "precision", "sha256", "backend", "provider"}
    assert s["model"]["provider"] == "CPUExecutionProvider" and len(s["model"]["sha256"]) == 64
    img = s["images"][0]
    assert set(img["timings_ms"]) == {"read", "preprocess", "infer", "total"}
    assert all(v >= 0 for v in img["timings_ms"].values())
    assert img["status"] == "ok" and 0 <= img["score"] <= 1
    json.dumps(d, allow_nan=False)  # valid strict JSON


def test_non_finite_output_is_indeterminate_never_routine(tmp_path, phantom_dir):
    nan_bundle = make_bundle(tmp_path / "nan", weight=float("nan"))
    wl = run(nan_bundle, [phantom_dir])
    assert wl.studies and all(s["priority"] == INDETERMINATE for s in wl.studies)
    assert all(i["status"] == "indeterminate" and i["score"] is None for s in wl.studies for i in s["images"])
    assert "human read" in wl.studies[0]["reason"]


def test_failed_image_makes_its_study_indeterminate(tiny_bundle, phantom_dir, tmp_path):
    d = tmp_path / "in"
    shutil.copytree(phantom_dir, d)
    victim = next(p for p in sorted(d.rglob("*.dcm")) if "RLE" not in p.name)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 5000])  # header intact, pixels cut short
    wl = run(tiny_bundle, [d])
    err = next(e for e in wl.errors if e["path"] == str(victim))
    study = next(s for s in wl.studies if s["study_uid"] == err.get("study_uid"))
    assert study["priority"] in (INDETERMINATE, "STAT", "URGENT")
    assert str(victim) in study["failed_images"]


def test_priority_policy(tiny_bundle):
    b = load_bundle(tiny_bundle)
    assert priority_order(b) == ["STAT", "URGENT", INDETERMINATE, "ROUTINE"]
    assert [priority_for(x, b) for x in (0.95, 0.9, 0.5, 0.49, 0.0)] == ["STAT", "STAT", "URGENT", "ROUTINE", "ROUTINE"]
    assert priority_for(None, b) == priority_for(float("nan"), b) == INDETERMINATE


def test_evaluation_against_labels(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("study_uid,label\na,urgent\nb,normal\nc,normal\nc,urgent\nd,normal\n")
    labels = read_study_labels(p)
    assert labels == {"a": True, "b": False, "c": True, "d": False}
    studies = [{"study_uid": "a", "score": 0.9}, {"study_uid": "b", "score": 0.1},
               {"study_uid": "c", "score": 0.4}, {"study_uid": "d", "score": None}, {"study_uid": "e", "score": 0.5}]
    ev = evaluate_worklist(studies, labels, 0.5)
    assert ev["auc"] == 1.0 and ev["n"] == 3 and ev["sensitivity"] == 0.5 and ev["specificity"] == 1.0
    assert ev["indeterminate_labelled"] == 1 and ev["unlabelled"] == 1


def test_pydicom_corpus_every_file_accounted_for(tiny_bundle, corpus_dir):
    """Every file pydicom ships (valid, damaged, non-image, non-DICOM) is a result, a skip or an error."""
    data_dir = corpus_dir.parent  # pydicom/data: test_files plus the package's own odds and ends
    files = discover([data_dir])
    wl = run(tiny_bundle, [data_dir])
    assert sorted(all_paths(wl)) == sorted(str(p) for p in files)
    assert len(files) > 150 and wl.skipped and wl.errors
    assert all(r["reason"] for r in wl.errors + wl.skipped)
    # a study whose images all failed is still listed, for a human read, never dropped
    assert all(s["priority"] == INDETERMINATE for s in wl.studies if not s["images"])
