"""The triage result as a TID 1500 SR: same study and patient, content, references, identity, PHI."""
from __future__ import annotations

import copy
import datetime as dt
import io
import logging
import subprocess
import warnings

import pydicom
import pytest

import peers
from edgeinfer import phantom
from edgeinfer.dicomout import SRError, build_sr, sr_bytes, sr_uids
from edgeinfer.triage import INDETERMINATE

CANARY = "CANARY^PHI"
NOW = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def two_image(triaged):
    """(study record, sources, bundle, run) of the phantom study with two images (deep copies)."""
    wl, headers = triaged
    study = next(s for s in wl.studies if len(s["images"]) == 2)
    return (copy.deepcopy(study), copy.deepcopy(headers[study["study_uid"]]), copy.deepcopy(wl.bundle),
            copy.deepcopy(wl.run))


def make(case, **kw):
    study, sources, bundle, run = case
    args = dict(bundle=bundle, run=run, version=1, now=NOW) | kw
    return build_sr(study, sources, **args)


def written(ds, tmp_path, name="sr.dcm"):
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path, pydicom.dcmread(path)


def walk(items):
    for item in items:
        yield item
        yield from walk(item.get("ContentSequence", []))


def items_named(ds, code_value, value_type=None):
    return [i for i in walk(ds.ContentSequence) if "ConceptNameCodeSequence" in i
            and i.ConceptNameCodeSequence[0].CodeValue == code_value
            and (value_type is None or i.ValueType == value_type)]


def num(item) -> float:
    return float(item.MeasuredValueSequence[0].FloatingPointValue)


def indeterminate(case):
    """The two-image study as the triage engine records it when no image could be analysed."""
    study = case[0]
    for img in study["images"]:
        img.update(status="indeterminate", score=None, reason="model output is not a finite probability",
                   label_scores={k: None for k in img["label_scores"]})
    study.update(priority=INDETERMINATE, score=None, failed_images=["/spool/CANARY-PATH/img9.dcm"],
                 reason="3 image(s) could not be analysed - CANARY-REASON - needs a human read")
    return case


# --- the document ------------------------------------------------------------------------------
def test_sr_is_in_the_source_study_with_the_patient_copied(two_image, tmp_path):
    study, sources = two_image[0], two_image[1]
    _, back = written(make(two_image), tmp_path)
    src = sources[0]
    assert back.StudyInstanceUID == study["study_uid"] == src.StudyInstanceUID
    assert back.PatientID == src.PatientID and str(back.PatientName) == CANARY
    assert back.PatientBirthDate == src.PatientBirthDate and back.PatientSex == src.PatientSex
    assert back.AccessionNumber == src.AccessionNumber and back.StudyID == src.StudyID
    assert back.StudyDate == src.StudyDate and back.StudyDescription == src.StudyDescription
    assert back.Modality == "SR" and back.SOPClassUID == COMPREHENSIVE_SR
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert back.SeriesNumber == 9901 and back.InstanceNumber == 1
    assert back.SeriesDescription == "edgeinfer triage v1" and back.Manufacturer == "edgeinfer"
    assert (back.ContentDate, back.ContentTime[:6], back.TimezoneOffsetFromUTC) == ("20250102", "030405", "+0000")
    assert back.InstanceCreationDate == "20250102"
    assert (back.CompletionFlag, back.VerificationFlag, back.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED",
                                                                                 "PRELIMINARY")
    assert back.SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources}
    tid = back.ContentTemplateSequence[0]
    assert (tid.TemplateIdentifier, tid.MappingResource) == ("1500", "DCMR")
    assert back.ConceptNameCodeSequence[0].CodeValue == "126000"     # Imaging Measurement Report
    assert [c.CodingSchemeDesignator for c in back.CodingSchemeIdentificationSequence] == ["99EDGEINFER"]


