"""Spool retention (``edgeinfer/node/retention.py``): a study's instances leave the spool once its result is
delivered and ``retain_hours`` have passed, oldest first under disk pressure, never a study unscored or unsent;
what stays in the state keeps a resend a duplicate. Then a real node against Orthanc, ``--retain-hours 0``."""
from __future__ import annotations

import pydicom
import pytest

import peers
from edgeinfer.node.config import NodeConfig
from edgeinfer.node.retention import PRESSURE_MARGIN_MB, Retention
from edgeinfer.node.spool import Spool, content_digest
from edgeinfer.node.state import DUPLICATE, NEW, State

HOUR = 3600.0


class _Disk(Spool):
    """A spool whose free space the test sets (the only thing not real here: filling a disk is not an option)."""

    free = 10_000.0

    def free_mb(self) -> float:
        return self.free


def _study(st: State, spool: Spool, study: str, *, at: float, sent: bool | None = True, scored: bool = True,
           n: int = 2) -> list:
    """A study of ``n`` real spool files received at ``at``; scored then (``scored``), its SR sent (True),
    pending (False), dead-lettered ("dead") or with no destination (None)."""
    paths = []
    for i in range(n):
        data = f"{study}.{i}".encode() * 100
        sop, digest = f"{study}.{i}", content_digest(data)
        path = spool.store_instance(sop, digest, data)
        assert st.add_instance(sop_uid=sop, study_uid=study, series_uid="", path=str(path), modality="DX",
                               urgent=False, calling_aet="M", sha256=digest, nbytes=len(data), now=at) == NEW
        paths.append(path)
    if scored:
        st.complete_quiet_studies(lambda m: 0, now=at)
        job = st.next_job()
        st.finish_job(job, priority="ROUTINE", score=0.1, record={}, now=at,
                      sends=[] if sent is None else [("PACS@127.0.0.1:104", study + ".99", "/r.dcm")])
        item = st.outbox_items("pending")
        if sent is True:
            st.mark_sent(item[0]["id"])
        elif sent == "dead":
            st.mark_failed(item[0]["id"], "PACS answered 0xC000", retry_at=None)
    return paths


@pytest.fixture
def node_parts(tmp_path):
    spool = _Disk(tmp_path / "spool")
    st = State(tmp_path / "spool" / "state.sqlite3")
    yield NodeConfig(spool=spool.root, retain_hours=24, min_free_mb=512), st, spool
    st.close()


def test_only_delivered_studies_older_than_the_retention_leave_the_spool(node_parts):
    config, st, spool = node_parts
    now = 100 * HOUR
    delivered_old = _study(st, spool, "1.1", at=now - 30 * HOUR)
    no_destination_old = _study(st, spool, "1.2", at=now - 30 * HOUR, sent=None)
    delivered_recent = _study(st, spool, "1.3", at=now - 2 * HOUR)
    pending_old = _study(st, spool, "1.4", at=now - 30 * HOUR, sent=False)
    dead_old = _study(st, spool, "1.5", at=now - 30 * HOUR, sent="dead")
    unscored_old = _study(st, spool, "1.6", at=now - 30 * HOUR, scored=False)
    before = st.spool_bytes()

    r = Retention(config, st, spool)
    assert r.step(now=now) is True and r.step(now=now) is False          # one batch did it; nothing left
    gone = delivered_old + no_destination_old
    assert not any(p.exists() for p in gone)
    assert all(p.exists() for p in delivered_recent + pending_old + dead_old + unscored_old)
    assert st.spool_bytes() == before - sum(len(f"1.{s}.{i}".encode() * 100) for s in (1, 2) for i in range(2))

    # the rows stay: the same instance sent again is a duplicate (Success, nothing scored again)
    data = b"1.1.0" * 100
    assert st.add_instance(sop_uid="1.1.0", study_uid="1.1", series_uid="", path="/x", modality="DX", urgent=False,
                           calling_aet="M", sha256=content_digest(data), now=now) == DUPLICATE
    assert st.study_state("1.1") == "scored"
    # a new instance of a purged study makes a new version from the instances on disk
    new = b"late" * 100
    path = spool.store_instance("1.1.9", content_digest(new), new)
    assert st.add_instance(sop_uid="1.1.9", study_uid="1.1", series_uid="", path=str(path), modality="DX",
                           urgent=False, calling_aet="M", sha256=content_digest(new), now=now) == NEW
    st.complete_quiet_studies(lambda m: 0, now=now)
    job = next(j for j in iter(st.next_job, None) if j.study_uid == "1.1")
    assert job.version == 2 and job.paths == [str(path)]

    # a dead letter re-driven and sent: now it may go (after the retention)
    st.retry_dead("1.5")
    st.mark_sent(st.outbox_items("pending")[0]["id"])
    assert r.step(now=now) is True and not any(p.exists() for p in dead_old)


