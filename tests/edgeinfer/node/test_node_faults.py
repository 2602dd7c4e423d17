"""edgeinfer serve under faults, end to end over real sockets: a slow model (a backlog that refuses
nothing and is reported in /readyz and /metrics), a hung model (the watchdog), and a store that fails
inside the node (0xC211, never Success).

The models are small ONNX graphs from ``helpers.slow_onnx``: a ``Loop`` of MatMul+Tanh steps on a
(batch, 64) tensor seeded from the image, so an image costs what the trip count says (~1 us a step
on one x86 core) with a few kB of weights; ``hang_from_batch=2`` makes a batch of two or more images
loop 2**62 times (it never returns) while single images stay fast.

storescu runs with ``TCP_NODELAY=1`` in its environment (a DCMTK setting): DCMTK 3.6.7 as packaged
leaves Nagle's algorithm on, and with the receiver's delayed ACK each C-STORE then costs ~45 ms on
loopback whatever the node does (the same against Orthanc), so 1,000 instances would take ~45 s.
"""
from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

import peers
from helpers import make_slow_bundle
from edgeinfer.node.status import Status
from peers import NodeProcess, metric

SUCCESS, OUT_OF_RESOURCES, FAILED = Status.SUCCESS, Status.OUT_OF_RESOURCES, Status.FAILED
#: single-image studies sent at once to a slow model (a backlog of hundreds; benchmarks/node_bench.py sends 1,000)
BURST = 300
#: ~0.3 s an image with one thread here
SLOW_STEPS = 300_000


# --- builders ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source_instance(tmp_path_factory) -> pydicom.Dataset:
    """One small phantom (128 px), the template every cloned instance is made from."""
    from edgeinfer import phantom

    out = tmp_path_factory.mktemp("fault_phantom") / "set"
    phantom.generate(out, 1, seed=3, max_size=128)
    return pydicom.dcmread(next(out.rglob("*.dcm")))


def clone(src: pydicom.Dataset, folder: Path, n_studies: int, per_study: int = 1, *,
          sop_uids: list[str] | None = None) -> list[dict]:
    """``n_studies`` new studies of ``per_study`` instances each, all copies of ``src`` under fresh UIDs.
    Returns one dict per file: path, study, sop (in study order). ``sop_uids`` forces the SOP UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = src.copy()
    made, forced = [], iter(sop_uids or ())
    for i in range(n_studies):
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        for j in range(per_study):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = next(forced, None) or generate_uid()
            ds.InstanceNumber = j + 1
            path = folder / f"s{i:04d}-{j}.dcm"
            ds.save_as(path, enforce_file_format=True)
            made.append({"path": path, "study": str(ds.StudyInstanceUID), "sop": str(ds.SOPInstanceUID)})
    return made


@pytest.fixture(scope="module")
def slow_bundle(tmp_path_factory) -> Path:
    """~30 ms an image: a burst builds a backlog the model works off in seconds."""
    return make_slow_bundle(tmp_path_factory.mktemp("bundles") / "slow", iterations=SLOW_STEPS // 10)


@pytest.fixture(scope="module")
def busy_bundle(tmp_path_factory) -> Path:
    """~0.3 s an image; a batch of two or more images takes ~3 s (it keeps the worker busy)."""
    return make_slow_bundle(tmp_path_factory.mktemp("bundles") / "busy", iterations=SLOW_STEPS,
                            hang_from_batch=2, hang_steps=10 * SLOW_STEPS)


@pytest.fixture(scope="module")
def hang_bundle(tmp_path_factory) -> Path:
    """Single images score in ~1 ms; a batch of two or more images never comes back."""
    return make_slow_bundle(tmp_path_factory.mktemp("bundles") / "hang", iterations=1000, hang_from_batch=2)


@pytest.fixture
def no_core_dumps():
    """A hung inference left running would abort the node at exit (a crash); with core dumps
    on, that would leave a core file in the working folder. Children inherit the limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    yield
    resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


@pytest.fixture
def fast_senders(monkeypatch):
    monkeypatch.setenv("TCP_NODELAY", "1")  # storescu (DCMTK): Nagle off, see the module docstring


