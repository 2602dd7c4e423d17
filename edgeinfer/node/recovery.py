"""Start-up recovery: the spool is the source of truth, the state database its index.

:func:`open_state` opens the state; a database SQLite cannot open or read (corrupt, not a database)
is moved aside beside the spool, never deleted, and a new one is made. :func:`reconcile` then finds
every spool file the state does not know (a deleted, lost or rebuilt database, or a crash between the
file's rename and the state's commit) and registers it again from its own header, so that its study is
scored and reported like any other. Both say what they did, for the log and ``/readyz``.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from .receiver import _header, instance_fields
from .spool import Spool, content_digest
from .state import CONFLICT, NEW, State

log = logging.getLogger("edgeinfer.node")


def open_state(spool: Spool, name: str = "state.sqlite3") -> tuple[State, list[str]]:
    """The spool's state, and notes on what had to be done to open it (empty: nothing)."""
    path = spool.root / name
    try:
        state = State(path)
        bad = state.integrity_problem()
        if bad:
            state.close()
            raise sqlite3.DatabaseError(f"quick_check: {bad}")
        return state, []
    except sqlite3.DatabaseError as exc:
        aside = path.with_name(f"{name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        note = (f"the state database could not be read ({exc.__class__.__name__}: {str(exc)[:120]}); it was moved "
                f"to {aside.name} and a new one was rebuilt from the spool")
        log.error("%s", note)
        return State(path), [note]


def reconcile(spool: Spool, state: State) -> list[str]:
    """Register every spool instance the state does not know; notes on what was found (empty: nothing)."""
    known = state.instance_file_names()
    registered, studies, unreadable, conflicts = 0, set(), 0, 0
    for path in sorted(spool.instances.glob("*/*.dcm")):
        if path.name in known:
            continue
        try:
            data = path.read_bytes()
            ds, prefix = _header(data)
            fields = instance_fields(ds)
        except Exception:  # noqa: BLE001 - an unreadable file is counted and kept, never deleted
            fields = None
        if fields is None:
            unreadable += 1
            log.error("spool file %s is not in the state and its header cannot be read; it is kept", path.name)
            continue
        outcome = state.add_instance(**fields, path=str(path), sha256=content_digest(data), nbytes=len(data), header=prefix,
                                     calling_aet="(recovered)", now=path.stat().st_mtime)
        if outcome == NEW:
            registered += 1
            studies.add(fields["study_uid"])
        elif outcome == CONFLICT:
            conflicts += 1
    notes = []
    if registered:
        notes.append(f"{registered} instance(s) of {len(studies)} study(ies) were in the spool but not in the state "
                     "database; they were registered again from their headers and their studies will be scored")
    if unreadable:
        notes.append(f"{unreadable} spool file(s) unknown to the state have no readable header; they are kept")
    if conflicts:
        notes.append(f"{conflicts} spool file(s) hold another content for a SOP Instance UID already known; kept, "
                     "not scored")
    for n in notes:
        log.warning("%s", n)
    return notes
