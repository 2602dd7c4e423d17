"""edgeinfer serve end to end, against real peers: DCMTK's storescu/echoscu as the modality, Orthanc as the PACS."""
from __future__ import annotations

import json
import subprocess
import time
import warnings
from collections import Counter

import pydicom
import pytest

import peers
from edgeinfer.node.status import Status
from peers import NODE_AET

@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    from edgeinfer import phantom

    out = tmp_path_factory.mktemp("node_studies") / "set"
    rows = phantom.generate(out, 10, seed=11, max_size=256)
    return out, sorted({r["study_uid"] for r in rows})


def test_serve_triages_each_study_and_puts_one_sr_per_study_into_pacs(node_factory, orthanc, dcmtk, studies, tmp_path):
    folder, study_uids = studies
    wl_file = tmp_path / "worklist.json"
    node = node_factory("--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "--quiet-seconds", "2",
                        "--worklist", str(wl_file))
    assert node.get("/readyz")[0] == 200
    assert peers.echoscu("127.0.0.1", node.port, NODE_AET).returncode == 0
    sent = node.store([folder])
    assert sent.returncode == 0, sent.stderr[-2000:]
    n_files = len(list(folder.rglob("*.dcm")))
    assert peers.parse_store_statuses(sent.stdout + sent.stderr) == [0] * n_files
    for uid in study_uids:
        srs = orthanc.wait_for_srs(uid, 1, timeout=60)
        assert len(srs) == 1
    time.sleep(1.0)  # nothing else arrives: exactly one SR per study
    assert all(len(orthanc.srs(uid)) == 1 for uid in study_uids)
    code, wl = node.get("/worklist")
    assert code == 200 and sorted(s["study_uid"] for s in wl["studies"]) == study_uids
    import jsonschema

    from helpers import ROOT
    jsonschema.validate(wl, json.loads((ROOT / "edgeinfer" / "schema" / "worklist-v1.schema.json").read_text()))
    assert json.loads(wl_file.read_text())["summary"]["studies"] == len(study_uids)
    # one window of the worklist: the default (the last 24 h, 500 studies), a page of one, a window in the future
    assert wl["window"]["studies_in_window"] == len(study_uids) and wl["window"]["truncated"] is False
    _, one = node.get("/worklist?limit=1&offset=1")
    assert [s["study_uid"] for s in one["studies"]] == [wl["studies"][1]["study_uid"]]
    assert one["window"] | {"since": None, "as_of": None} == {
        "since": None, "as_of": None, "limit": 1, "offset": 1, "studies_in_window": len(study_uids),
        "by_priority_in_window": wl["window"]["by_priority_in_window"], "truncated": True}
    _, later = node.get(f"/worklist?since={time.time() + 60:.0f}")
    assert later["studies"] == [] and later["window"]["studies_in_window"] == 0
    assert node.get("/worklist?limit=lots")[0] == 400
    # the audit log: one line per study received, with its instance count and sender, never one per instance
    per_study = Counter(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in folder.rglob("*.dcm"))
    log = node.log.read_text()
    for uid, n in per_study.items():
        assert log.count(f"study {uid} received: ") == 1
        assert f"study {uid} received: {n} instance(s) from MODALITY (quiet period passed)" in log
    assert " instance 1." not in log
    sr = pydicom.dcmread(__import__("io").BytesIO(orthanc.instance_file(orthanc.srs(study_uids[0])[0]["OrthancId"])))
    assert sr.StudyInstanceUID == study_uids[0] and sr.Modality == "SR"
    dump = subprocess.run([dcmtk["dsrdump"], "-"], input=orthanc.instance_file(orthanc.srs(study_uids[0])[0]["OrthancId"]),
                          capture_output=True)
    assert dump.returncode == 0, dump.stderr[-1000:]
    _, metrics = node.get("/metrics")
    assert f'edgeinfer_instances_total{{outcome="stored"}} {float(n_files)}' in metrics
    assert 'edgeinfer_outbox_sent_total{destination=' in metrics
    # resending the same instances changes nothing: no new version, no new SR
    node.store([folder])
    time.sleep(3.5)
    assert all(len(orthanc.srs(uid)) == 1 for uid in study_uids)


def test_late_image_rescores_the_study_and_supersedes(node_factory, orthanc, dcmtk, studies, tmp_path):
    folder, study_uids = studies
    node = node_factory("--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "--quiet-seconds", "1")
    multi = next(d for d in sorted(folder.iterdir()) if d.is_dir() and len(list(d.rglob("*.dcm"))) > 1)
    first, *rest = sorted(multi.rglob("*.dcm"))
    uid = str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)
    assert node.store([first]).returncode == 0
    orthanc.wait_for_srs(uid, 1, timeout=60)
    assert node.store(rest).returncode == 0
    srs = orthanc.wait_for_srs(uid, 2, timeout=60)
    assert len(srs) == 2                                   # v1 and v2, both in PACS
    _, wl = node.get("/worklist")
    study = next(s for s in wl["studies"] if s["study_uid"] == uid)
    assert study["version"] == 2 and len(study["images"]) == 1 + len(rest)


