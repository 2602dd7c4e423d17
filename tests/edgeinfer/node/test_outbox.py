"""The outbox: transient failures retry until the horizon, also across restarts; a refusal dead-letters at once;
the counts come from the state; an operator re-drives dead letters (``edgeinfer outbox``)."""
from __future__ import annotations

import subprocess
import sys

import peers
from edgeinfer.node.config import NodeConfig
from edgeinfer.node.outbox import MAX_BACKOFF_S, Outbox, Refused, backoff, store_failure
from edgeinfer.node.state import State


def _scored(st: State, study: str, now: float = 0.0) -> None:
    st.add_instance(sop_uid=study + ".1", study_uid=study, series_uid="", path="/s", modality="DX", urgent=False,
                    calling_aet="M", sha256="a" * 64, now=now)
    st.complete_quiet_studies(lambda m: 0, now=now)
    st.finish_job(st.next_job(), priority="ROUTINE", score=0.1, record={}, sends=[("PACS@127.0.0.1:1", study + ".99", "/r.dcm")],
                  now=now)


def test_store_statuses_are_delivered_retried_or_refused():
    assert store_failure(0x0000, "P") is None and store_failure(0xB000, "P") is None
    busy = store_failure(0xA700, "P")
    assert busy and not isinstance(busy, Refused) and "0xA700" in busy
    for status in (0xA900, 0xC000, 0x0122, 0x0124):
        assert isinstance(store_failure(status, "P"), Refused)
    assert [backoff(n, 2.0, 10.0) for n in (1, 2, 3, 4, 9)] == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_transient_failures_retry_until_the_horizon_and_a_refusal_at_once(tmp_path, monkeypatch):
    st = State(tmp_path / "s.db")
    _scored(st, "1.1")
    _scored(st, "2.2")
    clock = [1000.0]
    monkeypatch.setattr("edgeinfer.node.outbox.time.time", lambda: clock[0])
    answers = {"1.1": "association with PACS was not established", "2.2": Refused("PACS answered 0xC000")}
    sent = []
    box = Outbox(NodeConfig(send_horizon=3600, send_backoff=1, send_backoff_max=60), st,
                 send=lambda path, dest, aet, tls=None: sent.append(path) or answers.pop(next(iter(answers))))
    # created at t=0 (finish_job's now): the horizon runs out at t=3600
    st._db.execute("UPDATE outbox SET next_attempt=0")
    assert box.drain() == 2
    items = {i["study_uid"]: i for i in st.outbox_items()}
    assert items["2.2"]["state"] == "dead" and items["1.1"]["state"] == "pending"   # refused: dead at once
    assert items["1.1"]["next_attempt"] == 1001.0                                   # retried after send_backoff
    answers["1.1"] = "PACS sent no C-STORE response"
    clock[0] = 3700.0                                                               # past the horizon
    assert box.drain() == 1
    assert st.outbox_counts() == {"dead": 2}
    assert st.retry_dead("1.1", now=4000) == 1 and st.outbox_counts() == {"dead": 1, "pending": 1}
    assert st.retry_dead(now=4000) == 1 and st.outbox_counts() == {"pending": 2}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeinfer", "outbox", *args], capture_output=True, text=True, timeout=60)


