"""The result builder: objects built in a process of their own come back as the worker's thread would build
them; a process that dies is replaced and the study tried once more; a stuck build is abandoned."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from edgeinfer.errors import SRError
from edgeinfer.node.builder import ResultBuilder

HERE = Path(__file__).parent


@pytest.fixture
def study_and_headers(node_phantoms):
    path = sorted(node_phantoms.rglob("*.dcm"))[0]
    head = pydicom.dcmread(path, stop_before_pixels=True)
    study = {"study_uid": str(head.StudyInstanceUID), "priority": "ROUTINE", "score": 0.2, "images": []}
    return study, [(str(path), None)]   # no kept header: read from the file, as for an instance stored before


def _args(study_and_headers, names=("sr",)):
    study, kept = study_and_headers
    return (names, study, kept), dict(bundle={"name": "m", "version": "1", "digest": "ab"}, run={}, version=1)


def test_a_process_builds_what_the_thread_builds(study_and_headers):
    args, kw = _args(study_and_headers)
    in_thread = ResultBuilder(processes=0)
    (a,) = in_thread.result(in_thread.submit(*args, **kw), "s")
    builder = ResultBuilder(processes=1, timeout=60).start()
    try:
        (b,) = builder.result(builder.submit(*args, **kw), "s")
    finally:
        builder.stop()
    assert a.sop_uid == b.sop_uid and a.kind == b.kind == "sr"
    sr = pydicom.dcmread(__import__("io").BytesIO(b.data))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sr.StudyInstanceUID == study_and_headers[0]["study_uid"]


def test_no_readable_header_is_an_sr_error_not_a_crash(tmp_path, study_and_headers):
    study, _ = study_and_headers
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    builder = ResultBuilder(processes=0)
    with pytest.raises(SRError, match="no header of the study's 1 instance"):
        builder.result(builder.submit(("sr",), study, [(str(junk), None)], bundle={}, run={}, version=1), "s")


def test_a_dead_builder_process_is_replaced_and_the_study_built_again(tmp_path, monkeypatch, study_and_headers):
    monkeypatch.syspath_prepend(str(HERE))           # the spawned process imports dummy_writers from here too
    monkeypatch.setenv("EDGEINFER_TEST_MARKER", str(tmp_path / "marker"))
    builder = ResultBuilder(processes=1, timeout=60)
    try:
        args, kw = _args(study_and_headers, ("dummy_writers:dies_once",))
        (obj,) = builder.result(builder.submit(*args, **kw), "s")
        assert (tmp_path / "marker").read_text() == "died" and obj.sop_uid.startswith("1.2.826.0.1.3680043.10.543.")
        args, kw = _args(study_and_headers, ("dummy_writers:dies_always",))
        with pytest.raises(SRError, match="died while building this study's result, twice"):
            builder.result(builder.submit(*args, **kw), "s")
        args, kw = _args(study_and_headers)            # and the builder still works for the next study
        assert len(builder.result(builder.submit(*args, **kw), "s")) == 1
    finally:
        builder.stop()


def test_a_stuck_build_is_abandoned_after_the_timeout(monkeypatch, study_and_headers):
    monkeypatch.syspath_prepend(str(HERE))
    builder = ResultBuilder(processes=1, timeout=3)
    try:
        args, kw = _args(study_and_headers, ("dummy_writers:hangs",))
        with pytest.raises(SRError, match="took longer than 3 s"):
            builder.result(builder.submit(*args, **kw), "s")
        args, kw = _args(study_and_headers)
        assert len(builder.result(builder.submit(*args, **kw), "s")) == 1
    finally:
        builder.stop()


def test_the_builder_process_leaves_when_the_node_is_killed():
    """A SIGKILLed node cannot stop its builder: the builder notices its parent is gone and exits itself."""
    script = ("import os, sys, time\n"
              "from edgeinfer.node.builder import ResultBuilder\n"
              "b = ResultBuilder(processes=1, timeout=60).start()\n"
              "print(*[p.pid for p in b._executor._processes.values()], flush=True)\n"
              "time.sleep(600)\n")
    node = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        (child,) = map(int, node.stdout.readline().split())
        os.kill(child, 0)                                  # running while the node runs
    finally:
        node.send_signal(signal.SIGKILL)
        node.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail(f"the builder process {child} outlived its killed node by 10 s")