def test_unknown_calling_ae_is_rejected_and_a_full_spool_answers_a700(node_factory, dcmtk, node_phantoms, tmp_path):
    node = node_factory("--allow-calling", "MODALITY", "--min-free-mb", str(10**9))
    assert peers.echoscu("127.0.0.1", node.port, NODE_AET, calling_aet="STRANGER").returncode != 0
    assert peers.echoscu("127.0.0.1", node.port, NODE_AET, calling_aet="MODALITY").returncode == 0
    r = node.store([node_phantoms], extra=("-xr", "-nh"))
    statuses = peers.parse_store_statuses(r.stdout + r.stderr)
    assert statuses and set(statuses) == {0xA700}           # out of resources, never Success
    code, body = node.get("/readyz")
    assert code == 503 and any("free" in reason for reason in body["reasons"])
    assert not list((node.spool / "instances").rglob("*.dcm"))


def test_hostile_uids_never_become_paths_and_get_a_failure_status(node_factory, node_phantoms):
    from pynetdicom import AE

    node = node_factory()
    src = pydicom.dcmread(sorted(node_phantoms.rglob("*.dcm"))[0])
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(src.SOPClassUID, src.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
    assert assoc.is_established
    statuses = []
    for sop, study in (("../../x", src.StudyInstanceUID), ("1.2.3", "/etc/passwd"), ("ABC.PATIENT", "1.2.3")):
        ds = src.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns (quoting the value) about the invalid UIDs we set
            ds.SOPInstanceUID, ds.StudyInstanceUID = sop, study
        ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
        statuses.append(assoc.send_c_store(ds).Status)
    assoc.release()
    assert statuses == [Status.CANNOT_UNDERSTAND] * 3
    stored = list(node.spool.rglob("*"))
    assert all(p.resolve().is_relative_to(node.spool.resolve()) for p in stored)
    assert not (node.spool.parent / "x").exists() and not list((node.spool / "instances").rglob("*.dcm"))


def test_a_study_whose_images_name_two_patients_goes_to_a_human_read_without_an_sr(node_factory, orthanc, dcmtk,
                                                                                    node_phantoms, tmp_path):
    from pydicom.uid import generate_uid

    node = node_factory("--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "--quiet-seconds", "1")
    study = generate_uid()
    for i, src in enumerate(sorted(node_phantoms.rglob("*.dcm"))[:2]):
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID, ds.PatientID = study, f"PATIENT{i}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(tmp_path / f"mixed{i}.dcm", enforce_file_format=True)
    assert node.store([tmp_path / "mixed0.dcm", tmp_path / "mixed1.dcm"]).returncode == 0

    def result():
        code, wl = node.get("/worklist")
        return next((s for s in wl["studies"] if s["study_uid"] == study), None)
    found = peers.wait_until(result, 60, 0.3, "the mixed-patient study in the worklist")
    assert found["priority"] == "INDETERMINATE" and "human read" in found["reason"]
    assert "PATIENT" not in found["reason"]
    time.sleep(2)
    assert orthanc.srs(study) == [] and "PATIENT0" not in node.log.read_text()
    # a result that cannot reach PACS is counted and flagged, not only listed
    assert peers.metric(node.get("/metrics")[1], "edgeinfer_studies_without_sr") == 1
    code, ready = node.get("/readyz")
    assert code == 200 and ready["without_sr"] == {"studies": 1, "why": "no SR could be made (e.g. images naming "
                                                   "two patients): each is on the worklist as a human read"}


def test_a_full_detector_jpeg_2000_study_is_scored_from_its_reduced_decode(node_factory, orthanc, dcmtk,
                                                                          tmp_path):
    """A modality sends a 2500 x 2048 JPEG 2000 lossless image (storescu -xv); the node decodes it at
    reduced resolution (one wavelet level left out for the 256 x 256 model), scores it, and puts the
    SR into PACS. The worklist keeps the image's real size."""
    import numpy as np
    from pydicom.uid import JPEG2000Lossless

    from edgeinfer import phantom
    from edgeinfer.phantom.dicom import compress

    [case] = phantom._make_study(np.random.default_rng(5), index=0, n_images=1, size=(2500, 2048),
                                 plan={"compress": False, "modality": "DX", "photometric": "MONOCHROME2",
                                       "bits": 12, "voi": "window"})
    ds = case.dataset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compress(ds, JPEG2000Lossless, ds.pixel_array)
    path = tmp_path / "j2k.dcm"
    ds.save_as(path)
    uid = str(ds.StudyInstanceUID)
    node = node_factory("--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "--quiet-seconds", "1")
    sent = node.store([path], extra=("-xv",))
    assert sent.returncode == 0 and peers.parse_store_statuses(sent.stdout + sent.stderr) == [0], sent.stderr[-2000:]
    assert len(orthanc.wait_for_srs(uid, 1, timeout=60)) == 1
    _, wl = node.get("/worklist")
    study = next(s for s in wl["studies"] if s["study_uid"] == uid)
    assert study["priority"] != "INDETERMINATE" and [i["source_shape"] for i in study["images"]] == [[2500, 2048]]