# --- reading the node ---------------------------------------------------------------------------------
def query(node: NodeProcess, sql: str, args=()) -> list[tuple]:
    """Read the node's own state database (WAL: a reader never blocks the node's writer)."""
    con = sqlite3.connect(f"file:{node.spool / 'state.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def study_states(node: NodeProcess) -> dict[str, int]:
    return dict(query(node, "SELECT state, count(*) FROM studies GROUP BY state"))


def statuses_by_file(result) -> list[tuple[str, int]]:
    """(file, C-STORE status) for each file storescu sent, from its -v or -d log."""
    text = result.stdout + result.stderr
    files = re.findall(r"Sending file: (.+?)\s*$", text, re.M)
    statuses = peers.parse_store_statuses(text)
    assert len(files) == len(statuses), f"{len(files)} files sent, {len(statuses)} responses:\n{text[-2000:]}"
    return list(zip(files, statuses))


def worklist_study(node: NodeProcess, study_uid: str) -> dict | None:
    code, wl = node.get("/worklist")
    assert code == 200, wl
    return next((s for s in wl["studies"] if s["study_uid"] == study_uid), None)


class Watcher:
    """Polls the node while something else runs: study states (SQLite), /readyz and, with ``gauge``,
    /metrics' edgeinfer_queue_depth and edgeinfer_backlog_oldest_seconds, every ~50 ms."""

    def __init__(self, node: NodeProcess, *, gauge: bool = False):
        self.node, self.gauge = node, gauge
        self.gauges: list[float] = []
        self.oldest: list[float] = []
        self.states: list[dict[str, int]] = []
        self.readyz: list[tuple[int, dict]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.states.append(study_states(self.node))
                self.readyz.append(self.node.get("/readyz"))
                if self.gauge:
                    text = self.node.get("/metrics")[1]
                    self.gauges.append(metric(text, "edgeinfer_queue_depth"))
                    self.oldest.append(metric(text, "edgeinfer_backlog_oldest_seconds"))
            except Exception as exc:  # noqa: BLE001 - reported by the test, not lost in this thread
                self.errors.append(repr(exc))
            self._stop.wait(0.05)

    def __enter__(self) -> "Watcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def max_queued(self) -> int:
        return max((s.get("queued", 0) for s in self.states), default=0)


# --- 1. a backlog refuses nothing ------------------------------------------------------------------------
@pytest.mark.slow
def test_a_burst_against_a_slow_model_is_all_accepted_scored_and_the_backlog_reported(
        node_factory, slow_bundle, source_instance, fast_senders, tmp_path, dcmtk):
    """The spool is durable, so a backlog costs nothing to accept; refusing it (0xA700) would make a
    technologist resend by hand. Every instance gets Success, every study is scored once, and while
    studies wait /readyz stays 200 and says how many and for how long, as /metrics does."""
    sent_files = clone(source_instance, tmp_path / "burst", BURST)
    by_path = {str(f["path"]): f for f in sent_files}
    node = node_factory("--bundle", str(slow_bundle), "--quiet-seconds", "0")
    assert node.get("/readyz")[0] == 200

    with Watcher(node, gauge=True) as watch:
        r = node.store([tmp_path / "burst"], extra=("-xr", "-nh"), exact_status=True, timeout=300)
        answered = statuses_by_file(r)
        peers.wait_until(lambda: not any(k in study_states(node) for k in ("receiving", "queued", "scoring")),
                         240, 0.2, "the slow model to work off the backlog")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not watch.errors, watch.errors[:3]     # /readyz, /metrics and the state answered throughout

    # every instance acknowledged, none refused: Success <=> kept, in the state and in the spool
    assert sorted(by_path) == sorted(f for f, _ in answered)
    assert Counter(s for _, s in answered) == {SUCCESS: BURST}
    kept = {row[0] for row in query(node, "SELECT sop_uid FROM instances")}
    assert kept == {f["sop"] for f in sent_files}
    assert len(list((node.spool / "instances").rglob("*.dcm"))) == BURST
    _, metrics = node.get("/metrics")
    assert metric(metrics, "edgeinfer_instances_total", '{outcome="stored"}') == BURST
    assert metric(metrics, "edgeinfer_instances_total", '{outcome="out_of_resources"}') == 0

    # the backlog was reported, never a refusal: /readyz 200 throughout, with its size and age while it lasted
    assert {code for code, _ in watch.readyz} == {200}, [b for c, b in watch.readyz if c != 200][:3]
    backlogs = [body["backlog"] for _, body in watch.readyz if "backlog" in body]
    assert backlogs and max(b["studies"] for b in backlogs) >= 10, backlogs[:3]
    assert max(b["oldest_waiting_s"] for b in backlogs) > 0
    assert max(watch.gauges) >= 10 and max(watch.oldest) > 0
    assert node.get("/readyz") == (200, {"status": "ready"})   # worked off: no backlog left to report
    assert metric(node.get("/metrics")[1], "edgeinfer_backlog_oldest_seconds") == 0

    # nothing dropped silently: every study was scored, once, and is on the worklist
    studies = {f["study"] for f in sent_files}
    assert study_states(node) == {"scored": BURST}
    assert query(node, "SELECT count(*), count(DISTINCT study_uid) FROM results")[0] == (BURST, BURST)
    code, wl = node.get("/worklist")
    assert code == 200
    assert {s["study_uid"] for s in wl["studies"]} == studies
    assert all(s["score"] is not None and s["priority"] != "INDETERMINATE" for s in wl["studies"])
    assert wl["errors"] == [] and wl["summary"]["images_scored"] == BURST
    print(f"{BURST} sent, all stored; most studies queued at once: {watch.max_queued()}, "
          f"the oldest waited {max(watch.oldest):.1f} s")


@pytest.fixture(scope="module")
def burst_while_busy(tmp_path_factory, source_instance, busy_bundle):
    """One deterministic run for the two tests below: a 2-image study keeps the worker busy ~3 s;
    while it is scored, 10 single-image studies arrive. What the node answered, and what its state and
    /metrics said every ~50 ms until everything was scored."""
    peers.require_binary("storescu")
    work = tmp_path_factory.mktemp("burst_while_busy")
    long_study = clone(source_instance, work / "long", 1, per_study=2)
    clone(source_instance, work / "singles", 10)
    node = NodeProcess(work, "--bundle", str(busy_bundle), "--quiet-seconds", "1")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TCP_NODELAY", "1")
            assert node.store([work / "long"]).returncode == 0
            uid = long_study[0]["study"]
            peers.wait_until(lambda: query(node, "SELECT state FROM studies WHERE study_uid=?", (uid,))
                             == [("scoring",)], 30, 0.02, "the 2-image study to be scored")
            with Watcher(node, gauge=True) as watch:
                r = node.store([work / "singles"], extra=("-xr", "-nh"))
                statuses = [s for _, s in statuses_by_file(r)]
                peers.wait_until(lambda: study_states(node) == {"scored": 11}, 120, 0.2,
                                 "every study to be scored")
    finally:
        node.stop()
    assert not watch.errors, watch.errors[:3]
    return {"statuses": statuses, "gauges": watch.gauges, "oldest": watch.oldest,
            "queued": [s.get("queued", 0) for s in watch.states]}


def test_a_busy_worker_refuses_nothing(burst_while_busy):
    assert burst_while_busy["statuses"] == [SUCCESS] * 10, [hex(s) for s in burst_while_busy["statuses"]]


def test_queue_depth_and_backlog_age_gauges_show_the_backlog(burst_while_busy):
    assert max(burst_while_busy["queued"]) >= 1          # the state did hold a backlog
    assert max(burst_while_busy["gauges"]) >= 1, "edgeinfer_queue_depth stayed 0 while studies were queued"
    assert max(burst_while_busy["oldest"]) > 0, "edgeinfer_backlog_oldest_seconds stayed 0 while studies waited"


# --- 2. hung model: the watchdog -------------------------------------------------------------------------
def test_hung_model_is_abandoned_by_the_watchdog_and_the_worker_goes_on(no_core_dumps, node_factory, hang_bundle,
                                                                        source_instance, tmp_path, dcmtk):
    from edgeinfer.triage import INDETERMINATE

    hung_a = clone(source_instance, tmp_path / "a", 1, per_study=2)   # a batch of 2: the model never returns
    hung_b = clone(source_instance, tmp_path / "b", 1, per_study=2)
    fine_c = clone(source_instance, tmp_path / "c", 1)                # 1 image: scored in ~1 ms
    # a quiet second: both images of a study arrive before it is complete (quiet 0 could score the first alone)
    node = node_factory("--bundle", str(hang_bundle), "--inference-timeout", "2", "--quiet-seconds", "1")

    def indeterminate(study_uid: str) -> dict:
        assert node.store([f["path"] for f in (hung_a + hung_b) if f["study"] == study_uid]).returncode == 0
        study = peers.wait_until(lambda: worklist_study(node, study_uid), 30, 0.2, "the watchdog's result")
        assert study["priority"] == INDETERMINATE and study["score"] is None and study["version"] == 1
        assert "watchdog" in study["reason"] and "human read" in study["reason"], study["reason"]
        assert len(study["failed_images"]) == 2
        return study

    indeterminate(hung_a[0]["study"])
    # the model still hangs on the next study: abandoned too, the worker is not stuck behind the first one
    indeterminate(hung_b[0]["study"])
    # and a study the model can score is scored by the fresh runner
    assert node.store([fine_c[0]["path"]]).returncode == 0
    study = peers.wait_until(lambda: worklist_study(node, fine_c[0]["study"]), 30, 0.2, "the third study's result")
    assert study["priority"] != INDETERMINATE and 0.0 <= study["score"] <= 1.0 and len(study["images"]) == 1

    assert node.get("/readyz") == (200, {"status": "ready"})
    assert node.get("/healthz")[0] == 200
    assert study_states(node) == {"scored": 3}
    log = node.log.read_text()
    assert log.count("stopped by the watchdog") == 2 and "could not be interrupted" not in log
    assert "Traceback" not in log


def test_readyz_stays_ready_after_a_watchdog_abandon(no_core_dumps, node_factory, hang_bundle, source_instance, tmp_path,
                                                     dcmtk):
    hung = clone(source_instance, tmp_path / "hung", 1, per_study=2)
    node = node_factory("--bundle", str(hang_bundle), "--inference-timeout", "1", "--quiet-seconds", "1")
    assert node.store([tmp_path / "hung"]).returncode == 0
    peers.wait_until(lambda: worklist_study(node, hung[0]["study"]), 30, 0.2, "the watchdog's result")
    time.sleep(1.0)  # give a reload in the background time to finish
    assert node.get("/readyz") == (200, {"status": "ready"})


def test_sigterm_after_a_watchdog_abandon_exits_cleanly(no_core_dumps, node_factory, hang_bundle, source_instance, tmp_path,
                                                        dcmtk):
    hung = clone(source_instance, tmp_path / "hung", 1, per_study=2)
    node = node_factory("--bundle", str(hang_bundle), "--inference-timeout", "1", "--quiet-seconds", "1")
    assert node.store([tmp_path / "hung"]).returncode == 0
    peers.wait_until(lambda: worklist_study(node, hung[0]["study"]), 30, 0.2, "the watchdog's result")
    node.stop()
    assert node.proc.returncode == 0, (node.proc.returncode, node.log.read_text()[-600:])


# --- 2b. a study the node dies while scoring ---------------------------------------------------------------
def test_a_study_the_node_keeps_dying_on_goes_to_a_human_read_and_the_node_goes_on(
        busy_bundle, source_instance, tmp_path, orthanc, dcmtk):
    """kill -9 while a study is scored, twice, as if one of its files crashed a decoder each time: the next
    start does not score it a third time (which would crash the node again, for good under a service
    manager), it sends it to a human read with a result in PACS, and scores the next study as usual."""
    from edgeinfer.triage import INDETERMINATE

    poison = clone(source_instance, tmp_path / "poison", 1, per_study=2)   # a batch of 2: ~3 s of scoring
    fine = clone(source_instance, tmp_path / "fine", 1)
    uid = poison[0]["study"]
    args = ("--bundle", str(busy_bundle), "--quiet-seconds", "1",
            "--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}")
    port = peers.free_port()
    node = NodeProcess(tmp_path, *args, port=port)
    try:
        assert node.store([tmp_path / "poison"]).returncode == 0
        for crash in (1, 2):
            peers.wait_until(lambda: query(node, "SELECT state, crashes FROM studies WHERE study_uid=?", (uid,))
                             == [("scoring", crash - 1)], 60, 0.02, f"the study to be scored (try {crash})")
            node.kill()
            node = NodeProcess(tmp_path, *args, port=port)
        study = peers.wait_until(lambda: worklist_study(node, uid), 30, 0.1, "the study's result")
        assert study["priority"] == INDETERMINATE and study["score"] is None and study["version"] == 1
        assert "stopped 2 times while scoring" in study["reason"] and "human read" in study["reason"], study["reason"]
        paths = [path for path, in query(node, "SELECT path FROM instances WHERE study_uid=?", (uid,))]
        assert len(paths) == 2 and sorted(study["failed_images"]) == sorted(paths)
        code, wl = node.get("/worklist")
        assert {e["code"] for e in wl["errors"] if e["path"] in paths} == {"node-stopped"}, wl["errors"]
        peers.wait_until(lambda: orthanc.srs(uid), 30, 0.2, "the human-read result in PACS")

        assert node.store([fine[0]["path"]]).returncode == 0
        other = peers.wait_until(lambda: worklist_study(node, fine[0]["study"]), 30, 0.1, "the next study's result")
        assert other["priority"] != INDETERMINATE and len(other["images"]) == 1
        assert query(node, "SELECT crashes FROM studies WHERE study_uid=?", (fine[0]["study"],)) == [(0,)]
        log = node.log.read_text()
        assert "stopped 2 times while scoring it; it is not scored again" in log and "Traceback" not in log
    finally:
        node.stop()


def _intake_workers(pid: int) -> set[int]:
    """The node's intake worker processes: its children that multiprocessing spawned (not its resource tracker)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                found.add(int(child))
    return found


def test_intake_processes_outlive_a_killed_worker(node_factory, source_instance, tmp_path, dcmtk):
    """--intake-processes: images are read in a process of the node's own, kept between studies. One killed
    from outside while idle (the OOM killer, an operator) is replaced at the next study, which is scored."""
    import signal

    from edgeinfer.triage import INDETERMINATE

    first, second = clone(source_instance, tmp_path / "a", 1), clone(source_instance, tmp_path / "b", 1)
    node = node_factory("--intake-processes", "1", "--quiet-seconds", "0")
    workers = _intake_workers(node.proc.pid)
    assert len(workers) == 1, workers                      # started with the node, before the first study
    assert node.store([first[0]["path"]]).returncode == 0
    study = peers.wait_until(lambda: worklist_study(node, first[0]["study"]), 30, 0.1, "the first result")
    assert study["priority"] != INDETERMINATE and len(study["images"]) == 1
    assert _intake_workers(node.proc.pid) == workers       # the same process read it
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    assert node.store([second[0]["path"]]).returncode == 0
    study = peers.wait_until(lambda: worklist_study(node, second[0]["study"]), 30, 0.1, "the second result")
    assert study["priority"] != INDETERMINATE and len(study["images"]) == 1, study.get("reason")
    fresh = _intake_workers(node.proc.pid)
    assert len(fresh) == 1 and not fresh & workers
    assert "Traceback" not in node.log.read_text()


def test_with_intake_processes_a_file_that_crashes_its_reader_costs_that_file_only(
        source_instance, tmp_path, monkeypatch, dcmtk):
    """In the node itself (in this process, so that its intake can be one that dies on a marked file, as a
    crashing decoder would): the marked image becomes a ``worker-died`` error of its study, which is scored on
    its other image and, with a file unread, is never ROUTINE; the node goes on. Without processes the crash
    would take the node down."""
    from edgeinfer.intake import Intake
    from edgeinfer.node.config import NodeConfig
    from edgeinfer.node.app import Node
    from helpers import DIE_MARKER, DyingIntake

    made = clone(source_instance, tmp_path / "study", 1, per_study=2)
    poisoned = pydicom.dcmread(made[1]["path"])
    poisoned.ImageComments = DIE_MARKER.decode()
    poisoned.save_as(made[1]["path"])
    real = Intake.for_bundle.__func__
    monkeypatch.setattr(Intake, "for_bundle", classmethod(lambda cls, b, **kw: DyingIntake.of(real(cls, b, **kw))))
    config = NodeConfig(spool=tmp_path / "spool", port=peers.free_port(), http_port=None, quiet_seconds=1,
                        backend="onnxruntime", precision="fp32", threads=1, intake_processes=1).check()
    node = Node(config).start()
    try:
        assert peers.storescu("127.0.0.1", config.port, config.ae_title, [tmp_path / "study"]).returncode == 0
        uid = made[0]["study"]

        def result():
            wl = node.worklist()
            return next(((s, wl["errors"]) for s in wl["studies"] if s["study_uid"] == uid), None)
        study, errors = peers.wait_until(result, 60, 0.1, "the study's result")
        assert len(study["images"]) == 1 and study["images"][0]["status"] == "ok" and len(study["failed_images"]) == 1
        assert study["priority"] != "ROUTINE"
        assert [(e["code"], e["study_uid"]) for e in errors] == [("worker-died", uid)]
        assert errors[0]["path"] == study["failed_images"][0]
        assert node.worker.alive and node.state.counts_by_state() == {"scored": 1}
    finally:
        node.stop()


# --- 3. a failure inside the store handler: 0xC211 ----------------------------------------------------------
def test_store_failure_inside_the_node_answers_c211_never_success(node_factory, source_instance, tmp_path, dcmtk):
    from edgeinfer.node.spool import Spool

    bad_sop = generate_uid()
    good_sop = next(u for u in iter(generate_uid, None) if Spool.key(u)[:2] != Spool.key(bad_sop)[:2])
    bad, good = clone(source_instance, tmp_path / "send", 2, sop_uids=[bad_sop, good_sop])
    node = node_factory("--quiet-seconds", "60")  # nothing gets scored during the test; the default (phantom) bundle
    blocker = node.spool / "instances" / Spool.key(bad_sop)[:2]
    assert (node.spool / "instances").is_dir() and not blocker.exists()
    blocker.write_bytes(b"")  # a file where the spool needs a folder: storing that instance must fail

    r = node.store([bad["path"]], exact_status=True)
    assert peers.parse_store_statuses(r.stdout + r.stderr) == [FAILED]   # exactly 0xC211, never Success
    assert r.returncode != 0                                            # storescu saw a failure
    assert query(node, "SELECT count(*) FROM instances")[0] == (0,)
    assert not list((node.spool / "instances").rglob("*.dcm")) and not list(node.spool.rglob(".*.tmp"))

    # the node goes on serving: the next instance is stored
    r = node.store([good["path"]], exact_status=True)
    assert peers.parse_store_statuses(r.stdout + r.stderr) == [SUCCESS] and r.returncode == 0
    assert query(node, "SELECT sop_uid FROM instances") == [(good_sop,)]
    assert node.get("/readyz")[0] == 200

    # the log names the exception's class, never its text (which holds the spool path) nor the UID
    log = node.log.read_text()
    lines = [line for line in log.splitlines() if "storing an instance failed" in line]
    assert len(lines) == 1 and "(FileExistsError); answered 0xC211" in lines[0], lines
    assert str(node.spool) not in lines[0] and "Errno" not in lines[0] and "File exists" not in lines[0]
    assert bad_sop not in log and "Traceback" not in log
    _, metrics = node.get("/metrics")
    assert metric(metrics, "edgeinfer_instances_total", '{outcome="failed"}') == 1
    assert metric(metrics, "edgeinfer_instances_total", '{outcome="stored"}') == 1

    # nothing was kept, so the sender's retry succeeds once the fault is gone
    blocker.unlink()
    r = node.store([bad["path"]], exact_status=True)
    assert peers.parse_store_statuses(r.stdout + r.stderr) == [SUCCESS]
    assert {row[0] for row in query(node, "SELECT sop_uid FROM instances")} == {bad_sop, good_sop}
    node.stop()
    assert node.proc.returncode == 0, node.log.read_text()[-2000:]   # a clean stop (SIGTERM -> exit 0)
