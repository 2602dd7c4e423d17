"""The triage engine: grouping, priorities, fail-safe handling, and every file exactly once."""
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import make_bundle

from edgeinfer.backends import create_runner
from edgeinfer.bundle import load_bundle
from edgeinfer.intake import discover
from edgeinfer.triage import (INDETERMINATE, TriageEngine, evaluate_worklist, priority_for,
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


# --- nothing vanishes: unreadable folders and special files -------------------------------------
def _without_dac(cmd: list[str]) -> list[str]:
    """Run ``cmd`` as root without the capabilities that ignore permission bits (or as is, if not root)."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's DAC capabilities")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *cmd]


def test_special_files_in_the_tree_are_errors_with_a_reason(tiny_bundle, phantom_dir, tmp_path):
    d = tmp_path / "in"
    shutil.copytree(phantom_dir, d)
    os.mkfifo(d / "pipe.dcm")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.dcm"))
    (d / "loop").symlink_to(d)                  # a link to a folder: listed, not followed (no loop)
    (d / "gone.dcm").symlink_to(d / "nowhere")  # a dangling link
    try:
        wl = run(tiny_bundle, [d])
    finally:
        sock.close()
    errors = {Path(e["path"]).name: e for e in wl.errors}
    assert errors["pipe.dcm"]["code"] == "unreadable" and "FIFO" in errors["pipe.dcm"]["reason"]
    assert errors["sock.dcm"]["code"] == "unreadable" and "socket" in errors["sock.dcm"]["reason"]
    assert "link to a folder" in errors["loop"]["reason"]
    assert "missing file" in errors["gone.dcm"]["reason"]
    assert sorted(all_paths(wl)) == sorted(str(p) for p in discover([d]))
    assert wl.exit_code == 2


def test_a_study_in_an_unreadable_folder_is_an_error_and_exit_2(tiny_bundle, phantom_dir, tmp_path):
    d = tmp_path / "in"
    shutil.copytree(phantom_dir, d)
    hidden = sorted(p for p in d.iterdir() if p.is_dir())[0]
    n_hidden = len(list(hidden.rglob("*.dcm")))
    os.chmod(d, 0o755)
    os.chmod(tmp_path, 0o755)
    hidden.chmod(0)
    try:
        r = subprocess.run(_without_dac([sys.executable, "-m", "edgeinfer", "triage", str(d), "--bundle",
                                         str(tiny_bundle), "--backend", "onnxruntime", "--precision", "fp32",
                                         "--json"]), capture_output=True, text=True, timeout=300)
    finally:
        hidden.chmod(0o755)
    assert r.returncode == 2, r.stderr
    out = json.loads(r.stdout)
    err = next(e for e in out["errors"] if e["path"] == str(hidden))
    assert err["code"] == "unreadable" and "permission denied" in err["reason"]
    assert "nothing inside it was triaged" in err["reason"]
    scored = {i["path"] for s in out["studies"] for i in s["images"]}
    assert n_hidden and not any(p.startswith(str(hidden)) for p in scored)


# --- header values are checked against their VR grammar before they are shown ------------------
def _rewrite(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for k, v in values.items():
        setattr(ds, k, v)
    ds.save_as(path)


def test_canary_in_uid_and_code_string_fields_never_reaches_output(tiny_bundle, phantom_dir, tmp_path):
    d = tmp_path / "in"
    shutil.copytree(phantom_dir, d)
    files = sorted(d.rglob("*.dcm"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns (with the value) when we write invalid values
        _rewrite(files[0], Modality="PHI7731ID")
        _rewrite(files[1], BodyPartExamined="PHI7731ID")
        _rewrite(files[2], PhotometricInterpretation="PHI7731ID")
        _rewrite(files[3], StudyInstanceUID="1.2.PHI7731ID")
        _rewrite(files[4], SeriesInstanceUID="PHI7731.1.2")
        _rewrite(files[5], SOPInstanceUID="1.2." + "9" * 70)   # digits and dots, but too long
        _rewrite(files[6], Modality="dx phi7731")                 # not CS grammar
    out = tmp_path / "wl.json"
    r = subprocess.run([sys.executable, "-m", "edgeinfer", "-vv", "triage", str(d), "--bundle", str(tiny_bundle),
                        "--output", str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    text = r.stdout + r.stderr + out.read_text()
    assert "PHI7731" not in text.upper() and "9" * 65 not in text
    wl = json.loads(out.read_text())
    by_path = {e["path"]: e for e in wl["errors"] + wl["skipped"]}
    assert "<unlisted CS>" in by_path[str(files[0])]["reason"]
    assert "<unlisted CS>" in by_path[str(files[1])]["reason"]
    assert "<invalid CS>" in by_path[str(files[6])]["reason"]
    for f, keyword in ((files[3], "StudyInstanceUID"), (files[4], "SeriesInstanceUID"), (files[5], "SOPInstanceUID")):
        assert by_path[str(f)]["code"] == "invalid-uid" and keyword in by_path[str(f)]["reason"]
    # a malformed study UID is an error, not a study of its own
    assert all(s["study_uid"].replace(".", "").isdigit() for s in wl["studies"])


def test_surplus_pixel_data_is_used_as_described_and_noted(tiny_bundle, phantom_dir, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    src = next(p for p in sorted(phantom_dir.rglob("*.dcm")) if "RLE" not in p.name)
    ds = pydicom.dcmread(src)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        pytest.skip("needs an uncompressed phantom")
    ds.PixelData = ds.PixelData * 3               # NumberOfFrames 1 over three frames' worth of bytes
    ds.save_as(d / "surplus.dcm")
    wl = run(tiny_bundle, [d])
    img = wl.studies[0]["images"][0]
    assert img["status"] == "ok"
    assert any("only those were used" in n for n in img["notes"])


# --- heatmaps -----------------------------------------------------------------------------------
def test_flagged_studies_carry_heatmaps_placed_on_their_images(phantom_dir):
    """The embedded bundle outputs a class-activation map: each image of a STAT/URGENT study gets one heatmap per
    urgent label at or above the operating point, in the worklist's schema; other studies get none; none
    at all with heatmaps="none"."""
    import jsonschema

    from helpers import ROOT

    bundle = load_bundle()
    with create_runner(bundle.artifact(precision="fp32")) as runner:
        wl = TriageEngine(bundle, runner).run(discover([phantom_dir]))
        bare = TriageEngine(bundle, runner, heatmaps="none").run(discover([phantom_dir]))
    flagged = [s for s in wl.studies if s["priority"] in ("STAT", "URGENT")]
    assert flagged and len(flagged) < len(wl.studies)
    for s in wl.studies:
        maps = [(i, h) for i in s["images"] for h in i.get("heatmaps", [])]
        assert bool(maps) == (s in flagged), s["priority"]
        for img, h in maps:
            assert h["label"] in bundle.urgent_labels and h["score"] >= 0.5
            assert h["score"] == img["label_scores"][h["label"]]
            assert np.array(h["grid"]).shape == (8, 8) and h["input"] == {"size": [256, 256], "keep_aspect": False}
            rows, cols = img["source_shape"]
            assert 0 <= h["peak_rc"][0] < rows and 0 <= h["peak_rc"][1] < cols and len(h["spacing_mm"]) == 2
    assert not any(k.startswith("_") for s in wl.studies for i in s["images"] for k in i)
    jsonschema.validate(wl.as_dict(), json.loads((ROOT / "edgeinfer" / "schema" / "worklist-v1.schema.json").read_text()))
    assert not any("heatmaps" in i for s in bare.studies for i in s["images"])
    assert [s["score"] for s in bare.studies] == [s["score"] for s in wl.studies]   # the scores do not change


def test_a_map_of_another_shape_than_the_manifest_says_is_dropped_not_fatal(phantom_dir, caplog):
    bundle = load_bundle()

    class WrongMap:
        def __init__(self, runner):
            self.runner = runner

        def __getattr__(self, name):
            return getattr(self.runner, name)

        def infer(self, feeds):
            out = dict(self.runner.infer(feeds))
            out["cam"] = out["cam"][:, :, :4]
            return out

    with create_runner(bundle.artifact(precision="fp32")) as runner:
        wl = TriageEngine(bundle, WrongMap(runner)).run(discover([phantom_dir]))
    assert any(s["priority"] == "STAT" for s in wl.studies)
    assert not any("heatmaps" in i for s in wl.studies for i in s["images"])
    assert "its manifest says (" in caplog.text and "no heatmaps" in caplog.text


def test_an_unknown_heatmaps_setting_is_refused(tiny_bundle):
    from edgeinfer.errors import UsageError

    bundle = load_bundle(tiny_bundle)
    with create_runner(bundle.artifact(precision="fp32")) as runner, pytest.raises(UsageError, match="heatmaps 'all'"):
        TriageEngine(bundle, runner, heatmaps="all")
