"""The node's state in SQLite: instances, studies and versions, results, the outbox's rows, retention's
questions, the schema's migrations."""
import sqlite3
import stat

import pytest

from edgeinfer.node.spool import content_digest
from edgeinfer.node.state import CONFLICT, DUPLICATE, NEW, State


def test_the_state_database_is_private(tmp_path):
    st = State(tmp_path / "s.db")
    _add(st, "1.1")                                                  # WAL and shared memory files appear
    for f in tmp_path.glob("s.db*"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name


def _add(state, sop, study="1.2.3", t=0.0, modality="DX", urgent=False, sha="a" * 64):
    return state.add_instance(sop_uid=sop, study_uid=study, series_uid="1.2.3.4", path=f"/s/{sop}", modality=modality,
                              urgent=urgent, calling_aet="MOD", sha256=sha, now=t)


def test_a_known_sop_instance_uid_is_a_duplicate_or_a_conflict_and_changes_nothing(tmp_path):
    st = State(tmp_path / "s.db")
    assert _add(st, "9.1", study="9.9", t=0, sha="a" * 64) == NEW
    st.complete_quiet_studies(lambda m: 0, now=1)
    assert st.counts_by_state() == {"queued": 1}
    assert _add(st, "9.1", study="9.9", t=2, sha="a" * 64) == DUPLICATE       # the same bytes again
    assert _add(st, "9.1", study="9.8", t=3, sha="b" * 64) == CONFLICT        # other bytes, naming another study
    assert _add(st, "9.1", study="9.9", t=4, sha="c" * 64) == CONFLICT        # other pixels, same study
    assert st.counts_by_state() == {"queued": 1}                               # no study 9.8, 9.9 not reopened
    assert st.known_digest("9.1") == "a" * 64 and st.known_digest("9.2") is None


def test_instances_stored_before_digests_were_kept_are_compared_by_their_files(tmp_path):
    f = tmp_path / "old.dcm"
    f.write_bytes(b"old bytes")
    st = State(tmp_path / "s.db")
    st._db.execute("INSERT INTO instances (sop_uid, study_uid, series_uid, path, received, calling_aet) "
                   "VALUES ('7.7', '7', '', ?, 0, 'M')", (str(f),))
    assert st.known_digest("7.7") == content_digest(b"old bytes")
    assert _add(st, "7.7", study="7", sha=content_digest(b"old bytes")) == DUPLICATE
    assert st._one("SELECT sha256 FROM instances WHERE sop_uid='7.7'")[0] == content_digest(b"old bytes")
    assert _add(st, "7.7", study="7", sha=content_digest(b"new bytes")) == CONFLICT


def test_quiet_timer_versions_and_supersede(tmp_path):
    st = State(tmp_path / "s.db")
    quiet = lambda modality: 5.0  # noqa: E731
    assert _add(st, "1.1", t=0) == NEW and _add(st, "1.2", t=3) == NEW and _add(st, "1.2", t=4) == DUPLICATE
    assert st.complete_quiet_studies(quiet, now=7) == []          # the timer restarted at t=3
    assert st.complete_quiet_studies(quiet, now=8) == ["1.2.3"]
    job = st.next_job()
    assert (job.version, sorted(job.paths)) == (1, ["/s/1.1", "/s/1.2"]) and st.next_job() is None
    assert st.finish_job(job, priority="STAT", score=0.95, record={"study": {"study_uid": "1.2.3"}},
                         sends=[("PACS@h:1", "1.2.3.99.1", "/r/v1.dcm")], now=9)
    assert not st.finish_job(job, priority="STAT", score=0.95, record={}, sends=[], now=9)  # recorded once
    _add(st, "1.3", t=20)                                          # a late image: scored again as version 2
    st.complete_quiet_studies(quiet, now=30)
    job2 = st.next_job()
    assert job2.version == 2 and len(job2.paths) == 3
    st.finish_job(job2, priority="URGENT", score=0.6, record={"study": {"v": 2}}, sends=[], now=31)
    assert [h["superseded"] for h in st.history("1.2.3")] == [True, False]
    assert st.current_results() == [{"study": {"v": 2}}]


def test_urgent_first_then_oldest_and_resume_after_a_crash(tmp_path):
    st = State(tmp_path / "s.db")
    _add(st, "2.1", study="2.1", t=0)
    _add(st, "3.1", study="3.1", t=1, urgent=True)
    _add(st, "4.1", study="4.1", t=2)
    st.complete_quiet_studies(lambda m: 0, now=10)
    assert st.next_job().study_uid == "3.1"
    st.close()
    st = State(tmp_path / "s.db")                                  # as after kill -9 while scoring 3.1
    assert st.resume() == 1 and st.counts_by_state() == {"queued": 3}
    assert [st.next_job().study_uid for _ in range(3)] == ["3.1", "2.1", "4.1"]
    assert sqlite3.connect(tmp_path / "s.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_crashes_are_counted_per_version_and_a_clean_stop_is_not_one(tmp_path):
    st = State(tmp_path / "s.db")
    _add(st, "7.1", study="7.1", t=0)
    st.complete_quiet_studies(lambda m: 0, now=1)
    assert st.next_job().crashes == 0
    for crashes in (1, 2):                                         # kill -9 while scoring, twice
        st.close()
        st = State(tmp_path / "s.db")
        assert st.resume() == 1
        job = st.next_job()
        assert (job.study_uid, job.version, job.crashes) == ("7.1", 1, crashes)
    st.requeue(job)                                                # a clean stop while scoring: no crash counted
    st.close()
    st = State(tmp_path / "s.db")
    assert st.resume() == 0 and st.next_job().crashes == 2
    st.close()
    st = State(tmp_path / "s.db")
    st.resume()
    _add(st, "7.2", study="7.1", t=5)                              # a new instance: a new version, counted afresh
    st.complete_quiet_studies(lambda m: 0, now=6)
    job = st.next_job()
    assert (job.version, job.crashes) == (2, 0)
    st.finish_job(job, priority="ROUTINE", score=0.1, record={}, sends=[], now=7)
    st.requeue(job)                                                # after the result: nothing to put back
    assert st.counts_by_state() == {"scored": 1}


def test_every_earlier_schema_migrates_to_the_current_one(tmp_path):
    from edgeinfer.node import state as state_mod

    # a state at each earlier version, holding a study being scored: opening it migrates, keeps the data
    for version in range(state_mod.SCHEMA_VERSION):
        path = tmp_path / f"v{version}.db"
        db = sqlite3.connect(path, isolation_level=None)
        for step in state_mod.MIGRATIONS[:version]:
            step(db)
        if version == 0:  # before versioning: the first tables, without crashes
            db.execute("""CREATE TABLE studies (
                study_uid TEXT PRIMARY KEY, modality TEXT, urgent INTEGER NOT NULL DEFAULT 0,
                first_received REAL NOT NULL, last_received REAL NOT NULL, state TEXT NOT NULL,
                version INTEGER NOT NULL DEFAULT 0, enqueued REAL);""")
        db.execute(f"PRAGMA user_version={version}")
        db.execute("INSERT INTO studies (study_uid, modality, urgent, first_received, last_received, state, version, "
                   "enqueued) VALUES ('8.1', 'DX', 0, 0, 0, 'scoring', 1, 0)")
        db.close()
        st = State(path)
        assert st.migrated_from == version
        assert st._one("PRAGMA user_version")[0] == state_mod.SCHEMA_VERSION
        assert st.resume() == 1 and st.next_job().crashes == 1
        assert _add(st, "8.1.1", study="8.1") == NEW
        st.close()
        assert State(path).migrated_from == state_mod.SCHEMA_VERSION       # nothing to do the second time
    newer = tmp_path / "newer.db"
    sqlite3.connect(newer).execute(f"PRAGMA user_version={state_mod.SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer than this edgeinfer"):
        State(newer)


def test_a_state_from_before_crashes_were_counted_opens(tmp_path):
    db = sqlite3.connect(tmp_path / "s.db")
    db.executescript("""CREATE TABLE studies (
        study_uid TEXT PRIMARY KEY, modality TEXT, urgent INTEGER NOT NULL DEFAULT 0,
        first_received REAL NOT NULL, last_received REAL NOT NULL, state TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 0, enqueued REAL);
        INSERT INTO studies VALUES ('8.1', 'DX', 0, 0, 0, 'scoring', 1, 0);""")
    db.commit()
    db.close()
    st = State(tmp_path / "s.db")
    assert st.resume() == 1 and st.next_job().crashes == 1


def test_instance_arriving_while_scoring_queues_a_new_version(tmp_path):
    st = State(tmp_path / "s.db")
    _add(st, "5.1", study="5.1", t=0)
    st.complete_quiet_studies(lambda m: 0, now=1)
    job = st.next_job()
    _add(st, "5.2", study="5.1", t=2)                               # arrives during scoring
    st.finish_job(job, priority="ROUTINE", score=0.1, record={}, sends=[], now=3)
    assert st.counts_by_state() == {"receiving": 1}
    assert st.complete_quiet_studies(lambda m: 0, now=4) == ["5.1"] and st.next_job().version == 2


def test_the_worklist_window_reads_one_page_in_worklist_order_and_counts_the_rest(tmp_path):
    st = State(tmp_path / "s.db")
    order = ["STAT", "URGENT", "INDETERMINATE", "ROUTINE"]
    for i in range(300):          # 300 scored studies over 300 s; every third one not applicable (no study)
        study = f"5.{i}"
        _add(st, f"{study}.1", study=study, t=i)
        st.complete_quiet_studies(lambda m: 0, now=i)
        job = st.next_job()
        priority = None if i % 3 == 0 else order[i % 4]
        score = None if priority in (None, "INDETERMINATE") else (i % 100) / 100
        record = {"not_applicable": {"study_uid": study}} if priority is None else \
            {"study": {"study_uid": study, "priority": priority, "score": score}}
        st.finish_job(job, priority=priority, score=score, record=record, sends=[], now=i)
    page, counts = st.worklist_window(order, since=100, limit=20, offset=5)
    studies = [r["study"] for r in page if "study" in r]
    window = [(p, s) for i in range(100, 300) if i % 3
              for p, s in [(order[i % 4], None if order[i % 4] == "INDETERMINATE" else (i % 100) / 100)]]
    expected = sorted(((order.index(p), -(s if s is not None else -1), f"5.{i}") for i in range(100, 300) if i % 3
                       for p, s in [(order[i % 4], None if order[i % 4] == "INDETERMINATE" else (i % 100) / 100)]))
    assert [s["study_uid"] for s in studies] == [uid for _, _, uid in expected[5:25]]
    assert sum(n for p, n in counts.items() if p) == len(window) and counts[None] == len(range(102, 300, 3))
    assert all("not_applicable" in r for r in page[len(studies):]) and len(page) - len(studies) == 20   # capped too
    assert st.worklist_window(order, since=1000, limit=20) == ([], {})


def test_outbox_items_are_per_object_and_a_version_is_delivered_when_all_are(tmp_path):
    st = State(tmp_path / "s.db")
    _add(st, "6.1", study="6")
    st.complete_quiet_studies(lambda m: 0, now=1)
    job = st.next_job()
    sends = [(d, sop, f"/r/{sop}.dcm") for sop in ("6.99.1", "6.99.2") for d in ("PACS@a:104", "ARCH@b:104")]
    assert st.finish_job(job, priority="STAT", score=0.9, record={}, sends=sends, now=2)
    items = st.outbox_items()
    assert sorted((i["sop_uid"], i["destination"]) for i in items) == sorted((s, d) for d, s, _ in sends)
    assert st.delivered("6", 1) is False
    for i in items[:-1]:
        st.mark_sent(i["id"])
    assert st.delivered("6", 1) is False                        # three of four sent: not delivered
    st.mark_sent(items[-1]["id"])
    assert st.delivered("6", 1) is True and st.delivered("7", 1) is None


def test_outbox_items_from_before_objects_were_keyed_take_their_file_s_sop_instance_uid(tmp_path):
    import pydicom

    from edgeinfer.node import state as state_mod

    sr = pydicom.Dataset()
    sr.SOPInstanceUID, sr.SOPClassUID = "1.2.826.0.1.3680043.10.543.7", "1.2.840.10008.5.1.4.1.1.88.33"
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    for step in state_mod.MIGRATIONS[:6]:
        step(db)
    db.execute("PRAGMA user_version=6")
    for i, path in enumerate((tmp_path / "sr.dcm", tmp_path / "gone.dcm")):
        db.execute("INSERT INTO outbox (study_uid, version, destination, path, next_attempt, created) "
                   "VALUES (?, 1, 'PACS@h:104', ?, 0, 0)", (f"8.{i}", str(path)))
    db.close()
    items = State(tmp_path / "s.db").outbox_items()
    assert [i["sop_uid"] for i in items] == ["1.2.826.0.1.3680043.10.543.7", f"unknown-{items[1]['id']}"]
    assert all(i["state"] == "pending" for i in items)


def test_the_next_quiet_deadline_is_the_first_receiving_study_s(tmp_path):
    st = State(tmp_path / "s.db")
    assert st.next_quiet_deadline(lambda m: 5.0) is None
    _add(st, "a.1", study="a", t=10, modality="DX")
    _add(st, "b.1", study="b", t=12, modality="DX")
    _add(st, "c.1", study="c", t=11, modality="CT")
    quiet = {"DX": 5.0, "CT": 30.0}.get
    assert st.next_quiet_deadline(quiet) == 15.0                 # a: 10 + 5, before c (41) and b (17)
    st.complete_quiet_studies(quiet, now=15)
    assert st.next_quiet_deadline(quiet) == 17.0
