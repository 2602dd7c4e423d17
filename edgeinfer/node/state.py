"""The node's state in SQLite (WAL): instances, studies, results and the outbox.

Every change that matters is one transaction, so a ``kill -9`` anywhere leaves a state the node
resumes from: an acknowledged instance is in ``instances`` before Success is sent; a study being
scored when the node died is scored again (its result is keyed on study and version, so it is
recorded once); an unsent result stays in the outbox.

A study the node died while scoring may be what killed it (a decoder or a runtime crashing on one of
its files): ``crashes`` counts, per version, the restarts that found it being scored, and the worker
sends a version that reached the limit to a human read instead of scoring it again. A clean stop
puts the study it was scoring back in the queue without counting (:meth:`State.requeue`).

An instance is known by its SOP Instance UID *and* the sha256 of its bytes: the same bytes again are
a duplicate (nothing changes); other bytes under a known SOP Instance UID are a conflict, refused
without touching the acknowledged instance or its study (:meth:`State.add_instance`).

The schema is versioned (``PRAGMA user_version``): :data:`MIGRATIONS` holds one function per step,
and opening a state applies those it has not had, each in its own transaction.

Study states: ``receiving`` (instances arriving; its quiet timer runs) -> ``queued`` (complete,
waiting for inference; its version was bumped) -> ``scoring`` -> ``scored``. An instance arriving
for a queued, scoring or scored study puts it back to ``receiving``: it is scored again as a new
version, and the new result supersedes the earlier one.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, series_uid TEXT, path TEXT NOT NULL,
    received REAL NOT NULL, calling_aet TEXT);
CREATE INDEX IF NOT EXISTS instances_by_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY, modality TEXT, urgent INTEGER NOT NULL DEFAULT 0,
    first_received REAL NOT NULL, last_received REAL NOT NULL, state TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 0, enqueued REAL, crashes INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS results (
    study_uid TEXT NOT NULL, version INTEGER NOT NULL, created REAL NOT NULL, priority TEXT,
    score REAL, record TEXT NOT NULL, superseded INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (study_uid, version));
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, study_uid TEXT NOT NULL, version INTEGER NOT NULL, destination TEXT NOT NULL,
    path TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL, last_error TEXT, UNIQUE (study_uid, version, destination));
"""


def _v1_baseline(db: sqlite3.Connection) -> None:
    """The tables as they were before the schema was versioned (a state from then already has them),
    with the crash count added where a state predates it."""
    for statement in filter(str.strip, SCHEMA.split(";")):  # not executescript: it would commit the step
        db.execute(statement)
    columns = {r[1] for r in db.execute("PRAGMA table_info(studies)")}
    if "crashes" not in columns:
        db.execute("ALTER TABLE studies ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0")


def _v2_instance_digest(db: sqlite3.Connection) -> None:
    """The sha256 of each instance's bytes (NULL for instances stored before: computed from the file
    the first time the same SOP Instance UID arrives again)."""
    db.execute("ALTER TABLE instances ADD COLUMN sha256 TEXT")


def _v3_outbox_created(db: sqlite3.Connection) -> None:
    """When each outbox item was made (its retry horizon counts from there); older items count from
    their next attempt."""
    db.execute("ALTER TABLE outbox ADD COLUMN created REAL")
    db.execute("UPDATE outbox SET created=next_attempt WHERE created IS NULL")


def _v4_instance_bytes_and_purge(db: sqlite3.Connection) -> None:
    """Each instance's size (what the spool holds, for /metrics) and when retention deleted its file
    (NULL: on disk). Sizes of instances stored before are read from their files."""
    db.execute("ALTER TABLE instances ADD COLUMN bytes INTEGER")
    db.execute("ALTER TABLE instances ADD COLUMN purged REAL")
    for sop, path in db.execute("SELECT sop_uid, path FROM instances").fetchall():
        try:
            db.execute("UPDATE instances SET bytes=? WHERE sop_uid=?", (os.stat(path).st_size, sop))
        except OSError:
            pass