def test_content_holds_score_label_probabilities_priority_and_algorithm(two_image, tmp_path):
    study, _, bundle, run = two_image
    _, back = written(make(two_image, manufacturer="Example Health"), tmp_path)
    (score,) = items_named(back, "STUDYSCORE", "NUM")
    assert num(score) == pytest.approx(study["score"])
    unit = score.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("{probability}", "UCUM")
    for label, code in (("pneumothorax", "36118008"), ("mass", "4147007")):
        (item,) = items_named(back, code, "NUM")
        assert item.ConceptNameCodeSequence[0].CodingSchemeDesignator == "SCT"
        assert num(item) == pytest.approx(max(i["label_scores"][label] for i in study["images"]))
        (derivation,) = [c for c in item.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "121401"]
        assert derivation.ConceptCodeSequence[0].CodeValue == "56851009"     # Maximum
    (priority,) = items_named(back, "260870009", "CODE")
    value = priority.ConceptCodeSequence[0]
    assert (value.CodeValue, value.CodingSchemeDesignator) == (study["priority"], "99EDGEINFER")
    assert items_named(back, "111053") == []      # no follow-up asked for: every image was analysed
    (group,) = items_named(back, "125007", "CONTAINER")   # one Measurement Group (TID 1501)
    assert group in list(walk(items_named(back, "126010")))
    texts = {i.ConceptNameCodeSequence[0].CodeMeaning: [] for i in walk(back.ContentSequence)}
    for i in walk(back.ContentSequence):
        if i.ValueType == "TEXT":
            texts[i.ConceptNameCodeSequence[0].CodeMeaning].append(i.TextValue)
    assert texts["Algorithm Name"] == [bundle["name"]] and texts["Algorithm Version"] == [bundle["version"]]
    params = texts["Algorithm Parameters"]
    assert f"bundle digest sha256:{bundle['digest']}" in params
    assert f"precision {run['precision']}" in params and f"backend {run['backend']}" in params
    assert texts["Device Observer Name"] == ["edgeinfer"]
    assert texts["Device Observer Model Name"] == [f"{bundle['name']} {bundle['version']}"]
    assert texts["Device Observer Manufacturer"] == ["Example Health"]
    (observer,) = items_named(back, "121005", "CODE")
    assert observer.ConceptCodeSequence[0].CodeValue == "121007"   # Device
    (procedure,) = items_named(back, "121058", "CODE")
    assert procedure.ConceptCodeSequence[0].CodeValue == "363679005"


def test_every_source_image_is_referenced(two_image, tmp_path):
    sources = two_image[1]
    _, back = written(make(two_image), tmp_path)
    (library,) = items_named(back, "111028", "CONTAINER")
    refs = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID: i.ReferencedSOPSequence[0].ReferencedSOPClassUID
            for i in walk(library.ContentSequence) if i.ValueType == "IMAGE"}
    assert refs == {s.SOPInstanceUID: s.SOPClassUID for s in sources}
    evidence = {(series.SeriesInstanceUID, inst.ReferencedSOPInstanceUID)
                for study in back.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for inst in series.ReferencedSOPSequence}
    assert evidence == {(s.SeriesInstanceUID, s.SOPInstanceUID) for s in sources}
    assert "PertinentOtherEvidenceSequence" not in back


def test_identity_is_deterministic_per_study_version_and_bundle(two_image):
    study, _, bundle, _ = two_image
    a, b = make(two_image), make(two_image, now=NOW + dt.timedelta(hours=5))
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert sr_bytes(a) == sr_bytes(make(two_image))          # a resend is byte for byte the same
    v2 = make(two_image, version=2)
    assert v2.SOPInstanceUID != a.SOPInstanceUID and v2.SeriesInstanceUID != a.SeriesInstanceUID
    assert v2.SeriesNumber == 9902 and v2.SeriesDescription == "edgeinfer triage v2"
    other_model = make((study, two_image[1], bundle | {"digest": "0" * 64}, two_image[3]))
    assert other_model.SOPInstanceUID not in (a.SOPInstanceUID, v2.SOPInstanceUID)
    assert sr_uids(study["study_uid"], 1, bundle["digest"]) == (a.SeriesInstanceUID, a.SOPInstanceUID)
    assert all(len(u) <= 64 and pydicom.uid.UID(u).is_valid for u in (a.SOPInstanceUID, a.SeriesInstanceUID))


def test_sr_bytes_is_a_part10_file(two_image):
    ds = make(two_image)
    data = sr_bytes(ds)
    assert data[128:132] == b"DICM"
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.SOPInstanceUID == ds.SOPInstanceUID and str(back.PatientName) == CANARY


# --- human read --------------------------------------------------------------------------------
def test_indeterminate_study_without_score_says_human_read(two_image, tmp_path):
    case = indeterminate(two_image)
    _, back = written(make(case), tmp_path)
    assert items_named(back, "STUDYSCORE") == []
    assert items_named(back, "36118008") == [] and items_named(back, "4147007") == []
    (priority,) = items_named(back, "260870009", "CODE")
    assert priority.ConceptCodeSequence[0].CodeValue == INDETERMINATE
    assert "human read" in priority.ConceptCodeSequence[0].CodeMeaning
    (follow_up,) = items_named(back, "111053", "CODE")
    assert follow_up.ConceptCodeSequence[0].CodeMeaning == "Needs a human read"
    (reason,) = items_named(back, "HUMANREADREASON", "TEXT")
    assert reason.TextValue == "3 of 3 image(s) could not be analysed; no study score - needs a human read"
    assert back.CompletionFlag == "PARTIAL"
    raw = sr_bytes(back)
    assert b"CANARY-PATH" not in raw and b"CANARY-REASON" not in raw   # paths and free text are not copied


