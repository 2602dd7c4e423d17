"""C-STORE statuses in one enum; an error while storing maps to the status a sender can act on."""
from __future__ import annotations

import errno
import sqlite3

from edgeinfer.node.state import State
from edgeinfer.node.status import Status, store_error_status, summary


def test_the_statuses_are_the_dicom_codes_with_what_they_mean():
    assert [s.hex for s in Status] == ["0x0000", "0xA700", "0xC210", "0xC211", "0xC212"]
    assert Status.CONFLICT == 0xC212 and "first is kept" in Status.CONFLICT.meaning
    assert all(s.hex in summary() and s.meaning in summary() for s in Status)


def test_no_room_for_the_state_or_the_file_is_out_of_resources_other_errors_a_failure(tmp_path):
    st = State(tmp_path / "s.db")
    st._db.execute("PRAGMA max_page_count=1")          # SQLite's own "database or disk is full", for real
    try:
        for i in range(1000):
            st.add_instance(sop_uid=f"1.{i}", study_uid="1", series_uid="", path="/x" * 200, modality="DX",
                            urgent=False, calling_aet="M", sha256="a" * 64, header=b"h" * 4000)
        raise AssertionError("the database never filled up")
    except sqlite3.OperationalError as exc:
        assert store_error_status(exc) == Status.OUT_OF_RESOURCES, exc
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        assert store_error_status(OSError(code, "no room")) == Status.OUT_OF_RESOURCES
    full = tmp_path / "full"
    try:
        with open("/dev/full", "wb") as f:                # the kernel's own "no space left on device"
            f.write(b"x" * 65536)
            f.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC and store_error_status(exc) == Status.OUT_OF_RESOURCES
    assert not full.exists()
    for exc in (OSError(errno.EACCES, "denied"), sqlite3.OperationalError("database is locked"), ValueError("x")):
        assert store_error_status(exc) == Status.FAILED