def _v5_results_by_time(db: sqlite3.Connection) -> None:
    """An index for the worklist's window (current results made since a time)."""
    db.execute("CREATE INDEX IF NOT EXISTS results_current ON results(superseded, created)")


def _v6_instance_header(db: sqlite3.Connection) -> None:
    """Each instance's header as received (up to group 0040, a Part 10 file of its own): what its study's
    report copies and references, so that the report never reads the image again. NULL for instances
    stored before (their files are read then)."""
    db.execute("ALTER TABLE instances ADD COLUMN header BLOB")


def _v7_outbox_by_object(db: sqlite3.Connection) -> None:
    """Outbox items keyed on the object sent (its SOP Instance UID) and destination, not on the study version:
    a version may send several objects. The table is rebuilt (SQLite cannot drop a UNIQUE constraint); an
    item from before takes the SOP Instance UID of its file, or a placeholder when the file is gone."""
    db.execute("ALTER TABLE outbox RENAME TO outbox_v6")
    db.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, study_uid TEXT NOT NULL, version INTEGER NOT NULL, "
               "sop_uid TEXT NOT NULL, destination TEXT NOT NULL, path TEXT NOT NULL, "
               "state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL, "
               "last_error TEXT, created REAL, UNIQUE (sop_uid, destination))")
    for row in db.execute("SELECT id, study_uid, version, destination, path, state, attempts, next_attempt, "
                          "last_error, created FROM outbox_v6").fetchall():
        db.execute("INSERT INTO outbox (id, study_uid, version, sop_uid, destination, path, state, attempts, "
                   "next_attempt, last_error, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (*row[:3], _sop_uid_of(row[4]) or f"unknown-{row[0]}", *row[3:]))
    db.execute("DROP TABLE outbox_v6")


def _sop_uid_of(path: str) -> str | None:
    try:
        import pydicom

        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
    except Exception:  # noqa: BLE001 - a missing or unreadable file: the caller uses a placeholder
        return None


#: schema steps, in order: a state at ``user_version`` N has had the first N
MIGRATIONS = (_v1_baseline, _v2_instance_digest, _v3_outbox_created, _v4_instance_bytes_and_purge,
              _v5_results_by_time, _v6_instance_header, _v7_outbox_by_object)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection) -> int:
    """Apply the steps a state has not had, each in one transaction; returns the version it started at."""
    start = db.execute("PRAGMA user_version").fetchone()[0]
    if start > SCHEMA_VERSION:
        raise RuntimeError(f"the state database is at schema version {start}, newer than this edgeinfer "
                           f"({SCHEMA_VERSION}): run the edgeinfer that wrote it, or move the database aside")
    for version in range(start, SCHEMA_VERSION):
        db.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](db)
            db.execute(f"PRAGMA user_version={version + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return start


#: what :meth:`State.add_instance` found
NEW, DUPLICATE, CONFLICT = "new", "duplicate", "conflict"


def _file_digest(path: str) -> str | None:
    import hashlib

    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


@dataclass(frozen=True)
class Job:
    study_uid: str
    version: int
    modality: str
    urgent: bool
    last_received: float
    paths: list[str]
    crashes: int = 0    # restarts that found this version being scored
    enqueued: float = 0.0   # when this version was queued (``time.time()``)


class State:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        if not self.path.exists():  # patient data: the node's user only (SQLite gives its -wal and -shm
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))  # files the database's mode)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged instance survives a power cut
        self.migrated_from = migrate(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # SQLite has rolled back already after some errors (a full disk)
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, args=()):
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, args=()):
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- receiving ------------------------------------------------------------------------------
    def integrity_problem(self) -> str | None:
        """What SQLite's ``quick_check`` finds wrong with the database, or None."""
        result = self._one("PRAGMA quick_check")[0]
        return None if result == "ok" else str(result)

    def instance_file_names(self) -> set[str]:
        """The file names (not paths: the spool may have moved) of every instance the state knows."""
        return {Path(row[0]).name for row in self._all("SELECT path FROM instances")}

    def known_digest(self, sop_uid: str) -> str | None:
        """The sha256 of the instance stored under ``sop_uid`` (computed from its file for an instance
        stored before digests were kept), or None when the SOP Instance UID is new."""
        row = self._one("SELECT sha256, path FROM instances WHERE sop_uid=?", (sop_uid,))
        if row is None:
            return None
        return row[0] or _file_digest(row[1]) or "unreadable"

    def add_instance(self, *, sop_uid: str, study_uid: str, series_uid: str, path: str, modality: str,
                     urgent: bool, calling_aet: str, sha256: str, nbytes: int | None = None,
                     header: bytes | None = None, now: float | None = None) -> str:
        """Record a stored instance and restart its study's quiet timer.

        Returns :data:`NEW`; :data:`DUPLICATE` when the same bytes are known under this SOP Instance
        UID (nothing changes); :data:`CONFLICT` when other bytes are (nothing changes either: the
        caller refuses the instance and removes the file it wrote, which has another name).
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            known = db.execute("SELECT sha256, path FROM instances WHERE sop_uid=?", (sop_uid,)).fetchone()
            if known is not None:
                digest = known[0] or _file_digest(known[1])
                if digest and known[0] is None:
                    db.execute("UPDATE instances SET sha256=? WHERE sop_uid=?", (digest, sop_uid))
                return DUPLICATE if digest == sha256 else CONFLICT
            db.execute("INSERT INTO instances (sop_uid, study_uid, series_uid, path, received, calling_aet, sha256, "
                       "bytes, header) VALUES (?,?,?,?,?,?,?,?,?)",
                       (sop_uid, study_uid, series_uid, path, now, calling_aet, sha256, nbytes, header))
            row = db.execute("SELECT state FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
            if row is None:
                db.execute("INSERT INTO studies (study_uid, modality, urgent, first_received, last_received, state)"
                           " VALUES (?,?,?,?,?, 'receiving')", (study_uid, modality, int(urgent), now, now))
            else:
                db.execute("UPDATE studies SET last_received=?, state='receiving', urgent=max(urgent, ?) "
                           "WHERE study_uid=?", (now, int(urgent), study_uid))
        return NEW

    # -- scheduling -----------------------------------------------------------------------------
    def complete_quiet_studies(self, quiet_for, now: float | None = None) -> list[str]:
        """Studies whose quiet period has passed: -> queued, version + 1. Returns their UIDs."""
        now = time.time() if now is None else now
        done = []
        with self._tx() as db:
            for uid, modality, last in db.execute(
                    "SELECT study_uid, modality, last_received FROM studies WHERE state='receiving'").fetchall():
                if now - last >= quiet_for(modality or ""):
                    db.execute("UPDATE studies SET state='queued', version=version+1, enqueued=?, crashes=0 "
                               "WHERE study_uid=?", (now, uid))
                    done.append(uid)
        return done

    def headers(self, paths: list[str]) -> dict[str, bytes]:
        """The headers kept at receive time of the instances at ``paths`` (those that have one)."""
        out: dict[str, bytes] = {}
        for i in range(0, len(paths), 500):
            chunk = paths[i:i + 500]
            out.update(self._all(f"SELECT path, header FROM instances WHERE header IS NOT NULL AND path IN "
                                 f"({','.join('?' * len(chunk))})", chunk))
        return out

    def first_headers(self, study_uids: list[str]) -> dict[str, bytes]:
        """The header kept of one instance (the first received) of each study that has one."""
        out: dict[str, bytes] = {}
        for i in range(0, len(study_uids), 500):
            chunk = study_uids[i:i + 500]
            for uid, header in self._all(f"SELECT study_uid, header FROM instances WHERE header IS NOT NULL AND "
                                         f"study_uid IN ({','.join('?' * len(chunk))}) ORDER BY rowid", chunk):
                out.setdefault(uid, header)
        return out

    def received_from(self, study_uid: str) -> tuple[int, list[str]]:
        """How many instances the study holds, and the calling AE titles that sent them (for its audit line)."""
        rows = self._all("SELECT coalesce(calling_aet, ''), count(*) FROM instances WHERE study_uid=? "
                         "GROUP BY 1 ORDER BY 1", (study_uid,))
        return sum(n for _, n in rows), [a for a, _ in rows if a]

    def backlog(self, now: float | None = None) -> tuple[int, float]:
        """Studies complete and waiting for inference, and how long (s) the oldest of them has waited."""
        now = time.time() if now is None else now
        n, oldest = self._one("SELECT count(*), min(enqueued) FROM studies WHERE state='queued'")
        return n, (max(0.0, now - oldest) if n and oldest is not None else 0.0)

    def study_state(self, study_uid: str) -> str | None:
        row = self._one("SELECT state FROM studies WHERE study_uid=?", (study_uid,))
        return row[0] if row else None

    def counts_by_state(self) -> dict[str, int]:
        return dict(self._all("SELECT state, count(*) FROM studies GROUP BY state"))

    def next_job(self, queued_before: float | None = None) -> Job | None:
        """The next study to score (urgent first, then the oldest), marked ``scoring``; with ``queued_before``,
        only among those queued before that time."""
        with self._tx() as db:
            before, args = ("", ()) if queued_before is None else (" AND coalesce(enqueued, 0) < ?", (queued_before,))
            row = db.execute("SELECT study_uid, version, modality, urgent, last_received, crashes, enqueued FROM "
                             f"studies WHERE state='queued'{before} ORDER BY urgent DESC, enqueued ASC LIMIT 1",
                             args).fetchone()
            if row is None:
                return None
            db.execute("UPDATE studies SET state='scoring' WHERE study_uid=?", (row[0],))
            paths = [r[0] for r in db.execute("SELECT path FROM instances WHERE study_uid=? AND purged IS NULL "
                                              "ORDER BY sop_uid", (row[0],))]
        return Job(row[0], row[1], row[2] or "", bool(row[3]), row[4], paths, row[5], row[6] or 0.0)

    def next_quiet_deadline(self, quiet_for) -> float | None:
        """When the first receiving study's quiet period ends (``time.time()`` scale), or None."""
        rows = self._all("SELECT modality, min(last_received) FROM studies WHERE state='receiving' GROUP BY modality")
        return min((last + quiet_for(modality or "") for modality, last in rows), default=None)

    def resume(self) -> int:
        """After a restart: studies that were being scored are queued again, each with one more crash
        counted. Returns how many."""
        with self._tx() as db:
            return db.execute("UPDATE studies SET state='queued', crashes=crashes+1 WHERE state='scoring'").rowcount

    def requeue(self, job: Job) -> None:
        """A clean stop while ``job`` was being scored, or its inference server cannot be reached: it is queued
        again (its place and queue time kept), and no crash is counted."""
        with self._tx() as db:
            db.execute("UPDATE studies SET state='queued' WHERE study_uid=? AND version=? AND state='scoring'",
                       (job.study_uid, job.version))

    def finish_job(self, job: Job, *, priority: str | None, score: float | None, record: dict,
                   sends: list[tuple[str, str, str]], now: float | None = None) -> bool:
        """Record ``job``'s result and its outbox items (destination, SOP Instance UID, path: one per object and
        destination) in one transaction. False if this version's result was recorded already (a job re-run
        after a crash): nothing is recorded twice."""
        now = time.time() if now is None else now
        with self._tx() as db:
            if db.execute("SELECT 1 FROM results WHERE study_uid=? AND version=?",
                          (job.study_uid, job.version)).fetchone():
                fresh = False
            else:
                fresh = True
                db.execute("UPDATE results SET superseded=1 WHERE study_uid=? AND version<?",
                           (job.study_uid, job.version))
                db.execute("INSERT INTO results VALUES (?,?,?,?,?,?,0)",
                           (job.study_uid, job.version, now, priority, score, json.dumps(record, allow_nan=False)))
                for destination, sop_uid, path in sends:
                    db.execute("INSERT OR IGNORE INTO outbox (study_uid, version, sop_uid, destination, path, "
                               "next_attempt, created) VALUES (?,?,?,?,?,?,?)",
                               (job.study_uid, job.version, sop_uid, destination, path, now, now))
            # instances that arrived while this version was scored make the study receive again
            db.execute("UPDATE studies SET state=CASE WHEN state='scoring' THEN 'scored' ELSE state END "
                       "WHERE study_uid=?", (job.study_uid,))
        return fresh

    # -- results --------------------------------------------------------------------------------
    def current_results(self) -> list[dict]:
        return [json.loads(r[0]) for r in self._all("SELECT record FROM results WHERE superseded=0")]

    def current_result(self, study_uid: str) -> dict | None:
        """The current result record of one study, or None."""
        row = self._one("SELECT record FROM results WHERE superseded=0 AND study_uid=?", (study_uid,))
        return json.loads(row[0]) if row else None

    def worklist_window(self, order: list[str], *, since: float, limit: int, offset: int = 0
                        ) -> tuple[list[dict], dict[str, int]]:
        """The current results made since ``since``: one page of those with a study, in worklist order
        (``order``: priorities, most urgent first; then the higher score, then the UID), followed by every
        not-applicable one in the window; and the number of studies per priority in the whole window
        (``None``: not applicable). Only the page's records are read and parsed."""
        rank = "CASE priority " + " ".join(f"WHEN ? THEN {i}" for i in range(len(order))) + f" ELSE {len(order)} END"
        page = self._all(f"SELECT record FROM results WHERE superseded=0 AND created>=? AND priority IS NOT NULL "
                         f"ORDER BY {rank}, coalesce(score, -1) DESC, study_uid LIMIT ? OFFSET ?",
                         (since, *order, limit, offset))
        rest = self._all("SELECT record FROM results WHERE superseded=0 AND created>=? AND priority IS NULL "
                         "ORDER BY study_uid LIMIT ?", (since, limit))
        counts = dict(self._all("SELECT priority, count(*) FROM results WHERE superseded=0 AND created>=? "
                                "GROUP BY priority", (since,)))
        return [json.loads(r[0]) for r in page + rest], counts

    def count_without_sr(self) -> int:
        """Current results that could not get an SR although PACS is configured (no consistent identity)."""
        return self._one("SELECT count(*) FROM results WHERE superseded=0 AND "
                         "json_extract(record, '$.no_sr') IS NOT NULL")[0]

    def history(self, study_uid: str) -> list[dict]:
        return [{"version": v, "priority": p, "score": s, "superseded": bool(x), "created": c}
                for v, p, s, x, c in self._all("SELECT version, priority, score, superseded, created FROM results "
                                                "WHERE study_uid=? ORDER BY version", (study_uid,))]

    # -- retention ------------------------------------------------------------------------------
    def purgeable(self, *, result_before: float, limit: int = 50) -> list[str]:
        """Studies whose instances may leave the spool, oldest result first: scored (not receiving, queued
        or being scored), with a current result made before ``result_before``, every outbox item of every
        version sent (none pending, none dead-lettered), and instances still on disk."""
        return [r[0] for r in self._all(
            "SELECT s.study_uid FROM studies s JOIN results r ON r.study_uid=s.study_uid AND r.superseded=0 "
            "WHERE s.state='scored' AND r.created<? "
            "AND EXISTS (SELECT 1 FROM instances i WHERE i.study_uid=s.study_uid AND i.purged IS NULL) "
            "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.study_uid=s.study_uid AND o.state!='sent') "
            "ORDER BY r.created LIMIT ?", (result_before, limit))]

    def mark_purged(self, study_uid: str, now: float | None = None) -> list[str]:
        """Mark a study's instances as gone from the spool, if it is still purgeable (an instance may have
        arrived since, making it receive again); returns the paths whose files the caller deletes. The
        rows stay: the same instance sent again is still a duplicate, and a new one starts a new version."""
        now = time.time() if now is None else now
        with self._tx() as db:
            if db.execute("SELECT state FROM studies WHERE study_uid=?", (study_uid,)).fetchone() != ("scored",):
                return []
            paths = [r[0] for r in db.execute("SELECT path FROM instances WHERE study_uid=? AND purged IS NULL",
                                              (study_uid,))]
            db.execute("UPDATE instances SET purged=?, header=NULL WHERE study_uid=? AND purged IS NULL", (now, study_uid))
        return paths

    def purged_paths(self) -> list[str]:
        """Paths of every instance marked purged (start-up deletes any file a crash left behind)."""
        return [r[0] for r in self._all("SELECT path FROM instances WHERE purged IS NOT NULL")]

    def spool_bytes(self) -> int:
        """Bytes of the instances in the spool (as received; sizes unknown to an older state count 0)."""
        return self._one("SELECT coalesce(sum(bytes), 0) FROM instances WHERE purged IS NULL")[0]

    # -- outbox ---------------------------------------------------------------------------------
    def due_sends(self, now: float | None = None, limit: int = 20) -> list[tuple]:
        now = time.time() if now is None else now
        return self._all("SELECT id, study_uid, version, destination, path, attempts, coalesce(created, next_attempt), "
                         "sop_uid FROM outbox WHERE state='pending' AND next_attempt<=? ORDER BY next_attempt LIMIT ?",
                         (now, limit))

    def delivered(self, study_uid: str, version: int) -> bool | None:
        """Whether every object of this study version reached every destination (None: it sends nothing)."""
        states = {r[0] for r in self._all("SELECT DISTINCT state FROM outbox WHERE study_uid=? AND version=?",
                                          (study_uid, version))}
        return None if not states else states == {"sent"}

    def mark_sent(self, item_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET state='sent', attempts=attempts+1, last_error=NULL WHERE id=?", (item_id,))

    def mark_failed(self, item_id: int, error: str, *, retry_at: float | None) -> None:
        """A failed send: retried at ``retry_at``, or dead-lettered when that is None."""
        with self._tx() as db:
            if retry_at is None:
                db.execute("UPDATE outbox SET state='dead', attempts=attempts+1, last_error=? WHERE id=?",
                           (error, item_id))
            else:
                db.execute("UPDATE outbox SET attempts=attempts+1, last_error=?, next_attempt=? WHERE id=?",
                           (error, retry_at, item_id))

    def outbox_counts(self) -> dict[str, int]:
        return dict(self._all("SELECT state, count(*) FROM outbox GROUP BY state"))

    def outbox_items(self, state: str | None = None) -> list[dict]:
        """Every outbox item (or those in ``state``: pending, sent, dead), oldest first."""
        rows = self._all("SELECT id, study_uid, version, destination, state, attempts, last_error, "
                         "coalesce(created, next_attempt), next_attempt, sop_uid FROM outbox"
                         + (" WHERE state=?" if state else "") + " ORDER BY id", (state,) if state else ())
        return [{"id": i, "study_uid": s, "version": v, "destination": d, "state": st, "attempts": a,
                 "last_error": e, "created": c, "next_attempt": n, "sop_uid": u}
                for i, s, v, d, st, a, e, c, n, u in rows]

    def retry_dead(self, study_uid: str | None = None, now: float | None = None) -> int:
        """Dead letters (all, or one study's) back to pending, due now, with a fresh horizon; returns how many."""
        now = time.time() if now is None else now
        with self._tx() as db:
            sql = "UPDATE outbox SET state='pending', next_attempt=?, created=?, attempts=0 WHERE state='dead'"
            args: tuple = (now, now)
            if study_uid is not None:
                sql += " AND study_uid=?"
                args += (study_uid,)
            return db.execute(sql, args).rowcount

    def dead_letters(self) -> list[dict]:
        return [{"study_uid": s, "version": v, "destination": d, "attempts": a, "last_error": e}
                for s, v, d, a, e in self._all("SELECT study_uid, version, destination, attempts, last_error "
                                                "FROM outbox WHERE state='dead' ORDER BY id")]
