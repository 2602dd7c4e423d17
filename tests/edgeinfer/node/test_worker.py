"""Every study the node acknowledges reaches a person: an SR in PACS for each result (human reads included),
naming every image, or a not-applicable row on the worklist. A real node, Orthanc as PACS, pynetdicom sending."""
from __future__ import annotations

import copy
import io
import warnings

import pydicom
from pydicom.uid import generate_uid

from test_receiver import _deflate_bomb, _send


def _variant(src, study, *, modality=None, pixels=True, series=None):
    ds = copy.deepcopy(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.StudyInstanceUID, ds.SOPInstanceUID = study, generate_uid()
        ds.SeriesInstanceUID = series or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if modality:
        ds.Modality = modality
    if not pixels:
        del ds.PixelData
    return ds


def _referenced(sr: pydicom.Dataset) -> set[str]:
    out = set()
    for elem in sr.iterall():
        if elem.keyword == "ReferencedSOPInstanceUID":
            out.add(str(elem.value))
    return out


def test_every_acknowledged_study_reaches_a_person(node_factory, orthanc, dcmtk, node_phantoms, tmp_path):
    src = pydicom.dcmread(sorted(node_phantoms.rglob("*.dcm"))[0])
    one_unread, no_pixels, ct, ct_no_pixels = (generate_uid() for _ in range(4))
    series = generate_uid()
    good = _variant(src, one_unread, series=series)
    bad = _variant(src, one_unread, pixels=False, series=series)
    lone = _variant(src, no_pixels, pixels=False)
    bomb = tmp_path / "bomb.dcm"
    _deflate_bomb(src, bomb, zeros=80 << 20)                              # a study of its own: its pixels are zeros
    bomb_ds = pydicom.dcmread(bomb, stop_before_pixels=True)
    bomb_study = str(bomb_ds.StudyInstanceUID)
    node = node_factory("--quiet-seconds", "1", "--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}")
    sent = _send(node, [good, bad, lone, _variant(src, ct, modality="CT"),
                        _variant(src, ct_no_pixels, modality="CT", pixels=False), bomb])
    assert sent == [0x0000] * 6

    # a study with one unreadable image: scored on the other, and its SR names both
    (sr_id,) = [s["OrthancId"] for s in orthanc.wait_for_srs(one_unread, 1, timeout=60)]
    sr = pydicom.dcmread(io.BytesIO(orthanc.instance_file(sr_id)))
    assert {str(good.SOPInstanceUID), str(bad.SOPInstanceUID)} <= _referenced(sr)
    # a study none of whose images can be read, and one whose only image is a deflate bomb: human reads, with SRs
    for uid in (no_pixels, bomb_study):
        assert len(orthanc.wait_for_srs(uid, 1, timeout=60)) == 1
    _, wl = node.get("/worklist")
    studies = {s["study_uid"]: s for s in wl["studies"]}
    assert studies[no_pixels]["priority"] == "INDETERMINATE" and studies[bomb_study]["priority"] == "INDETERMINATE"
    assert studies[one_unread]["priority"] != "INDETERMINATE" or "reason" in studies[one_unread]
    # CT, with and without pixel data: not for this chest model, listed as such, never a chest read, no SR
    na = {n["study_uid"]: n for n in wl["not_applicable"]}
    assert set(na) == {ct, ct_no_pixels} and ct not in studies and ct_no_pixels not in studies
    assert all("modality" in r for n in na.values() for r in n["reasons"])
    assert orthanc.srs(ct) == [] and orthanc.srs(ct_no_pixels) == []
    assert wl["summary"]["not_applicable"] == 2
    assert str(bomb_ds.PatientName) not in node.log.read_text()


def test_the_sr_comes_from_the_header_kept_at_receive_time_never_from_the_image_again(
        node_factory, orthanc, dcmtk, node_phantoms):
    """The spool file is destroyed after its acknowledgement (a disk fault): the image cannot be analysed, but the
    header the receiver kept still files an SR under the right patient, naming the image."""
    import sqlite3

    import peers

    src = pydicom.dcmread(sorted(node_phantoms.rglob("*.dcm"))[0])
    study = generate_uid()
    ds = _variant(src, study)
    node = node_factory("--quiet-seconds", "3", "--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}")
    assert _send(node, [ds]) == [0x0000]
    con = sqlite3.connect(f"file:{node.spool / 'state.sqlite3'}?mode=ro", uri=True)
    ((path, header),) = con.execute("SELECT path, header FROM instances WHERE study_uid=?", (study,)).fetchall()
    con.close()
    assert header and b"PixelData" not in header and len(header) < 8192
    with open(path, "r+b") as f:                      # within the quiet period: the image is gone
        f.write(bytes(f.seek(0, 2)))
    (sr_id,) = [s["OrthancId"] for s in orthanc.wait_for_srs(study, 1, timeout=60)]
    sr = pydicom.dcmread(io.BytesIO(orthanc.instance_file(sr_id)))
    assert str(sr.PatientID) == str(src.PatientID) and str(ds.SOPInstanceUID) in _referenced(sr)
    found = peers.wait_until(lambda: next((s for s in node.get("/worklist")[1]["studies"]
                                           if s["study_uid"] == study), None), 30, 0.2, "the study on the worklist")
    assert found["priority"] == "INDETERMINATE"


def test_a_second_result_object_per_study_needs_only_a_writer(node_factory, orthanc, dcmtk, node_phantoms, monkeypatch):
    """A writer from outside edgeinfer (tests/edgeinfer/node/dummy_writers.py) adds a second object to every study
    version: both reach PACS, each its own outbox item, without a change to the worker, the outbox or triage."""
    from pathlib import Path

    import peers

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    src = pydicom.dcmread(sorted(node_phantoms.rglob("*.dcm"))[0])
    study = generate_uid()
    node = node_factory("--quiet-seconds", "1", "--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
                        "--result", "sr", "--result", "dummy_writers:second_sr")
    assert _send(node, [_variant(src, study)]) == [0x0000]
    srs = orthanc.wait_for_srs(study, 2, timeout=60)
    uids = {str(pydicom.dcmread(io.BytesIO(orthanc.instance_file(s["OrthancId"]))).SOPInstanceUID) for s in srs}
    assert len(uids) == 2 and any(u.startswith("1.2.826.0.1.3680043.10.543.") for u in uids)
    peers.wait_until(lambda: peers.metric(node.get("/metrics")[1], "edgeinfer_outbox_items", '{state="sent"}') == 2,
                     30, 0.2, "both outbox items sent")
