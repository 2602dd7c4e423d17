"""kill -9 at random points while storescu streams instances: nothing acknowledged is lost.

Every instance the node acknowledged with Success ends up in exactly one current result for its
study, in the worklist and in PACS (Orthanc), and no temporary file remains.
"""
from __future__ import annotations

import random
import re
import sqlite3
import subprocess
import time

import pydicom
import pytest
from pydicom.uid import generate_uid

import peers
from peers import NODE_AET, NodeProcess

CYCLES = 20
INSTANCES = 200
PER_STUDY = 4


@pytest.fixture(scope="module")
def stream(tmp_path_factory, node_phantoms):
    """INSTANCES uncompressed instances in INSTANCES / PER_STUDY studies, cloned from small phantoms."""
    src = [pydicom.dcmread(p) for p in sorted(node_phantoms.rglob("*.dcm"))]
    src = [ds for ds in src if not ds.file_meta.TransferSyntaxUID.is_compressed] or src[:1]
    out = tmp_path_factory.mktemp("stream")
    sops = {}
    for i in range(INSTANCES // PER_STUDY):
        study, series = generate_uid(), generate_uid()
        for j in range(PER_STUDY):
            ds = src[(i + j) % len(src)].copy()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.PatientID, ds.PatientName = f"P{i:04d}", f"STREAM^{i:04d}"  # one patient per study
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = j + 1
            path = out / f"s{i:03d}" / f"i{j}.dcm"
            path.parent.mkdir(exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            sops[str(path)] = (str(ds.SOPInstanceUID), study)
    return out, sops


_SENDING = re.compile(r"Sending file: (\S+)")
_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def acknowledged(output: str) -> set[str]:
    """Files storescu reports as stored with Success (its -v output pairs 'Sending file' with a response)."""
    done, current = set(), None
    for line in output.splitlines():
        if m := _SENDING.search(line):
            current = m.group(1)
        elif (m := _RESPONSE.search(line)) and current:
            if m.group(1) == "Success":
                done.add(current)
            current = None
    return done


def test_kill_9_while_streaming_loses_nothing_acknowledged(tmp_path, orthanc, dcmtk, stream):
    folder, sops = stream
    rng = random.Random(20261126)
    args = ("--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "--quiet-seconds", "1")
    port = peers.free_port()
    acked: set[str] = set()
    files = sorted(sops)
    for cycle in range(CYCLES):
        node = NodeProcess(tmp_path, *args, port=port)
        todo = [f for f in files if f not in acked] or files[:PER_STUDY]
        sender = subprocess.Popen([peers.require_binary("storescu"), "-v", "-nh", "-aec", NODE_AET, "-aet", "MODALITY",
                                   "127.0.0.1", str(port), *todo], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, errors="replace")
        time.sleep(rng.uniform(0.05, 1.5))
        node.kill()                                  # kill -9: no chance to clean up
        out, _ = sender.communicate(timeout=120)
        acked |= acknowledged(out)
    assert len(acked) >= INSTANCES // 4, f"only {len(acked)} instances were acknowledged over {CYCLES} cycles"

    node = NodeProcess(tmp_path, *args, port=port)   # the survivor
    spool = node.spool
    assert not list(spool.rglob(".*.tmp")), "temporary files survived a restart"
    db = sqlite3.connect(spool / "state.sqlite3")
    stored = {r[0] for r in db.execute("SELECT sop_uid FROM instances")}
    missing = [f for f in acked if sops[f][0] not in stored]
    assert not missing, f"{len(missing)} acknowledged instance(s) are not in the node's state"

    def settled():
        states = dict(db.execute("SELECT state, count(*) FROM studies GROUP BY state").fetchall())
        pending = db.execute("SELECT count(*) FROM outbox WHERE state='pending'").fetchone()[0]
        return set(states) <= {"scored"} and pending == 0
    peers.wait_until(settled, 180, 0.5, "every study scored and every result sent")

    studies = {sops[f][1] for f in acked}
    code, wl = node.get("/worklist")
    assert code == 200
    current = {s["study_uid"]: s for s in wl["studies"]}
    assert studies <= set(current)
    assert len(wl["studies"]) == len(current)        # one current result per study
    for study in studies:
        n_in_state = db.execute("SELECT count(*) FROM instances WHERE study_uid=?", (study,)).fetchone()[0]
        assert len(current[study]["images"]) + len(current[study]["failed_images"]) == n_in_state
        versions = [r[0] for r in db.execute("SELECT version FROM results WHERE study_uid=? AND superseded=0", (study,))]
        assert versions == [current[study]["version"]]
        srs = orthanc.srs(study)
        series_numbers = sorted(int(s["SeriesNumber"]) for s in srs)
        assert len(series_numbers) == len(set(series_numbers)), "the same result version was stored twice in PACS"
        assert series_numbers[-1] == 9900 + current[study]["version"], "PACS lacks the current result"
    node.stop()
