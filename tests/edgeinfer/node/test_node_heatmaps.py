"""Heatmaps through the node, against real peers: a flagged study's heatmap Secondary Captures reach Orthanc
with its SR (which references them), come back through Orthanc's REST API as images whose pixels decode,
pass dicom3tools' dciodvfy, and the node's /heatmap/... serves the same heatmap as PNG."""
from __future__ import annotations

import io
import subprocess
import urllib.request

import cv2
import numpy as np
import pydicom
import pytest

import peers

SC = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def flagged_set(tmp_path_factory):
    from edgeinfer import phantom

    out = tmp_path_factory.mktemp("heatmap_studies") / "set"
    rows = phantom.generate(out, 6, seed=21, max_size=512)
    return out, rows


def _png(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "image/png"
        data = r.read()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a PNG"
    return img


def test_flagged_studies_send_heatmap_images_with_the_sr_and_orthanc_decodes_them(node_factory, orthanc, dcmtk,
                                                                                   flagged_set, tmp_path):
    dciodvfy = peers.require_binary("dciodvfy")
    folder, rows = flagged_set
    node = node_factory("--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "--quiet-seconds", "2")
    assert node.store([folder]).returncode == 0
    study_uids = sorted({r["study_uid"] for r in rows})
    for uid in study_uids:
        orthanc.wait_for_srs(uid, 1, timeout=90)
    _, wl = node.get("/worklist")
    with_maps = {s["study_uid"]: [(i["sop_instance_uid"], h["label"]) for i in s["images"] for h in i.get("heatmaps", [])]
                 for s in wl["studies"]}
    flagged = [s["study_uid"] for s in wl["studies"] if s["priority"] in ("STAT", "URGENT")]
    assert flagged, "the phantom set should hold a study the model flags"
    assert all(with_maps[u] for u in flagged) and not any(with_maps[u] for u in study_uids if u not in flagged)
    for uid in study_uids:
        instances = peers.wait_until(
            lambda: (lambda i: i if len([x for x in i if x["SOPClassUID"] == SC]) >= len(with_maps[uid]) else None)(
                orthanc.instances(uid)), 60, 0.3, f"the heatmaps of {uid} in Orthanc")
        scs = [i for i in instances if i["SOPClassUID"] == SC]
        assert len(scs) == len(with_maps[uid])
        (sr_tags,) = orthanc.srs(uid)
        sr = pydicom.dcmread(io.BytesIO(orthanc.instance_file(sr_tags["OrthancId"])))
        referenced = {r.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for r in _walk(sr.ContentSequence)
                      if r.ValueType == "IMAGE" and r.ConceptNameCodeSequence[0].CodeValue == "HEATMAP"}
        assert referenced == {i["SOPInstanceUID"] for i in scs}
        for sc in scs:
            data = orthanc.instance_file(sc["OrthancId"])
            ds = pydicom.dcmread(io.BytesIO(data))
            assert ds.StudyInstanceUID == uid and ds.pixel_array.shape[2] == 3 and ds.BurnedInAnnotation == "YES"
            preview = orthanc.rest_raw(f"/instances/{sc['OrthancId']}/preview")   # Orthanc decodes it itself
            assert cv2.imdecode(np.frombuffer(preview, np.uint8), cv2.IMREAD_COLOR).shape[:2] == ds.pixel_array.shape[:2]
            path = tmp_path / f"{sc['SOPInstanceUID']}.dcm"
            path.write_bytes(data)
            out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
            assert not [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")], out.stderr
    # the node serves the same heatmap, drawn on the image, and refuses what is not there
    uid = flagged[0]
    sop, label = with_maps[uid][0]
    base = f"http://127.0.0.1:{node.http_port}/heatmap/{uid}/{sop}/{label}"
    big, small = _png(base), _png(base + "?size=96")
    assert max(big.shape[:2]) > max(small.shape[:2]) and max(small.shape[:2]) == 96   # a thumbnail: no banner
    assert (big[:20] < 30).mean() > 0.7 and (big[:40] > 200).any()      # the full image: its black banner, text
    assert node.get(f"/heatmap/{uid}/{sop}/no-such-label")[0] == 404
    assert node.get(f"/heatmap/{uid}/{sop}/{label}?size=5")[0] == 400
    page = node.get("/")[1]
    assert f'/heatmap/{uid}/{sop}/{label}' in page


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))