def test_failed_image_in_an_urgent_study_keeps_priority_and_asks_for_human_read(two_image, tmp_path):
    study = two_image[0]
    study.update(priority="STAT", failed_images=["/x/y.dcm"], reason="1 image(s) could not be analysed - needs "
                                                                     "a human read")
    _, back = written(make(two_image), tmp_path)
    assert items_named(back, "260870009")[0].ConceptCodeSequence[0].CodeValue == "STAT"
    assert items_named(back, "STUDYSCORE")
    (reason,) = items_named(back, "HUMANREADREASON", "TEXT")
    assert reason.TextValue == "1 of 3 image(s) could not be analysed - needs a human read"


# --- DCMTK -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["scored", "indeterminate"])
def test_dcmtk_dsrdump_accepts_the_document(two_image, tmp_path, kind):
    dsrdump = peers.require_binary("dsrdump")   # skips when DCMTK is missing, fails under CI
    case = indeterminate(two_image) if kind == "indeterminate" else two_image
    path, _ = written(make(case), tmp_path)
    out = subprocess.run([dsrdump, "+Pt", str(path)], capture_output=True, text=True, timeout=60)
    problems = [line for line in out.stderr.splitlines() if line.startswith(("E:", "W:", "F:"))]
    assert out.returncode == 0 and not problems, out.stderr
    assert out.stdout.startswith("Comprehensive SR Document")
    assert "TID 1500" in out.stdout
    assert "Imaging Measurement Report" in out.stdout


@pytest.mark.parametrize("kind", ["scored", "indeterminate"])
def test_dicom3tools_dciodvfy_finds_no_error_in_the_document(two_image, tmp_path, kind):
    # an independent validator of the IOD (dicom3tools): errors fail, warnings are allowed
    dciodvfy = peers.require_binary("dciodvfy")  # skips when dicom3tools is missing, fails under CI
    case = indeterminate(two_image) if kind == "indeterminate" else two_image
    path, _ = written(make(case), tmp_path)
    out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    errors = [line for line in text.splitlines() if line.startswith("Error")]
    assert not errors, text
    assert "ComprehensiveSR" in text or "Comprehensive SR" in text, text


def test_dicom3tools_dcentvfy_finds_no_error_in_phantom_studies(tmp_path):
    # series-level attributes are the same across a series (a repeat view used to name itself in one)

    dcentvfy = peers.require_binary("dcentvfy")
    phantom.generate(tmp_path / "set", 30, seed=7, max_size=128)
    multi = [d for d in sorted((tmp_path / "set").iterdir()) if d.is_dir() and len(list(d.rglob("*.dcm"))) > 1]
    assert multi, "the set should hold studies of several images"
    for d in multi:
        out = subprocess.run([dcentvfy, *map(str, sorted(d.rglob("*.dcm")))], capture_output=True, text=True,
                             timeout=60)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert not errors, (d.name, out.stdout + out.stderr)


# --- sources -----------------------------------------------------------------------------------
def test_other_studies_and_non_images_are_left_out(two_image, triaged, caplog):
    wl, headers = triaged
    study, sources = two_image[0], two_image[1]
    stranger = copy.deepcopy(next(h[0] for uid, h in headers.items() if uid != study["study_uid"]))
    stranger.PatientID = sources[0].PatientID
    note = pydicom.Dataset()          # a non-image instance of the same study (a KO, say)
    note.update({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.59", "SOPInstanceUID": "1.2.3.4.5",
                 "SeriesInstanceUID": "1.2.3.4", "StudyInstanceUID": study["study_uid"], "PatientName": CANARY})
    caplog.set_level(logging.DEBUG)
    ds = build_sr(study, [stranger, *sources, note, sources[0]], bundle=two_image[2], run=two_image[3],
                  version=1, now=NOW)
    refs = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in walk(ds.ContentSequence)
            if i.ValueType == "IMAGE"}
    assert refs == {s.SOPInstanceUID for s in sources}
    assert "1 source(s) of another study, 1 non-image instance(s)" in caplog.text


def test_header_without_library_descriptors_still_listed(two_image, tmp_path):
    for s in two_image[1]:
        del s.ImagerPixelSpacing
        del s.PatientOrientation
    _, back = written(make(two_image), tmp_path)
    images = [i for i in walk(back.ContentSequence) if i.ValueType == "IMAGE"]
    assert len(images) == 2 and all("ContentSequence" not in i for i in images)


