#!/usr/bin/env python
"""Benchmark of ``edgeinfer serve`` (the DICOM node) against real peers: a benchmark, not a test.

    .venv/bin/python benchmarks/node_bench.py [--studies N] [--images-per-study K] [--intervals 0.5,0]
        [--burst 1000] [--compare 200] [--quiet-seconds Q] [--max-size 512] [--threads T] [--pacs-nagle]
        [--serve-arg=ARG ...] [--poll S] [--json OUT] [--report OUT.md] [--keep]

Starts Orthanc (the PACS, AET ``PACS``) and ``edgeinfer serve --send-to PACS@127.0.0.1:PORT --quiet-seconds Q
--backend onnxruntime --precision fp32`` in subprocesses on free localhost ports, with a temporary spool, and
drives the node with DCMTK's storescu (``-xr``, ``TCP_NODELAY=1``: without it each C-STORE costs ~45 ms of
Nagle + delayed ACK on loopback whatever the node does). Orthanc is DCMTK inside and has the same stall when it
answers a C-STORE, so it gets ``TCP_NODELAY=1`` too (``--pacs-nagle``: leave it on): the PACS's own cost is
then ~5 ms an SR, not ~50.

* **cold**: one study of K images, sent first and waited for; its latency is reported apart (first SR build
  imports highdicom, first inference call).
* **ingest comparison** (``--compare N``, default 200; 0 skips it): the same N instances (studies of K images,
  cloned like the steady ones) go to four receivers, one after the other, each alone with the idle node and
  PACS: DCMTK ``storescp`` (``+xa +B`` into a temporary folder; it does **not** fsync), a second Orthanc
  (fresh storage, ``SyncStorageArea`` true, its default: the file is fsync'd; the node's SRs go to the other
  Orthanc), ``benchmarks/bare_scp.py`` (a bare pynetdicom SCP with the node's presentation contexts that
  only writes each data set to a file and fsyncs it and the folder before Success: the floor the library
  sets) and the node. The method is the same for each: one storescu call (one association) per instance,
  back to back, the same files in the same order; before each receiver, what the previous one stored is
  deleted (unless ``--keep``) and ``sync`` writes every dirty page out (storescp leaves ~90 MB for the kernel
  to flush, which would land in the next receiver's fsyncs). Ingest = instances answered Success / storescu
  wall time summed over the calls. What each stored is counted afterwards (files, Orthanc's /statistics, the node's
  state database: every acknowledged instance must be recorded and its file on disk). The node scores the
  studies as they go quiet during its pass, as in service; their SRs are waited for before the next phase.
* **steady**: one pass per ``--intervals`` value (default ``0.5,0``), each with N fresh studies of K images sent
  *one study at a time*: one storescu call per study, a call starting every S seconds (0.5: a load the node
  keeps up with) or back to back (0: the next call starts when the previous returns, faster than the node
  scores 2-image studies here, so a queue builds). Nothing waits for SRs. Ingest = instances / storescu wall
  time (summed over the calls: process start, association, C-STOREs, release). Latency per study = time its
  SR is seen in Orthanc - time its storescu call returned (its last instance's Success) - Q.
* **burst**: ``--burst`` single-image studies cloned from one phantom, in *one* storescu call (``-nh``: go on
  after a refusal): how many got 0xA700 (none should: only disk space refuses), ingest = instances
  answered / storescu wall time, and for each accepted study: SR seen - its instance's arrival (the node's own
  ``received`` timestamp, from its state database; same clock) - Q.

SR arrival: a thread polls Orthanc's ``/changes`` every ``--poll`` s (50 ms); a NewInstance is timed at the
midpoint between the poll that found it and the one before (resolution +-poll/2). Orthanc only receives the
node's SRs here. Where the time goes comes from the node's state database (``studies.last_received``,
``studies.enqueued``, ``results.created``) and ``/metrics`` (``edgeinfer_inference_seconds``).

Targets (``targets`` in the JSON, met / not met lines in the summary): the node's ingest at least 80 % of the
bare pynetdicom SCP's with every acknowledged instance durable; the node's own cost per study (SR seen - last
instance received - Q - the triage call, in the paced steady pass) at most the triage call
(``edgeinfer_inference_seconds``); the burst with no 0xA700 and its last SR in Orthanc within 60 s of
storescu's return.

Writes JSON (``--json``) and a Markdown summary (``--report``), and prints the summary. Needs ``Orthanc``,
``storescu``, ``storescp`` and ``echoscu`` (Debian: ``apt-get install orthanc dcmtk``). Measure on an idle
machine: the load average at start and end is recorded, and a note is added when the machine was busy.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FORMAT = 1
NODE_AET, PACS_AET, MODALITY_AET = "EDGEINFER", "PACS", "MODALITY"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # everything goes to 127.0.0.1
_EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")  # Orthanc lives in /usr/sbin
#: storescu -v names (DCMTK 3.6.7) -> status; the 0xA7xx/0xA9xx/0xCxxx names lose the low byte
_STATUS_NAMES = {"success": 0x0000, "warning:coercionofdataelements": 0xB000,
                 "warning:datasetdoesnotmatchsopclass": 0xB007, "warning:elementsdiscarded": 0xB006,
                 "refused:outofresources": 0xA700, "error:datasetdoesnotmatchsopclass": 0xA900,
                 "error:cannotunderstand": 0xC000, "refused:sopclassnotsupported": 0x0122}
_RSP = re.compile(r"Received Store Response \((?P<name>[^)]*)\)")
_SENDING = re.compile(r"Sending file: (?P<path>.+?)\s*$", re.M)
#: patient and study modules made the same across the images of one cloned study (the node refuses to
#: file one SR for images naming two patients)
_STUDY_LEVEL = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyDescription")


# --- small helpers ------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[node-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in _EXTRA_BIN_DIRS:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    sys.exit(f"node_bench: {name} is not installed (Debian: apt-get install orthanc dcmtk)")


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with _OPENER.open(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(predicate, timeout: float, interval: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def stop(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM the process we started, SIGKILL it after ``grace`` s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def quantile(xs: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not xs:
        return None
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "min": round(min(xs), 4), "p50": round(quantile(xs, 0.5), 4),
            "p95": round(quantile(xs, 0.95), 4), "max": round(max(xs), 4), "mean": round(statistics.fmean(xs), 4)}


def version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_identity() -> dict:
    """Model name, family, model and stepping of the first CPU in /proc/cpuinfo."""
    out: dict = {}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        key = key.strip()
        names = {"vendor_id": "vendor_id", "cpu family": "cpu_family", "model": "cpu_model_number",
                 "stepping": "stepping", "cpu MHz": "cpu_mhz"}
        if key in names:
            out[names[key]] = value.strip()
    return out


# --- Orthanc --------------------------------------------------------------------------------------------
class Orthanc:
    """Orthanc with its own storage and fresh ports (config as in tests/peers.py). ``sync_storage``: Orthanc's
    ``SyncStorageArea`` (fsync each stored file; Orthanc's default is true, the PACS runs without it)."""

    def __init__(self, workdir: Path, nodelay: bool = True, sync_storage: bool = False):
        self.binary = find_binary("Orthanc")
        env = dict(os.environ)
        if nodelay:  # DCMTK inside Orthanc: Nagle off, like storescu (else ~45 ms per C-STORE response)
            env["TCP_NODELAY"] = "1"
        workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self.http_port, self.dicom_port = free_port(), free_port()
            if self.http_port == self.dicom_port:
                continue
            run = workdir / f"run{attempt}"
            run.mkdir()
            config = {"Name": "edgeinfer-node-bench", "StorageDirectory": str(run / "storage"),
                      "IndexDirectory": str(run / "index"), "Plugins": [], "LuaScripts": [], "ConcurrentJobs": 1,
                      "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": PACS_AET,
                      "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
                      "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True, "UnknownSopClassAccepted": False,
                      "StableAge": 1, "SaveJobs": False, "OrthancExplorerEnabled": False, "WebDavEnabled": False,
                      "MetricsEnabled": False, "HttpThreadsCount": 4, "DicomThreadsCount": 2,
                      "DicomScpTimeout": 30, "DicomAssociationCloseDelay": 0, "SyncStorageArea": sync_storage,
                      "DicomTlsEnabled": False}
            (run / "orthanc.json").write_text(json.dumps(config, indent=1))
            self.log = run / "orthanc.log"
            with open(run / "orthanc.console", "wb") as out:
                self.proc = subprocess.Popen([self.binary, f"--logfile={self.log}", "--no-jobs",
                                              str(run / "orthanc.json")], stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, cwd=run, start_new_session=True,
                                             env=env)
            try:
                wait_until(lambda: self.proc.poll() is not None or self._answers(), 30, 0.05, "Orthanc's REST side")
            except TimeoutError:
                pass
            if self.proc.poll() is None and self._answers():
                return
            stop(self.proc)
        sys.exit(f"node_bench: Orthanc did not start; see {self.log}")

    def _answers(self) -> bool:
        try:
            return http_get(f"http://127.0.0.1:{self.http_port}/system", 1.0)[0] == 200
        except OSError:
            return False

    def rest(self, path: str, timeout: float = 10.0):
        code, body = http_get(f"http://127.0.0.1:{self.http_port}{path}", timeout)
        if code != 200:
            raise RuntimeError(f"Orthanc GET {path} -> HTTP {code}: {body[:300]!r}")
        return json.loads(body)

    def instance_studies(self) -> dict[str, str]:
        """Orthanc instance id -> StudyInstanceUID, for every stored instance (three requests)."""
        series_of = {i["ID"]: i["ParentSeries"] for i in self.rest("/instances?expand", 60)}
        study_of = {s["ID"]: s["ParentStudy"] for s in self.rest("/series?expand", 60)}
        uid_of = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"] for s in self.rest("/studies?expand", 60)}
        return {i: uid_of[study_of[s]] for i, s in series_of.items()}


class ChangeWatcher(threading.Thread):
    """Polls Orthanc's /changes; times each NewInstance at the midpoint of the polls around it."""

    def __init__(self, orthanc: Orthanc, interval: float):
        super().__init__(name="orthanc-changes", daemon=True)
        self.orthanc, self.interval = orthanc, interval
        self.seen: dict[str, float] = {}
        self.errors: list[str] = []
        self.polls = 0
        self._halt = threading.Event()

    def run(self) -> None:
        since, before = 0, time.time()
        while not self._halt.is_set():
            try:
                r = self.orthanc.rest(f"/changes?since={since}&limit=1000")
            except Exception as exc:  # noqa: BLE001 - reported, never fatal to the thread
                self.errors.append(repr(exc))
                self._halt.wait(self.interval)
                continue
            now = time.time()
            self.polls += 1
            for c in r.get("Changes", []):
                if c.get("ChangeType") == "NewInstance":
                    self.seen.setdefault(c["ID"], (before + now) / 2)
            since = r.get("Last", since)
            before = now
            if r.get("Done", True):
                self._halt.wait(self.interval)

    def count(self) -> int:
        return len(self.seen)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


# --- the node -------------------------------------------------------------------------------------------
class Node:
    def __init__(self, workdir: Path, args, pacs: Orthanc):
        self.port, self.http_port = free_port(), free_port()
        self.spool = workdir / "spool"
        self.log = workdir / "serve.log"
        self.cmd = [sys.executable, "-m", "edgeinfer", "serve", "--spool", str(self.spool), "--port", str(self.port),
                    "--http-port", str(self.http_port), "--send-to", f"{PACS_AET}@127.0.0.1:{pacs.dicom_port}",
                    "--quiet-seconds", f"{args.quiet_seconds:g}", "--backend", "onnxruntime", "--precision", "fp32"]
        if args.threads is not None:
            self.cmd += ["--threads", str(args.threads)]
        self.cmd += args.serve_arg
        env = {k: v for k, v in os.environ.items() if k != "EDGEINFER_TRUST"}
        t0 = time.perf_counter()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=ROOT)
        try:
            wait_until(lambda: self.proc.poll() is not None or self.get("/readyz")[0] == 200, 120, 0.1,
                       "the node's /readyz")
        except TimeoutError:
            pass
        if self.proc.poll() is not None or self.get("/readyz")[0] != 200:
            stop(self.proc)
            sys.exit(f"node_bench: edgeinfer serve did not become ready:\n{self.log.read_text()[-3000:]}")
        self.start_s = time.perf_counter() - t0

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            return http_get(f"http://127.0.0.1:{self.http_port}{path}", 10)
        except OSError:
            return 0, b""

    def metrics(self) -> dict[str, float]:
        code, body = self.get("/metrics")
        out = {}
        for line in body.decode(errors="replace").splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    def query(self, sql: str) -> list[tuple]:
        con = sqlite3.connect(f"file:{self.spool / 'state.sqlite3'}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    def timeline(self) -> dict[str, dict]:
        """Per study (v1): last_received, enqueued, result created (all the node's time.time()), and the
        result's per-study image timings (ms: read + decode, preprocess, infer = the model, total)."""
        rows = self.query("SELECT s.study_uid, s.last_received, s.enqueued, r.created, s.state, r.record "
                          "FROM studies s LEFT JOIN results r ON r.study_uid = s.study_uid AND r.version = 1")
        out = {}
        for u, lr, enq, rc, st, record in rows:
            try:
                timings = (json.loads(record).get("study") or {}).get("timings_ms") if record else None
            except (ValueError, AttributeError):
                timings = None
            out[u] = {"last_received": lr, "enqueued": enq, "result_created": rc, "state": st, "timings_ms": timings}
        return out

    def instances(self) -> dict[str, tuple]:
        """SOP Instance UID -> (spool path, bytes recorded, purged by retention: when, or None)."""
        try:
            rows = self.query("SELECT sop_uid, path, bytes, purged FROM instances")
        except sqlite3.OperationalError:  # a state without the size and purge columns
            rows = [(u, p, None, None) for u, p in self.query("SELECT sop_uid, path FROM instances")]
        return {u: (p, b, pg) for u, p, b, pg in rows}


# --- the modality ---------------------------------------------------------------------------------------
def storescu(port: int, files: list[Path], *, called: str = NODE_AET, no_halt: bool = False,
             timeout: float = 600) -> dict:
    cmd = [find_binary("storescu"), "-v", "-aec", called, "-aet", MODALITY_AET, "-xr"]
    if no_halt:
        cmd.append("-nh")
    cmd += ["127.0.0.1", str(port), *map(str, files)]
    env = dict(os.environ, TCP_NODELAY="1")  # DCMTK: Nagle off (see the module docstring)
    t0 = time.time()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                       timeout=timeout, env=env)
    t1 = time.time()
    text = p.stdout + p.stderr
    statuses = []
    for m in _RSP.finditer(text):
        key = re.sub(r"\s+", "", m["name"]).lower()
        u = re.search(r"0x([0-9a-f]{1,4})", key)
        statuses.append(_STATUS_NAMES.get(key, int(u.group(1), 16) if u else -1))
    sent = _SENDING.findall(text)
    return {"start": t0, "end": t1, "wall_s": t1 - t0, "returncode": p.returncode, "statuses": statuses,
            "files": sent, "tail": text[-1500:]}