def test_outbox_list_and_retry_from_the_command_line(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    st = State(spool / "state.sqlite3")
    _scored(st, "3.3")
    (item_id, *_), = st.due_sends(now=1)
    st.mark_failed(item_id, "PACS answered C-STORE status 0xC000 (refused)", retry_at=None)
    st.close()
    r = _cli("list", "--spool", str(spool))
    assert r.returncode == 0 and "1 dead" in r.stdout and "3.3" in r.stdout and "0xC000" in r.stdout
    r = _cli("retry", "--spool", str(spool))
    assert r.returncode == 1 and "--all, or --study" in r.stderr
    r = _cli("retry", "--spool", str(spool), "--study", "3.3")
    assert r.returncode == 0 and r.stdout.startswith("1 result(s) queued again")
    assert State(spool / "state.sqlite3").outbox_counts() == {"pending": 1}
    r = _cli("list", "--spool", str(tmp_path / "nowhere"))
    assert r.returncode != 0 and "no state database" in r.stderr and "Traceback" not in r.stderr


def test_a_pacs_outage_longer_than_the_old_retry_window_loses_no_sr_even_across_a_restart(
        node_factory, orthanc_factory, dcmtk, node_phantoms):
    import pydicom

    files = sorted(node_phantoms.rglob("*.dcm"))
    studies = sorted({str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files})
    port = peers.free_port()                                   # PACS is down: nothing listens there
    args = ("--quiet-seconds", "1", "--send-to", f"PACS@127.0.0.1:{port}", "--send-backoff", "0.2",
            "--send-backoff-max", "1", "--send-horizon", "3600")
    node = node_factory(*args, name="before")
    assert node.store(files).returncode == 0
    # the old defaults gave up after 8 attempts; scaled down, that is a few seconds of retries here
    peers.wait_until(lambda: "retry 9 in" in node.log.read_text(), 60, 0.2, "ten failed attempts")
    node.kill()                                                # and the node restarts during the outage
    again = node_factory(*args, "--spool", str(node.spool), name="after")
    # one SR per study, and one heatmap image per heatmap of a flagged study
    objects = len(studies) + sum(len(i.get("heatmaps", [])) for s in again.get("/worklist")[1]["studies"]
                                 for i in s["images"])
    peers.wait_until(lambda: 'edgeinfer_outbox_items{state="pending"} ' + f"{float(objects)}"
                     in again.get("/metrics")[1], 30, 0.2, "the pending results counted after the restart")
    pacs = orthanc_factory(extra_config={"DicomPort": port})    # PACS is back
    for uid in studies:
        assert len(pacs.wait_for_srs(uid, 1, timeout=60)) == 1
    peers.wait_until(lambda: 'edgeinfer_outbox_items{state="sent"} ' + f"{float(objects)}"
                     in again.get("/metrics")[1], 30, 0.2, "every result counted as sent")
    assert 'edgeinfer_outbox_items{state="dead"} 0.0' in again.get("/metrics")[1]


def test_outbox_retries_then_dead_letters(tmp_path):
    from test_state import _add

    st = State(tmp_path / "s.db")
    _add(st, "6.1", study="6.1")
    st.complete_quiet_studies(lambda m: 0, now=1)
    st.finish_job(st.next_job(), priority="STAT", score=1.0, record={}, sends=[("PACS@h:104", "1.99", "/r.dcm")], now=1)
    (item_id, *_), = st.due_sends(now=1)
    st.mark_failed(item_id, "refused", retry_at=100)
    assert st.due_sends(now=50) == [] and len(st.due_sends(now=100)) == 1
    st.mark_failed(item_id, "refused again", retry_at=None)
    assert st.outbox_counts() == {"dead": 1} and st.dead_letters()[0]["last_error"] == "refused again"
    assert [backoff(n, 2.0) for n in (1, 2, 3)] == [2.0, 4.0, 8.0] and backoff(30, 2.0) == MAX_BACKOFF_S


def test_the_results_due_in_one_drain_share_one_association_released_at_its_end(tmp_path, node_phantoms):
    """A burst of results costs one handshake with PACS, not one each (objects of different SOP classes
    included: storescp serves one association at a time); nothing stays open while idle. The PACS is
    DCMTK's storescp, which logs every association it acknowledges and every release."""
    import pydicom

    from edgeinfer.dicomout import build_sr, sr_bytes

    storescp = peers.require_binary("storescp")
    image, *others = sorted(node_phantoms.rglob("*.dcm"))[:3]
    files = [image]                              # an image first: its class plus every result class proposed
    for i, f in enumerate(others):               # then two SRs: the same association carries them
        head = pydicom.dcmread(f, stop_before_pixels=True)
        study = {"study_uid": str(head.StudyInstanceUID), "priority": "ROUTINE", "score": 0.1, "images": []}
        files.append(tmp_path / f"sr{i}.dcm")
        files[-1].write_bytes(sr_bytes(build_sr(study, [head], bundle={"name": "m", "version": "1"}, run={},
                                                version=1)))
    port, out = peers.free_port(), tmp_path / "received"
    out.mkdir()
    log = (tmp_path / "storescp.log").open("w")
    scp = subprocess.Popen([storescp, "-v", "-aet", "PACS", "-od", str(out), str(port)], stdout=log, stderr=log)
    try:
        peers.wait_until(lambda: peers.port_open("127.0.0.1", port), 10, 0.05, "storescp listening")
        st = State(tmp_path / "s.db")
        for i, f in enumerate(files):
            _scored(st, f"7.{i}")
            st._db.execute("UPDATE outbox SET path=? WHERE study_uid=?", (str(f), f"7.{i}"))
        st._db.execute(f"UPDATE outbox SET destination='PACS@127.0.0.1:{port}', next_attempt=0")
        box = Outbox(NodeConfig(), st)
        assert box.drain() == 3 and st.outbox_counts() == {"sent": 3}
        peers.wait_until(lambda: len(list(out.iterdir())) == 3, 10, 0.05, "three files stored")
        peers.wait_until(lambda: "Association Release" in (tmp_path / "storescp.log").read_text(), 10, 0.05,
                         "the association released after the drain")
        text = (tmp_path / "storescp.log").read_text()
        assert text.count("Association Acknowledged") == 1 and text.count("Received Store Request") == 3
        assert sorted(f.name.split(".")[0] for f in out.iterdir())[-2:] == ["SRc", "SRc"]  # two classes, one association
    finally:
        peers.stop_process(scp)
        log.close()
