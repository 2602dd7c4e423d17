"""A head CT through the node, against real peers: its slices sent by DCMTK's storescu in two associations, each
half in shuffled order, become one study once the quiet period ends; the embedded head-CT bundle segments the
chosen series (the scout beside it passed over), and one SR and one SEG reach Orthanc: both pass dciodvfy as
Orthanc returns them, the SEG loads in highdicom with a frame per source slice, the SR reports the volume on its segment, and /worklist and the
console page show the volume."""
from __future__ import annotations

import io
import random
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

import peers

SEG = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def head_ct(tmp_path_factory):
    from edgeinfer.phantom.ct_head import awkward_series, make_head_ct

    ct = make_head_ct(np.random.default_rng([31, 2]), index=1, finding="sdh", thickness=2.5)
    scout = awkward_series(ct, "scout", np.random.default_rng(1))
    out = tmp_path_factory.mktemp("node_ct")
    paths = []
    for k, ds in enumerate(ct.datasets + scout):
        p = out / f"{k:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return ct, paths


def test_a_head_ct_sent_in_two_associations_leaves_one_sr_and_one_seg_in_orthanc(node_factory, orthanc, dcmtk,
                                                                                  head_ct, tmp_path):
    ct, paths = head_ct
    node = node_factory("--bundle", "phantom-ct-head", "--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
                        "--quiet-seconds", "3")
    shuffled = list(paths)
    random.Random(5).shuffle(shuffled)
    half = len(shuffled) // 2
    for part in (shuffled[:half], shuffled[half:]):             # two associations, slices out of order
        assert node.store(part, pattern=None).returncode == 0
    orthanc.wait_for_srs(ct.study_uid, 1, timeout=120)
    instances = peers.wait_until(
        lambda: (lambda i: i if any(x["SOPClassUID"] == SEG for x in i) else None)(orthanc.instances(ct.study_uid)),
        60, 0.5, "the SEG in Orthanc")
    segs = [i for i in instances if i["SOPClassUID"] == SEG]
    srs = [i for i in instances if i.get("Modality") == "SR"]
    assert len(segs) == 1 and len(srs) == 1
    seg_bytes, sr_bytes = orthanc.instance_file(segs[0]["OrthancId"]), orthanc.instance_file(srs[0]["OrthancId"])
    dciodvfy = peers.require_binary("dciodvfy")
    for name, data in (("seg", seg_bytes), ("sr", sr_bytes)):       # valid as the PACS returns them
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(data)
        out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
        assert not [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")], out.stderr[-2000:]
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(seg_bytes)))
    assert int(seg.NumberOfFrames) == len(ct.datasets)         # a frame per slice of the axial series, no scout
    positions = sorted(float(f.PlanePositionSequence[0].ImagePositionPatient[2])
                       for f in seg.PerFrameFunctionalGroupsSequence)
    assert positions == pytest.approx(sorted(float(d.ImagePositionPatient[2]) for d in ct.datasets))
    sr = pydicom.dcmread(io.BytesIO(sr_bytes))
    assert seg.SOPInstanceUID in str(sr) and "milliliter" in str(sr)

    _, wl = node.get("/worklist")
    (study,) = [s for s in wl["studies"] if s["study_uid"] == ct.study_uid]
    assert study["priority"] == "STAT" and study["volumes_ml"]["hemorrhage"] == pytest.approx(ct.volume_ml, rel=0.35)
    assert len(study["images"]) == len(ct.datasets)
    assert {x["code"] for x in wl["skipped"]} == {"series-passed-over"}      # the scout, said
    page = node.get("/")[1]
    assert "hemorrhage" in page and " mL" in page