# --- the ingest comparison: the other receivers -----------------------------------------------------------
def echo_ok(port: int, called: str) -> bool:
    """One C-ECHO (DCMTK echoscu) answered: the receiver is up."""
    try:
        return subprocess.run([find_binary("echoscu"), "-aec", called, "-aet", MODALITY_AET, "127.0.0.1", str(port)],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
                              env=dict(os.environ, TCP_NODELAY="1")).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def wait_echo(proc: subprocess.Popen, port: int, called: str, what: str, log_path: Path) -> None:
    try:
        wait_until(lambda: proc.poll() is not None or echo_ok(port, called), 60, 0.1, what)
    except TimeoutError:
        pass
    if proc.poll() is not None or not echo_ok(port, called):
        tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        raise RuntimeError(f"node_bench: {what} did not start (exit {proc.poll()}):\n{tail}")


class StoreSCP:
    """DCMTK storescp: every instance written as received (``+B``) into a folder; it does not fsync."""

    called = "STORESCP"

    def __init__(self, folder: Path, log_path: Path, started: list):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port = folder, free_port()
        self.cmd = [find_binary("storescp"), "-od", str(folder), "+B", "+xa", "-aet", self.called, str(self.port)]
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, TCP_NODELAY="1"), start_new_session=True)
        started.append(self.proc)
        wait_echo(self.proc, self.port, self.called, "storescp", log_path)