def test_type2_patient_attributes_missing_in_the_source_are_empty(two_image, tmp_path):
    for s in two_image[1]:
        del s.PatientBirthDate
        del s.AccessionNumber
    _, back = written(make(two_image), tmp_path)
    assert back.PatientBirthDate == "" and back.AccessionNumber == "" and str(back.PatientName) == CANARY


def test_non_ascii_patient_name_survives_in_its_character_set(two_image, tmp_path):
    for s in two_image[1]:
        s.SpecificCharacterSet = "ISO_IR 100"
        s.PatientName = "CANÄRY^PHÏ"
    path, back = written(make(two_image), tmp_path)
    assert back.SpecificCharacterSet == "ISO_IR 100" and str(back.PatientName) == "CANÄRY^PHÏ"


def test_refusals(two_image):
    study, sources, bundle, run = two_image
    with pytest.raises(SRError, match="no source image header of this study"):
        build_sr(study | {"study_uid": "1.2.3"}, sources, bundle=bundle, run=run, version=1)
    with pytest.raises(SRError, match="positive integer"):
        make(two_image, version=0)
    other = copy.deepcopy(sources)
    other[1].PatientID = "SOMEONE-ELSE"
    with pytest.raises(SRError, match="2 different patients") as err:
        build_sr(study, other, bundle=bundle, run=run, version=1)
    assert "SOMEONE-ELSE" not in str(err.value)


# --- patient data stays out of logs, warnings and errors -----------------------------------------
def test_no_patient_data_in_logs_warnings_or_errors(two_image, caplog, monkeypatch):
    study, sources, bundle, run = two_image
    with pydicom.config.disable_value_validation():
        for s in sources:
            s.PatientName = "CANARYPHI"          # one component: highdicom warns with the name
            s.PatientBirthDate = "CANARY-DOB"    # not a date: pydicom complains with the value
    caplog.set_level(logging.DEBUG)
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_sr(study, sources, bundle=bundle, run=run, version=1, now=NOW)
        sr_bytes(ds)
        with pytest.raises(SRError) as err:
            build_sr(study, [], bundle=bundle, run=run, version=1)
        seen.append(err.value)
        other = copy.deepcopy(sources)
        other[0].PatientID = "CANARY-ID"
        with pytest.raises(SRError) as err:
            build_sr(study, other, bundle=bundle, run=run, version=1)
        seen.append(err.value)

        import highdicom

        def explode(*a, **k):
            raise ValueError("patient CANARYPHI has a bad value")

        monkeypatch.setattr(highdicom.sr, "ComprehensiveSR", explode)
        with pytest.raises(SRError, match=r"building the SR failed \(document: ValueError\)") as err:
            build_sr(study, sources, bundle=bundle, run=run, version=1)
        assert err.value.__cause__ is None and err.value.__suppress_context__
        seen.append(err.value)
    assert str(ds.PatientName) == "CANARYPHI"   # it is in the SR, where it belongs
    assert "CANARY" not in caplog.text
    assert not [w for w in caught if "CANARY" in str(w.message)]
    assert not [e for e in seen if "CANARY" in str(e)]
    assert f"SR built for study {study['study_uid']}" in caplog.text


# --- codes in the document ---------------------------------------------------------------------
def test_unlisted_label_gets_a_private_code_in_the_document(two_image):
    study = two_image[0]
    for img in study["images"]:
        img["label_scores"]["rib fracture"] = 0.25
    ds = make(two_image)
    (item,) = items_named(ds, "L_RIB_FRACTURE", "NUM")
    assert item.ConceptNameCodeSequence[0].CodingSchemeDesignator == "99EDGEINFER" and num(item) == 0.25


def test_labels_sharing_a_private_code_value_stay_apart(two_image):
    for img in two_image[0]["images"]:
        img["label_scores"].update({"rib fracture": 0.25, "rib-fracture": 0.5})
    ds = make(two_image)
    codes = [i.ConceptNameCodeSequence[0] for i in walk(ds.ContentSequence)
             if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeMeaning.startswith("rib")]
    assert [c.CodeMeaning for c in codes] == ["rib fracture", "rib-fracture"]
    assert codes[0].CodeValue == "L_RIB_FRACTURE" and codes[1].CodeValue not in ("L_RIB_FRACTURE",)


def test_scored_image_without_a_header_is_reported_by_count(two_image, caplog):
    caplog.set_level(logging.WARNING)
    study, sources = two_image[0], two_image[1]
    ds = build_sr(study, sources[:1], bundle=two_image[2], run=two_image[3], version=1, now=NOW)
    assert len([i for i in walk(ds.ContentSequence) if i.ValueType == "IMAGE"]) == 1
    assert "1 scored image(s) have no source header" in caplog.text