def test_under_disk_pressure_delivered_studies_go_oldest_first_whatever_their_age(node_parts):
    config, st, spool = node_parts
    now = 100 * HOUR
    oldest = _study(st, spool, "2.1", at=now - 3 * HOUR)
    newer = _study(st, spool, "2.2", at=now - 2 * HOUR)
    unsent = _study(st, spool, "2.3", at=now - 5 * HOUR, sent=False)
    r = Retention(config, st, spool)
    assert r.step(now=now) is False                                     # no pressure: all within 24 h

    spool.free = config.min_free_mb + PRESSURE_MARGIN_MB - 1
    deleted = []
    real_mark = st.mark_purged

    def mark(study_uid, now=None):                                     # frees space as the files would
        deleted.append(study_uid)
        spool.free = config.min_free_mb + PRESSURE_MARGIN_MB + 1
        return real_mark(study_uid, now=now)

    st.mark_purged = mark
    assert r.step(now=now) is True
    assert deleted == ["2.1"]                                           # the oldest, and only as much as needed
    assert not any(p.exists() for p in oldest) and all(p.exists() for p in newer + unsent)


def test_files_marked_purged_but_left_by_a_crash_are_deleted_at_start(node_parts):
    config, st, spool = node_parts
    paths = _study(st, spool, "3.1", at=0.0)
    st.mark_purged("3.1", now=1.0)                                      # the stop came before the deletes
    assert all(p.exists() for p in paths)
    assert Retention(config, st, spool).remove_leftovers() == 2 and not any(p.exists() for p in paths)


def test_a_state_from_before_sizes_were_kept_learns_them_from_the_files(tmp_path):
    import sqlite3

    from edgeinfer.node import state as state_mod

    f = tmp_path / "i.dcm"
    f.write_bytes(b"x" * 1234)
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    for step in state_mod.MIGRATIONS[:3]:
        step(db)
    db.execute("PRAGMA user_version=3")
    db.execute("INSERT INTO instances (sop_uid, study_uid, series_uid, path, received, calling_aet) "
               "VALUES ('4.1', '4', '', ?, 0, 'M')", (str(f),))
    db.close()
    assert State(tmp_path / "s.db").spool_bytes() == 1234


@pytest.mark.slow
def test_a_node_deletes_a_study_once_its_sr_is_in_pacs_and_keeps_it_while_pacs_is_down(
        node_factory, orthanc, node_phantoms, tmp_path):
    files = sorted(node_phantoms.rglob("*.dcm"))
    studies = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files}
    node = node_factory("--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "--quiet-seconds", "1",
                        "--retain-hours", "0")
    assert node.store([node_phantoms]).returncode == 0
    for uid in studies:
        orthanc.wait_for_srs(uid, 1, timeout=60)
    peers.wait_until(lambda: not list((node.spool / "instances").rglob("*.dcm")), 30, 0.2,
                     "retention to delete the delivered studies' instances")
    _, metrics = node.get("/metrics")
    assert peers.metric(metrics, "edgeinfer_spool_bytes") == 0
    assert peers.metric(metrics, "edgeinfer_spool_purged_instances_total") == len(files)
    assert peers.metric(metrics, "edgeinfer_spool_free_bytes") > 0
    log = node.log.read_text(errors="replace")
    assert log.count("deleted from the spool (result delivered, older than 0 h)") == len(studies)
    # the same images again: duplicates, Success, nothing scored again, nothing kept
    assert node.store([node_phantoms]).returncode == 0
    assert peers.metric(node.get("/metrics")[1], "edgeinfer_instances_total", '{outcome="duplicate"}') == len(files)
    assert not list((node.spool / "instances").rglob("*.dcm"))

    # a PACS that cannot be reached: nothing is delivered, so nothing leaves the spool
    down = node_factory("--send-to", "PACS@127.0.0.1:9", "--quiet-seconds", "1", "--retain-hours", "0",
                        "--send-backoff", "0.2")
    assert down.store([node_phantoms]).returncode == 0
    peers.wait_until(lambda: len(down.get("/worklist")[1]["studies"]) == len(studies), 30, 0.2, "the studies scored")
    import time

    time.sleep(3)                                                       # three retention passes
    assert len(list((down.spool / "instances").rglob("*.dcm"))) == len(files)
    kept = sum(p.stat().st_size for p in (down.spool / "instances").rglob("*.dcm"))   # as received
    assert peers.metric(down.get("/metrics")[1], "edgeinfer_spool_bytes") == kept