class BareSCP:
    """benchmarks/bare_scp.py: a bare pynetdicom storage SCP that fsyncs each file and its folder before Success."""

    called = "BARE"

    def __init__(self, folder: Path, log_path: Path, max_pdu: int, started: list):
        import select

        self.folder = folder
        self.cmd = [sys.executable, str(ROOT / "benchmarks" / "bare_scp.py"), str(folder), "--port", "0",
                    "--max-pdu", str(max_pdu), "--ae-title", self.called]
        with open(log_path, "ab") as err:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                         cwd=ROOT, text=True, start_new_session=True)
        started.append(self.proc)
        self.port = None
        deadline = time.monotonic() + 60
        while self.port is None and time.monotonic() < deadline and self.proc.poll() is None:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            line = self.proc.stdout.readline() if ready else ""
            if line.startswith("READY "):
                self.port = int(line.split()[1])
        if self.port is None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"node_bench: bare_scp.py did not start:\n{tail}")
        wait_echo(self.proc, self.port, self.called, "bare_scp.py", log_path)


def folder_contents(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def serve_max_pdu(serve_args: list[str]) -> int:
    """The node's --max-pdu as given through --serve-arg, else its default (16384)."""
    value = None
    for i, a in enumerate(serve_args):
        if a.startswith("--max-pdu="):
            value = a.split("=", 1)[1]
        elif a == "--max-pdu" and i + 1 < len(serve_args):
            value = serve_args[i + 1]
    try:
        return int(value) if value is not None else 16384
    except ValueError:
        return 16384


def ingest_pass(port: int, called: str, files: list[Path], sop_of: dict[str, str]) -> dict:
    """One storescu call (one association) per instance, back to back."""
    calls = [storescu(port, [f], called=called, timeout=120) for f in files]
    statuses = [c["statuses"][0] if c["statuses"] else None for c in calls]
    bad = next((c for c, st in zip(calls, statuses) if st != 0), None)
    return {"start": calls[0]["start"], "end": calls[-1]["end"], "walls": [c["wall_s"] for c in calls],
            "statuses": statuses, "acked": [sop_of[str(f)] for f, st in zip(files, statuses) if st == 0],
            "first_failure": None if bad is None else bad["tail"][-600:]}


def compare_ingest(work: Path, args, data: dict, node: Node, started: list) -> dict:
    """The same instances to storescp, a second Orthanc, the bare pynetdicom SCP and the node, one after the
    other; each extra receiver runs only for its own pass."""
    files = [p for _, ps in data["compare"] for p in ps]
    sop_of = data["sop_of"]
    raw: dict[str, dict] = {}

    def settle(*leftovers: Path) -> None:
        """Between receivers: what the last one stored leaves the disk (unless --keep, so that the node never
        sees less free space than the others did), every dirty page is written out (storescp's are not, and
        the kernel would flush them during the next receiver's fsyncs), and the machine gets a breath."""
        if not args.keep:
            for folder in leftovers:
                shutil.rmtree(folder, ignore_errors=True)
        os.sync()
        time.sleep(1.0)

    def measure(name: str, port: int, called: str) -> dict:
        log(f"ingest comparison: {len(files)} instances to {name}, one storescu call each")
        r = ingest_pass(port, called, files, sop_of)
        log(f"ingest comparison: {name}: {len(r['acked'])} acknowledged in {sum(r['walls']):.1f} s")
        return r

    settle()
    scp = StoreSCP(work / "cmp-storescp", work / "storescp.log", started)
    r = measure("storescp", scp.port, scp.called)
    stop(scp.proc)
    r["stored"] = folder_contents(scp.folder)
    r["command"] = " ".join(["storescp", *scp.cmd[1:]])
    raw["storescp"] = r
    settle(scp.folder)

    pacs2 = Orthanc(work / "orthanc-ingest", nodelay=not args.pacs_nagle, sync_storage=True)
    started.append(pacs2.proc)
    wait_echo(pacs2.proc, pacs2.dicom_port, PACS_AET, "the second Orthanc's DICOM port", pacs2.log)
    r = measure("Orthanc", pacs2.dicom_port, PACS_AET)
    time.sleep(0.5)  # Orthanc answers after its index transaction; the statistics follow it
    stats = pacs2.rest("/statistics")
    r["stored"] = (int(stats.get("CountInstances", 0)), int(stats.get("TotalDiskSize", 0)))
    r["version"] = pacs2.rest("/system").get("Version")
    stop(pacs2.proc)
    raw["orthanc"] = r
    settle(pacs2.log.parent / "storage", pacs2.log.parent / "index")

    bare = BareSCP(work / "cmp-bare", work / "bare_scp.log", serve_max_pdu(args.serve_arg), started)
    r = measure("the bare pynetdicom SCP", bare.port, bare.called)
    stop(bare.proc)
    bare.proc.stdout.close()
    r["stored"] = folder_contents(bare.folder)
    r["command"] = " ".join(["python", "benchmarks/bare_scp.py", *bare.cmd[2:]])
    raw["bare_pynetdicom"] = r
    settle(bare.folder)

    r = measure("the node", node.port, NODE_AET)
    recorded = node.instances()   # before retention can purge anything: purged rows count as kept anyway
    kept = 0
    for sop in r["acked"]:
        path, nbytes, purged = recorded.get(sop, (None, None, None))
        if path is not None and (purged is not None or (os.path.isfile(path) and
                                                         (nbytes is None or os.path.getsize(path) == nbytes))):
            kept += 1
    r["durable_checked"] = kept
    r["stored"] = (sum(1 for s in r["acked"] if s in recorded), sum(recorded[s][1] or 0 for s in r["acked"]
                                                                      if s in recorded))
    raw["node"] = r
    return raw


# --- the data -------------------------------------------------------------------------------------------
def make_data(work: Path, args) -> dict:
    import pydicom
    from pydicom.uid import generate_uid

    from edgeinfer import phantom

    pool_dir = work / "pool"
    rows = phantom.generate(pool_dir, args.pool, seed=args.seed, max_size=args.max_size)
    pool = [pool_dir / r["path"] for r in rows]
    datasets = [pydicom.dcmread(p) for p in pool]
    sop_of: dict[str, str] = {}  # cloned file -> its SOP Instance UID

    def clone_study(folder: Path, index: int, k: int, sources: list) -> tuple[str, list[Path]]:
        folder.mkdir(parents=True, exist_ok=True)
        study_uid = generate_uid()
        first = sources[0]
        paths = []
        for j, src in enumerate(sources[:k]):
            ds = src.copy()
            for kw in _STUDY_LEVEL:  # one patient and one study per cloned study
                if kw in first:
                    setattr(ds, kw, first[kw].value)
                elif kw in ds:
                    delattr(ds, kw)
            ds.PatientID = f"NODEBENCH-{folder.name}-{index:04d}"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = j + 1
            path = folder / f"s{index:04d}-{j}.dcm"
            ds.save_as(path, enforce_file_format=True)
            sop_of[str(path)] = str(ds.SOPInstanceUID)
            paths.append(path)
        return study_uid, paths

    def rotating(start: int, k: int) -> list:
        return [datasets[(start + j) % len(datasets)] for j in range(k)]

    K = args.images_per_study
    cold = clone_study(work / "cold", 0, K, rotating(0, K))
    steady = [[clone_study(work / f"steady{n}", i, K, rotating(i * K, K)) for i in range(args.studies)]
              for n in range(len(args.intervals))]
    burst_src = datasets[0]
    burst = [clone_study(work / "burst", i, 1, [burst_src]) for i in range(args.burst)]
    compare = []  # --compare instances in studies of K (the last one may be smaller)
    for i in range(-(-args.compare // K)):
        k = min(K, args.compare - i * K)
        compare.append(clone_study(work / "compare", i, k, rotating(i * K, k)))
    sizes = [p.stat().st_size for _, ps in steady[0] for p in ps]
    compare_sizes = [p.stat().st_size for _, ps in compare for p in ps]
    return {
        "cold": cold, "steady": steady, "burst": burst, "compare": compare, "sop_of": sop_of,
        "info": {
            "generator": f"edgeinfer.phantom.generate({args.pool}, seed={args.seed}, max_size={args.max_size})",
            "pool_images": len(pool),
            "pool": [{"modality": r["modality"], "rows": r["rows"], "columns": r["columns"],
                      "transfer_syntax": r["transfer_syntax"], "photometric": r["photometric"]} for r in rows],
            "steady_bytes_per_instance_mean": round(statistics.fmean(sizes)) if sizes else None,
            "compare_bytes_per_instance_mean": round(statistics.fmean(compare_sizes)) if compare_sizes else None,
            "burst_source": {"modality": rows[0]["modality"], "rows": rows[0]["rows"], "columns": rows[0]["columns"],
                             "transfer_syntax": rows[0]["transfer_syntax"],
                             "bytes": burst[0][1][0].stat().st_size if burst else None},
            "cloning": "fresh Study/Series/SOP Instance UIDs and one Patient ID per study; the K images of a "
                       "study rotate over the pool, with the first image's patient and study modules",
        }}


# --- phases ---------------------------------------------------------------------------------------------
def wait_srs(watch: ChangeWatcher, n: int, timeout: float, what: str) -> bool:
    try:
        wait_until(lambda: watch.count() >= n, timeout, 0.05, what)
        return True
    except TimeoutError as exc:
        log(str(exc))
        return False


def inference_delta(before: dict, after: dict) -> dict:
    s = after.get("edgeinfer_inference_seconds_sum", 0) - before.get("edgeinfer_inference_seconds_sum", 0)
    c = after.get("edgeinfer_inference_seconds_count", 0) - before.get("edgeinfer_inference_seconds_count", 0)
    return {"calls": int(c), "mean_s": round(s / c, 4) if c else None, "total_s": round(s, 3)}


def breakdown(timeline: dict, sr_at: dict, uids: list[str], q: float) -> dict:
    """Where each study's time went, from the node's own timestamps (p50/p95/max of each segment)."""
    quiet_extra, score_sr, send = [], [], []
    for u in uids:
        t = timeline.get(u)
        if not t or t["enqueued"] is None:
            continue
        quiet_extra.append(t["enqueued"] - t["last_received"] - q)
        if t["result_created"] is not None:
            score_sr.append(t["result_created"] - t["enqueued"])
            if u in sr_at:
                send.append(sr_at[u] - t["result_created"])
    return {"quiet_overrun_s": summary(quiet_extra), "queue_score_sr_s": summary(score_sr),
            "send_to_pacs_s": summary(send)}


def own_cost(timeline: dict, sr_at: dict, uids: list[str], q: float, triage_s: float | None) -> dict:
    """The node's own cost per study, everything but the triage call: SR seen in Orthanc - the study's last
    instance received - Q - the triage call (``edgeinfer_inference_seconds`` mean over the phase), split
    into quiet overrun, score step beyond the triage call (SR build, state transaction), send to PACS;
    next to the result's own image timings (model inference alone, read + decode + preprocess)."""
    total, overrun, beyond, send, model, intake = [], [], [], [], [], []
    for u in uids:
        t = timeline.get(u)
        if not t or t["enqueued"] is None or t["result_created"] is None or u not in sr_at:
            continue
        tm = t.get("timings_ms") or {}
        if tm.get("infer") is not None:
            model.append(tm["infer"] / 1e3)
            intake.append((tm.get("read", 0) + tm.get("preprocess", 0)) / 1e3)
        if triage_s is None:
            continue
        total.append(sr_at[u] - t["last_received"] - q - triage_s)
        overrun.append(t["enqueued"] - t["last_received"] - q)
        beyond.append(t["result_created"] - t["enqueued"] - triage_s)
        send.append(sr_at[u] - t["result_created"])
    return {"own_cost_s": summary(total), "quiet_overrun_s": summary(overrun),
            "score_step_beyond_triage_call_s": summary(beyond), "send_to_pacs_s": summary(send),
            "triage_call_mean_s": None if triage_s is None else round(triage_s, 4),
            "model_inference_s": summary(model), "read_decode_preprocess_s": summary(intake)}


#: the receivers of the ingest comparison, in the order they are measured
RECEIVERS = {
    "storescp": ("DCMTK storescp", False, "no: storescp writes each file (+B, as received) and answers without fsync; "
                                          "an acknowledged instance can be lost in a power cut"),
    "orthanc": ("Orthanc (a second one)", True, "SyncStorageArea true (Orthanc's default): the storage file is "
                                                "fsync'd; index in Orthanc's SQLite database with its own settings"),
    "bare_pynetdicom": ("bare pynetdicom SCP", True, "yes: the data set as received written to a file, the file and "
                                                     "its folder fsync'd, then Success"),
    "node": ("edgeinfer serve", True, "yes: spool file written, fsync'd, renamed, folder fsync'd, the instance "
                                      "recorded in the state database (SQLite WAL, synchronous=FULL), then Success"),
}


def compare_figures(raw: dict, data: dict, timeline: dict, args) -> dict:
    n = sum(len(ps) for _, ps in data["compare"])
    receivers = {}
    for key, (label, durable, how) in RECEIVERS.items():
        r = raw[key]
        walls = r["walls"]
        st = r["statuses"]
        counts = {("none" if x is None else f"0x{x:04X}"): st.count(x) for x in dict.fromkeys(st)}
        d = {"receiver": label, "durable_before_success": durable, "durability": how,
             "instances": n, "acknowledged": len(r["acked"]), "statuses": counts,
             "storescu_wall_s_total": round(sum(walls), 3),
             "storescu_wall_s_per_instance": summary(walls),
             "ingest_instances_per_s": round(len(r["acked"]) / sum(walls), 2) if sum(walls) else None,
             "pass_span_s": round(r["end"] - r["start"], 3),
             "stored_instances": r["stored"][0], "stored_bytes": r["stored"][1]}
        if r.get("command"):
            d["command"] = r["command"]
        if r.get("version"):
            d["version"] = r["version"]
        if r["first_failure"]:
            d["first_failure_tail"] = r["first_failure"]
        receivers[key] = d
    bare = receivers["bare_pynetdicom"]["ingest_instances_per_s"]
    for d in receivers.values():
        d["vs_bare_pynetdicom"] = round(d["ingest_instances_per_s"] / bare, 3) \
            if bare and d["ingest_instances_per_s"] is not None else None
    node_raw = raw["node"]
    uids = [u for u, _ in data["compare"]]
    scored = sum(1 for u in uids if timeline.get(u, {}).get("result_created") is not None
                 and node_raw["start"] <= timeline[u]["result_created"] <= node_raw["end"])
    receivers["node"].update(acknowledged_and_durable=node_raw["durable_checked"],
                             studies=len(uids), studies_scored_during_its_pass=scored,
                             all_srs_seen=node_raw.get("all_srs_seen"))
    return {"instances": n, "studies": len(uids), "images_per_study": args.images_per_study,
            "bytes_per_instance_mean": data["info"]["compare_bytes_per_instance_mean"],
            "sending": "one storescu call (one association) per instance, back to back, the same files in the same "
                       "order for every receiver, each receiver alone (the node and the PACS idle), after a sync "
                       "and with the previous receiver's files deleted",
            "ingest": "instances answered Success / storescu wall time summed over the calls (process start, "
                      "association, C-STORE, release)",
            "receivers": receivers, "node_vs_bare_pynetdicom": receivers["node"]["vs_bare_pynetdicom"]}


def targets(comparison: dict | None, steady: list[dict], burst: dict | None) -> dict:
    """The issue's three targets, each with its figures and met (True / False; None: not measured)."""
    out = {}
    if comparison:
        node, bare = comparison["receivers"]["node"], comparison["receivers"]["bare_pynetdicom"]
        ratio = comparison["node_vs_bare_pynetdicom"]
        durable = node["acknowledged_and_durable"] == node["acknowledged"] == node["instances"]
        out["ingest_vs_bare_scp"] = {
            "target": "the node's ingest at least 80 % of the bare pynetdicom SCP's, every acknowledged instance "
                      "durable",
            "node_instances_per_s": node["ingest_instances_per_s"],
            "bare_instances_per_s": bare["ingest_instances_per_s"],
            "ratio": ratio, "instances": node["instances"], "acknowledged": node["acknowledged"],
            "acknowledged_and_durable": node["acknowledged_and_durable"],
            "met": bool(ratio is not None and ratio >= 0.8 and durable)}
    else:
        out["ingest_vs_bare_scp"] = {"target": "the node's ingest at least 80 % of the bare pynetdicom SCP's",
                                     "met": None, "why": "--compare 0"}
    paced = [d for d in steady if d["interval_s"] > 0]
    chosen = max(paced, key=lambda d: d["interval_s"]) if paced else (steady[0] if steady else None)
    oc = chosen and chosen["own_cost_per_study"]
    own, inf = (oc["own_cost_s"].get("p50"), oc["triage_call_mean_s"]) if oc else (None, None)
    out["own_cost_vs_inference"] = {
        "target": "the node's own cost per study (everything except inference) at most the inference time",
        "pass": _steady_name(chosen) if chosen else None,
        "queue_free": bool(paced),
        "own_cost_s_p50": own, "inference_s": inf,
        "quiet_overrun_s_p50": oc and oc["quiet_overrun_s"].get("p50"),
        "score_step_beyond_triage_call_s_p50": oc and oc["score_step_beyond_triage_call_s"].get("p50"),
        "send_to_pacs_s_p50": oc and oc["send_to_pacs_s"].get("p50"),
        "model_inference_s_p50": oc and oc["model_inference_s"].get("p50"),
        "met": None if own is None or inf is None else bool(own <= inf)}
    if burst:
        drain = burst["drain_s_after_storescu"]
        out["burst"] = {
            "target": "no 0xA700 in the burst (only disk space refuses) and its last SR in Orthanc within 60 s of "
                      "the burst's end",
            "instances": burst["instances"], "refused_a700": burst["refused_a700"],
            "refused_a700_node_metric": burst["refused_a700_node_metric"],
            "last_sr_after_burst_end_s": drain, "srs_seen": burst["srs_seen"], "accepted": burst["accepted"],
            "all_srs_seen": burst["all_srs_seen"],
            "met": bool(burst["refused_a700"] == 0 and burst["refused_a700_node_metric"] == 0
                        and burst["all_srs_seen"] and drain is not None and drain <= 60)}
    else:
        out["burst"] = {"target": "no 0xA700 and the last SR within 60 s of the burst's end", "met": None,
                        "why": "--burst 0"}
    return out


def run(args) -> dict:
    if args.studies < 1 or args.images_per_study < 1 or args.burst < 0 or args.compare < 0 or args.quiet_seconds < 0:
        sys.exit("node_bench: --studies and --images-per-study must be >= 1, --burst, --compare and --quiet-seconds "
                 ">= 0")
    from edgeinfer import sysinfo

    machine = sysinfo.machine_info()
    machine["cpu"].update(cpu_identity())
    load_start = sysinfo.load_average()
    cores = sysinfo.usable_cpus()
    notes: list[str] = []
    if load_start and load_start[0] > 0.5 * cores:
        notes.append(f"the machine was busy at start (1-minute load average {load_start[0]} on {cores} CPUs): "
                     "the figures are inflated")
    work = Path(tempfile.mkdtemp(prefix="edgeinfer-node-bench-"))
    q = float(args.quiet_seconds)
    orthanc = node = watch = None
    started: list[subprocess.Popen] = []  # the comparison's extra receivers
    try:
        log(f"generating data under {work}")
        t0 = time.perf_counter()
        data = make_data(work, args)
        log(f"data ready in {time.perf_counter() - t0:.1f} s; starting Orthanc and edgeinfer serve")
        orthanc = Orthanc(work / "orthanc", nodelay=not args.pacs_nagle)
        node = Node(work, args, orthanc)
        log(f"node ready in {node.start_s:.1f} s (DICOM {node.port}, HTTP {node.http_port}); "
            f"Orthanc DICOM {orthanc.dicom_port}, HTTP {orthanc.http_port}")
        watch = ChangeWatcher(orthanc, args.poll)
        watch.start()
        expected = 0

        # cold: the first study after start
        cold_uid, cold_files = data["cold"]
        r = storescu(node.port, cold_files)
        expected += 1
        wait_srs(watch, expected, 60 + q, "the cold study's SR")
        cold = {"storescu_s": round(r["wall_s"], 4), "statuses_ok": r["statuses"] == [0] * len(cold_files),
                "_end": r["end"], "uid": cold_uid}

        # ingest comparison: storescp, a second Orthanc, the bare pynetdicom SCP, the node
        compare_raw = None
        if args.compare:
            compare_raw = compare_ingest(work, args, data, node, started)
            expected += len(data["compare"])
            compare_raw["node"]["all_srs_seen"] = wait_srs(watch, expected, 120 + q + 1.0 * len(data["compare"]),
                                                           "the comparison studies' SRs")

        # steady: one pass per interval
        steady_runs = []
        m_prev = node.metrics()
        for interval, studies in zip(args.intervals, data["steady"]):
            how = f"one every {interval:g} s" if interval else "back to back"
            log(f"steady: {args.studies} studies x {args.images_per_study} images, one storescu call per study, {how}")
            calls = []
            t_next = time.time()
            for uid, files in studies:
                time.sleep(max(0.0, t_next - time.time()))
                t_next = time.time() + interval
                r = storescu(node.port, files)
                calls.append((uid, r))
                if r["statuses"] != [0] * len(files):
                    notes.append(f"steady: a study got statuses {r['statuses']} (rc {r['returncode']})")
            expected += len(calls)
            done = wait_srs(watch, expected, 120 + q + 2 * len(calls), "the steady studies' SRs")
            time.sleep(args.poll * 2)
            m_now = node.metrics()
            steady_runs.append({"interval": interval, "calls": calls, "done": done, "m0": m_prev, "m1": m_now})
            m_prev = m_now
        m1 = m_prev

        # burst
        burst_calls = None
        if args.burst:
            files = [p for _, ps in data["burst"] for p in ps]
            log(f"burst: {len(files)} single-image studies in one storescu call")
            rb = storescu(node.port, files, no_halt=True, timeout=600)
            by_file = dict(zip(rb["files"], rb["statuses"]))
            if len(rb["files"]) != len(rb["statuses"]):
                notes.append(f"burst: storescu logged {len(rb['files'])} files and {len(rb['statuses'])} responses")
            accepted = [uid for uid, ps in data["burst"] if by_file.get(str(ps[0])) == 0]
            expected += len(accepted)
            log(f"burst: {len(accepted)} accepted in {rb['wall_s']:.1f} s; waiting for their SRs")
            burst_done = wait_srs(watch, expected, 120 + q + 1.0 * len(accepted), "the burst's SRs")
            time.sleep(args.poll * 2)
            burst_calls = (rb, accepted, burst_done)
        m2 = node.metrics()

        # read everything back
        watch.stop()
        sr_at: dict[str, float] = {}
        for inst, uid in orthanc.instance_studies().items():
            if inst in watch.seen:
                sr_at[uid] = min(sr_at.get(uid, float("inf")), watch.seen[inst])
        timeline = node.timeline()
        run_record = json.loads(node.get("/worklist")[1] or b"{}").get("run", {})
        orthanc_version = orthanc.rest("/system").get("Version")
    finally:  # the processes we started go first, whatever failed
        for proc in started:
            stop(proc, 10)
        if node is not None:
            stop(node.proc, 20)
        if orthanc is not None:
            stop(orthanc.proc, 10)
        if watch is not None and watch.is_alive():
            watch.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    load_end = sysinfo.load_average()

    # --- figures ---------------------------------------------------------------------------------------
    def lat(uid: str, t_end: float) -> float | None:
        return sr_at[uid] - t_end - q if uid in sr_at else None

    cold_lat = lat(cold["uid"], cold.pop("_end"))
    cold_t = timeline.get(cold.pop("uid"), {})
    cold.update(latency_after_quiet_s=None if cold_lat is None else round(cold_lat, 4),
                score_sr_s=None if not cold_t.get("result_created") else round(cold_t["result_created"]
                                                                                 - cold_t["enqueued"], 4))
    n_inst = args.studies * args.images_per_study
    steady = []
    for sr in steady_runs:
        calls, interval = sr["calls"], sr["interval"]
        lats = [lat(uid, r["end"]) for uid, r in calls]
        lats_node = [sr_at[u] - timeline[u]["last_received"] - q for u, _ in calls if u in sr_at and u in timeline]
        walls = [r["wall_s"] for _, r in calls]
        steady.append({
            "interval_s": interval,
            "sending": "one storescu call per study, " + (
                f"one starting every {interval:g} s" if interval else
                "back to back (the next starts when the previous returns)"),
            "studies": args.studies, "images_per_study": args.images_per_study, "instances": n_inst,
            "storescu_wall_s_total": round(sum(walls), 3), "storescu_wall_s_per_study": summary(walls),
            "ingest_instances_per_s": round(n_inst / sum(walls), 2),
            "send_span_s": round(calls[-1][1]["end"] - calls[0][1]["start"], 3),
            "offered_studies_per_s": round((len(calls) - 1) / (calls[-1][1]["start"] - calls[0][1]["start"]), 2)
            if len(calls) > 1 else None,
            "srs_seen": sum(1 for u, _ in calls if u in sr_at), "all_srs_seen": sr["done"],
            "latency_after_quiet_s": summary([x for x in lats if x is not None]),
            "latency_after_quiet_from_node_arrival_s": summary(lats_node),
            "breakdown": breakdown(timeline, sr_at, [u for u, _ in calls], q),
            "triage_call": inference_delta(sr["m0"], sr["m1"]),
            "latencies_s": [None if x is None else round(x, 4) for x in lats],
        })
        steady[-1]["own_cost_per_study"] = own_cost(timeline, sr_at, [u for u, _ in calls], q,
                                                    steady[-1]["triage_call"]["mean_s"])
    burst = None
    if burst_calls is not None:
        rb, accepted, burst_done = burst_calls
        st = rb["statuses"]
        counts = {f"0x{k:04X}": st.count(k) for k in sorted(set(st))}
        acc_lat = [sr_at[u] - timeline[u]["last_received"] - q for u in accepted if u in sr_at and u in timeline]
        seen = [sr_at[u] for u in accepted if u in sr_at]
        last_arrival = max((timeline[u]["last_received"] for u in accepted if u in timeline), default=None)
        refused = m2.get('edgeinfer_instances_total{outcome="out_of_resources"}', 0) - \
            m1.get('edgeinfer_instances_total{outcome="out_of_resources"}', 0)
        burst = {
            "sending": f"one storescu call (-nh) with {args.burst} single-image studies",
            "instances": args.burst, "answered": len(st), "statuses": counts,
            "accepted": st.count(0), "refused_a700": sum(1 for s in st if 0xA700 <= s <= 0xA7FF),
            "refused_a700_node_metric": int(refused), "storescu_returncode": rb["returncode"],
            "storescu_wall_s": round(rb["wall_s"], 3),
            "ingest_instances_per_s": round(len(st) / rb["wall_s"], 2) if rb["wall_s"] else None,
            "ingest_accepted_per_s": round(st.count(0) / rb["wall_s"], 2) if rb["wall_s"] else None,
            "srs_seen": len(seen), "all_srs_seen": burst_done,
            "latency_after_quiet_s": summary(acc_lat),
            "drain_s_after_storescu": round(max(seen) - rb["end"], 3) if seen else None,
            "sr_rate_per_s": round((len(seen) - 1) / (max(seen) - min(seen)), 2) if len(seen) > 1 and
            max(seen) > min(seen) else None,
            "last_accepted_arrival_to_storescu_end_s": round(rb["end"] - last_arrival, 3) if last_arrival else None,
            "breakdown": breakdown(timeline, sr_at, accepted, q),
            "triage_call": inference_delta(m1, m2),
            "latencies_s": [round(x, 4) for x in acc_lat],
        }
    comparison = compare_figures(compare_raw, data, timeline, args) if compare_raw else None
    if comparison:
        for key, d in comparison["receivers"].items():
            if d["acknowledged"] != d["instances"] or d["stored_instances"] != d["acknowledged"]:
                notes.append(f"ingest comparison: {d['receiver']} acknowledged {d['acknowledged']} of "
                             f"{d['instances']} instances and stored {d['stored_instances']}")
    goals = targets(comparison, steady, burst)
    if watch.errors:
        notes.append(f"{len(watch.errors)} Orthanc /changes polls failed (first: {watch.errors[0]})")
    if load_end and load_end[0] > 0.5 * cores + 1.5:
        notes.append(f"load average at end {load_end}: the node, Orthanc and storescu were the load")

    machine["load_average_at_start"] = load_start
    machine["load_average_at_end"] = load_end
    dcmtk = subprocess.run([find_binary("storescu"), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"storescu v(\S+)", dcmtk)
    return {
        "edgeinfer_node_bench": FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/node_bench.py", *sys.argv[1:]]),
        "machine": machine,
        "versions": {"edgeinfer": version_of("edgeinfer"), "python": platform.python_version(),
                     "onnxruntime": version_of("onnxruntime"), "pydicom": version_of("pydicom"),
                     "pynetdicom": version_of("pynetdicom"), "highdicom": version_of("highdicom"),
                     "numpy": version_of("numpy"), "orthanc": orthanc_version, "dcmtk": m.group(1) if m else None},
        "settings": {"studies": args.studies, "images_per_study": args.images_per_study, "burst": args.burst,
                     "compare": args.compare,
                     "quiet_seconds": q, "max_size": args.max_size, "seed": args.seed,
                     "steady_intervals_s": args.intervals, "pacs_tcp_nodelay": not args.pacs_nagle,
                     "threads": args.threads if args.threads is not None else "node default",
                     "serve_args": args.serve_arg,
                     "backend": "onnxruntime", "precision": "fp32", "poll_s": args.poll,
                     "node_command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(node.cmd)),
                     "storescu": "storescu -v -xr [-nh] (TCP_NODELAY=1), explicit files", "data": data["info"]},
        "node": {"start_to_ready_s": round(node.start_s, 2), "run": run_record},
        "method": {
            "sr_seen": f"Orthanc /changes polled every {args.poll * 1000:g} ms; each NewInstance timed at the "
                       "midpoint of the poll that found it and the one before",
            "steady_latency": "SR seen - the study's storescu call returned (its last instance's Success) - quiet",
            "burst_latency": "SR seen - the node's receive time of the instance (state database, same clock) - quiet",
            "breakdown": "node state database: quiet_overrun = enqueued - last_received - quiet (the worker checks "
                         "quiet timers every 0.2 s and between studies); queue_score_sr = result recorded - "
                         "enqueued (waiting for the worker, read + decode + preprocess + inference, SR build, "
                         "one transaction); send_to_pacs = SR seen in Orthanc - result recorded (outbox, "
                         "association, C-STORE, Orthanc storing it, poll resolution)",
            "triage_call": "edgeinfer_inference_seconds from /metrics over the phase: one TriageEngine.run per "
                           "study (read, decode, preprocess, inference, postprocessing)",
            "own_cost_per_study": "per study: SR seen in Orthanc - its last instance received (state database) - "
                                  "quiet - the triage call (the phase's edgeinfer_inference_seconds mean): quiet "
                                  "overrun + the score step beyond the triage call (SR build, state transaction) + "
                                  "send to PACS; receiving the instances is the ingest comparison's part. The "
                                  "target uses the paced steady pass (no queue wait in it)",
            "ingest_comparison": "one storescu call per instance to each receiver in turn; instances answered Success "
                                 "/ summed storescu wall time; the node's acknowledged instances are checked against "
                                 "its state database and spool (recorded, file on disk with the recorded size, or "
                                 "purged by retention after delivery)",
        },
        "cold": cold, "ingest_comparison": comparison, "steady": steady, "burst": burst, "targets": goals,
        "notes": notes,
    }


# --- report -----------------------------------------------------------------------------------------------
def _s(x, nd=2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _trio(s: dict, keys=("p50", "p95", "max"), nd=2) -> str:
    return " / ".join(_s(s.get(k), nd) for k in keys) if s.get("n") else "-"


def _steady_name(d: dict) -> str:
    how = f"one every {d['interval_s']:g} s" if d["interval_s"] else "back to back"
    return f"steady, {how} ({d['studies']} x {d['images_per_study']})"


def render_markdown(rep: dict) -> str:
    m, v, st, cpu = rep["machine"], rep["versions"], rep["settings"], rep["machine"]["cpu"]
    s, b, c = rep["steady"], rep["burst"], rep["cold"]
    lines = [
        "# edgeinfer serve: node benchmark",
        "",
        f"*{rep['created']}, `{rep['command']}`*",
        "",
        f"- **machine**: {cpu.get('model')} ({cpu.get('vendor_id')}, family {cpu.get('cpu_family')} model "
        f"{cpu.get('cpu_model_number')}, {cpu.get('arch')}), {cpu.get('usable_cpus')} usable CPUs, "
        f"{m.get('memory_gb')} GB; load average (1, 5, 15 min) start {m.get('load_average_at_start')}, "
        f"end {m.get('load_average_at_end')}",
        f"- **versions**: edgeinfer {v['edgeinfer']}, python {v['python']}, onnxruntime {v['onnxruntime']}, "
        f"pydicom {v['pydicom']}, pynetdicom {v['pynetdicom']}, highdicom {v['highdicom']}, Orthanc {v['orthanc']}, "
        f"DCMTK {v['dcmtk']}",
        f"- **node**: `{st['node_command']}` (spool and ports: temporary); ready {rep['node']['start_to_ready_s']} s "
        "after start",
        f"- **images**: phantoms at max_size {st['max_size']} ({st['data']['pool_images']} generated, cloned under "
        f"fresh UIDs, ~{(st['data']['steady_bytes_per_instance_mean'] or 0) / 1024:.0f} KiB an instance); burst "
        f"source {st['data']['burst_source']['modality']} {st['data']['burst_source']['rows']}x"
        f"{st['data']['burst_source']['columns']}, {(st['data']['burst_source']['bytes'] or 0) / 1024:.0f} KiB",
        f"- **sender**: storescu -xr, TCP_NODELAY=1; steady: one storescu call per study (paced as said in each "
        f"row); burst: {b['sending'] if b else '-'}",
        f"- **PACS**: Orthanc {v['orthanc']}, " + ("started with TCP_NODELAY=1 (its own DCMTK Nagle stall, ~45 ms "
                                                  "per C-STORE, is not counted against the node)"
                                                  if st.get("pacs_tcp_nodelay") else "default TCP settings"),
        f"- **latency** = SR seen in Orthanc (polled every {st['poll_s'] * 1000:g} ms) - last instance's Success "
        f"(steady: storescu returned; burst: the node's receive time) - quiet period ({st['quiet_seconds']:g} s)",
        "",
        *render_targets(rep),
        "",
        *([*render_comparison(rep), ""] if rep.get("ingest_comparison") else []),
        "## Phases",
        "",
        "| mode | instances | ingest (instances/s) | 0xA700 | SR latency after quiet p50 / p95 / max (s) |",
        "|---|--:|--:|--:|--:|",
        f"| cold (first study after start) | {st['images_per_study']} | - | 0 | {_s(c['latency_after_quiet_s'])} |",
    ]
    for d in s:
        lines.append(f"| {_steady_name(d)} | {d['instances']} | {_s(d['ingest_instances_per_s'], 1)} "
                     f"| 0 | {_trio(d['latency_after_quiet_s'])} |")
    if b:
        lines.append(f"| burst ({b['instances']} x 1) | {b['answered']} answered, {b['accepted']} accepted | "
                     f"{_s(b['ingest_instances_per_s'], 1)} ({_s(b['ingest_accepted_per_s'], 1)} accepted) | "
                     f"{b['refused_a700']} | {_trio(b['latency_after_quiet_s'])} |")
    lines += [
        "",
        "Where the time goes (p50 / p95 / max, s; node timestamps):",
        "",
        "| mode | quiet overrun (beyond Q) | queue + score + SR build | send to PACS | triage call mean (s) |",
        "|---|--:|--:|--:|--:|",
    ]
    for name, d in [(_steady_name(d), d) for d in s] + [("burst", b)]:
        if d:
            bd = d["breakdown"]
            lines.append(f"| {name} | {_trio(bd['quiet_overrun_s'])} | {_trio(bd['queue_score_sr_s'])} | "
                         f"{_trio(bd['send_to_pacs_s'])} | {_s(d['triage_call']['mean_s'], 3)} |")
    oc = [(_steady_name(d), d["own_cost_per_study"]) for d in s if d.get("own_cost_per_study")]
    if oc:
        lines += [
            "",
            "The node's own cost per study (everything but the triage call; p50 / p95 / max, s):",
            "",
            "| mode | own cost | of which quiet overrun | score step beyond the triage call | send to PACS | "
            "triage call mean | of which model (p50) |",
            "|---|--:|--:|--:|--:|--:|--:|",
        ]
        for name, o in oc:
            lines.append(f"| {name} | {_trio(o['own_cost_s'], nd=3)} | {_trio(o['quiet_overrun_s'], nd=3)} | "
                         f"{_trio(o['score_step_beyond_triage_call_s'], nd=3)} | {_trio(o['send_to_pacs_s'], nd=3)} | "
                         f"{_s(o['triage_call_mean_s'], 3)} | {_s(o['model_inference_s'].get('p50'), 4)} |")
    if b:
        lines += ["", f"Burst: storescu took {_s(b['storescu_wall_s'], 1)} s; the last accepted SR arrived "
                      f"{_s(b['drain_s_after_storescu'], 1)} s after it returned ({_s(b['sr_rate_per_s'], 1)} SRs/s "
                      f"while draining); statuses {b['statuses']}."]
    if rep["notes"]:
        lines += ["", *[f"> **note**: {n}" for n in rep["notes"]]]
    return "\n".join(lines) + "\n"


def _met(flag) -> str:
    return "not measured" if flag is None else ("**met**" if flag else "**not met**")


def render_targets(rep: dict) -> list[str]:
    t = rep["targets"]
    i, o, b = t["ingest_vs_bare_scp"], t["own_cost_vs_inference"], t["burst"]
    lines = ["## Targets", ""]
    if i["met"] is None:
        lines.append(f"- ingest at least 80 % of the bare pynetdicom SCP's: {_met(None)} ({i['why']})")
    else:
        lines.append(f"- ingest at least 80 % of the bare pynetdicom SCP's, every acknowledged instance durable: "
                     f"{_met(i['met'])}: the node {_s(i['node_instances_per_s'], 1)} instances/s, the bare SCP "
                     f"{_s(i['bare_instances_per_s'], 1)} "
                     f"({_s(None if i['ratio'] is None else 100 * i['ratio'], 0)} %); "
                     f"{i['acknowledged']} of {i['instances']} acknowledged, {i['acknowledged_and_durable']} of them "
                     "recorded in the state database with their file in the spool")
    if o["met"] is None:
        lines.append(f"- the node's own cost per study at most the inference time: {_met(None)}")
    else:
        lines.append(f"- the node's own cost per study (everything except inference) at most the inference time: "
                     f"{_met(o['met'])}: {_s(o['own_cost_s_p50'], 3)} s p50 (p50s of its parts: quiet overrun "
                     f"{_s(o['quiet_overrun_s_p50'], 3)} + score step beyond the triage call "
                     f"{_s(o['score_step_beyond_triage_call_s_p50'], 3)} + send to PACS "
                     f"{_s(o['send_to_pacs_s_p50'], 3)}) against a triage call of {_s(o['inference_s'], 3)} s "
                     f"(model alone {_s(o['model_inference_s_p50'], 4)} s p50); {o['pass']}"
                     + ("" if o["queue_free"] else ", which queues (no paced pass was run)"))
    if b["met"] is None:
        lines.append(f"- burst: no 0xA700, last SR within 60 s: {_met(None)} ({b['why']})")
    else:
        lines.append(f"- burst: no 0xA700 and the last SR in Orthanc within 60 s of the burst's end: {_met(b['met'])}: "
                     f"{b['refused_a700']} of {b['instances']} got 0xA700 ({b['refused_a700_node_metric']} by the "
                     f"node's /metrics); the last SR {_s(b['last_sr_after_burst_end_s'], 1)} s after storescu returned"
                     + ("" if b["all_srs_seen"] else f" ({b['srs_seen']} of {b['accepted']} SRs seen before the bench "
                                                      "gave up)"))
    return lines


def render_comparison(rep: dict) -> list[str]:
    c = rep.get("ingest_comparison")
    if not c:
        return []
    lines = ["## Ingest comparison", "",
             f"{c['instances']} instances ({c['studies']} studies of up to {c['images_per_study']}, "
             f"~{(c['bytes_per_instance_mean'] or 0) / 1024:.0f} KiB each), the same files to each receiver in turn: "
             f"{c['sending'].split(', the same files')[0]}; ingest = {c['ingest']}.", "",
             "| receiver | durable before Success | ingest (instances/s) | storescu call p50 / p95 / max (ms) "
             "| acknowledged | stored | vs bare pynetdicom SCP |",
             "|---|---|--:|--:|--:|--:|--:|"]
    for d in c["receivers"].values():
        walls = d["storescu_wall_s_per_instance"]
        ms = " / ".join(_s(None if walls.get(k) is None else 1e3 * walls[k], 1) for k in ("p50", "p95", "max")) \
            if walls.get("n") else "-"
        lines.append(f"| {d['receiver']} | {'yes' if d['durable_before_success'] else '**no** (no fsync)'} "
                     f"| {_s(d['ingest_instances_per_s'], 1)} | {ms} | {d['acknowledged']} | {d['stored_instances']} "
                     f"| {_s(None if d['vs_bare_pynetdicom'] is None else 100 * d['vs_bare_pynetdicom'], 0)} % |")
    n = c["receivers"]["node"]
    lines += ["", *[f"- {d['receiver']}: {d['durability']}" for d in c["receivers"].values()],
              f"- the node scored {n['studies_scored_during_its_pass']} of the {n['studies']} studies during its own "
              "pass (they go quiet while later ones arrive, as in service)"]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=40, help="steady mode: studies (default 40)")
    p.add_argument("--images-per-study", type=int, default=2, help="steady mode: images per study (default 2)")
    p.add_argument("--burst", type=int, default=1000, help="burst mode: single-image studies in one storescu call "
                                                           "(default 1000; 0 skips it)")
    p.add_argument("--compare", type=int, default=200,
                   help="ingest comparison: instances sent, one storescu call each, to storescp, a second Orthanc, "
                        "a bare pynetdicom SCP and the node (default 200; 0 skips it)")
    p.add_argument("--quiet-seconds", type=float, default=2.0,
                   help="the node's --quiet-seconds (default 2; subtracted from every latency)")
    p.add_argument("--intervals", default="0.5,0",
                   help="steady mode: one pass of --studies studies per value, a study starting every S seconds "
                        "(0: back to back); default 0.5,0")
    p.add_argument("--max-size", type=int, default=512, help="phantom max_size (default 512)")
    p.add_argument("--pacs-nagle", action="store_true",
                   help="run Orthanc with its default TCP settings (Nagle on: ~45 ms per C-STORE it answers); "
                        "default: TCP_NODELAY=1 in its environment, so the PACS's own stall is not counted")
    p.add_argument("--pool", type=int, default=8, help="distinct phantom images to clone from (default 8)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="the node's --threads (default: the node's)")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for edgeinfer serve, e.g. --serve-arg=--max-pdu=65536 (repeatable)")
    p.add_argument("--poll", type=float, default=0.05, help="Orthanc /changes poll interval, s (default 0.05)")
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--report", default=None, help="write the Markdown summary here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (data, spool, logs)")
    args = p.parse_args(argv)
    try:
        args.intervals = [float(x) for x in args.intervals.split(",") if x.strip()]
    except ValueError:
        p.error("--intervals: a comma list of seconds, e.g. 0.5,0")
    if not args.intervals or any(x < 0 for x in args.intervals):
        p.error("--intervals: at least one value, none negative")
    rep = run(args)
    md = render_markdown(rep)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rep, indent=1, allow_nan=False) + "\n")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(md)
    print(md)
    ok = all(d["all_srs_seen"] for d in rep["steady"]) and (rep["burst"] is None or rep["burst"]["all_srs_seen"]) \
        and (rep["ingest_comparison"] is None or rep["ingest_comparison"]["receivers"]["node"]["all_srs_seen"])
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
