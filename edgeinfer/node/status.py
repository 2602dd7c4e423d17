"""The C-STORE statuses the node answers (PS3.4 B.2.3), in one place: the receiver answers them, the CLI's help
and the conformance statement list them, the tests compare against them."""
from __future__ import annotations

import errno
import sqlite3
from enum import IntEnum


class Status(IntEnum):
    """A C-STORE response status of the node's SCP."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    CANNOT_UNDERSTAND = 0xC210
    FAILED = 0xC211
    CONFLICT = 0xC212

    @property
    def hex(self) -> str:
        return f"0x{int(self):04X}"

    @property
    def meaning(self) -> str:
        """What it means and what the sender should do."""
        return _MEANINGS[self]


_MEANINGS = {
    Status.SUCCESS: "stored durably (the same bytes again: a duplicate, Success)",
    Status.OUT_OF_RESOURCES: "out of resources: the spool's disk is (nearly) full; retry later",
    Status.CANNOT_UNDERSTAND: "cannot understand: a malformed data set, or a missing or malformed UID",
    Status.FAILED: "the node failed while storing; nothing was kept; retry",
    Status.CONFLICT: "another instance with this SOP Instance UID was stored already; the first is kept",
}

#: errno values of a write that found no room
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def store_error_status(exc: BaseException) -> Status:
    """The status for an error raised while storing: OUT_OF_RESOURCES when the disk (or quota) had no room,
    for the spool file or the state database, else FAILED."""
    if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
        return Status.OUT_OF_RESOURCES
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():   # "database or disk is full"
        return Status.OUT_OF_RESOURCES
    return Status.FAILED


def summary() -> str:
    """One line per status, for the CLI's help."""
    return "; ".join(f"{s.hex} {s.meaning}" for s in Status)
