#!/usr/bin/env python
"""Benchmark of ``edgeinfer serve`` (the DICOM node) against real peers: a benchmark, not a test.

    .venv/bin/python benchmarks/node_bench.py [--studies N] [--images-per-study K] [--intervals 0.5,0]
        [--burst 1000] [--quiet-seconds Q] [--max-size 512] [--threads T] [--pacs-nagle]
        [--serve-arg=ARG ...] [--poll S] [--json OUT] [--report OUT.md] [--keep]

Starts Orthanc (the PACS, AET ``PACS``) and ``edgeinfer serve --send-to PACS@127.0.0.1:PORT --quiet-seconds Q
--backend onnxruntime --precision fp32`` in subprocesses on free localhost ports, with a temporary spool, and
drives the node with DCMTK's storescu (``-xr``, ``TCP_NODELAY=1``: without it each C-STORE costs ~45 ms of
Nagle + delayed ACK on loopback whatever the node does). Orthanc is DCMTK inside and has the same stall when it
answers a C-STORE, so it gets ``TCP_NODELAY=1`` too (``--pacs-nagle``: leave it on): the PACS's own cost is
then ~5 ms an SR, not ~50.

* **cold**: one study of K images, sent first and waited for; its latency is reported apart (first SR build
  imports highdicom, first inference call).
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

Writes JSON (``--json``) and a Markdown summary (``--report``), and prints the summary. Needs ``Orthanc`` and
``storescu`` (Debian: ``apt-get install orthanc dcmtk``). Measure on an idle machine: the load average at start
and end is recorded, and a note is added when the machine was busy.
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
    """Orthanc with its own storage and fresh ports (config as in tests/peers.py)."""

    def __init__(self, workdir: Path, nodelay: bool = True):
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
                      "DicomScpTimeout": 30, "DicomAssociationCloseDelay": 0, "SyncStorageArea": False,
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
        """Per study (v1): last_received, enqueued, result created (all the node's time.time())."""
        rows = self.query("SELECT s.study_uid, s.last_received, s.enqueued, r.created, s.state FROM studies s "
                          "LEFT JOIN results r ON r.study_uid = s.study_uid AND r.version = 1")
        return {u: {"last_received": lr, "enqueued": enq, "result_created": rc, "state": st}
                for u, lr, enq, rc, st in rows}


# --- the modality ---------------------------------------------------------------------------------------
def storescu(node: Node, files: list[Path], *, no_halt: bool = False, timeout: float = 600) -> dict:
    cmd = [find_binary("storescu"), "-v", "-aec", NODE_AET, "-aet", MODALITY_AET, "-xr"]
    if no_halt:
        cmd.append("-nh")
    cmd += ["127.0.0.1", str(node.port), *map(str, files)]
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


# --- the data -------------------------------------------------------------------------------------------
def make_data(work: Path, args) -> dict:
    import pydicom
    from pydicom.uid import generate_uid

    from edgeinfer import phantom

    pool_dir = work / "pool"
    rows = phantom.generate(pool_dir, args.pool, seed=args.seed, max_size=args.max_size)
    pool = [pool_dir / r["path"] for r in rows]
    datasets = [pydicom.dcmread(p) for p in pool]

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
    sizes = [p.stat().st_size for _, ps in steady[0] for p in ps]
    return {
        "cold": cold, "steady": steady, "burst": burst,
        "info": {
            "generator": f"edgeinfer.phantom.generate({args.pool}, seed={args.seed}, max_size={args.max_size})",
            "pool_images": len(pool),
            "pool": [{"modality": r["modality"], "rows": r["rows"], "columns": r["columns"],
                      "transfer_syntax": r["transfer_syntax"], "photometric": r["photometric"]} for r in rows],
            "steady_bytes_per_instance_mean": round(statistics.fmean(sizes)) if sizes else None,
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


def run(args) -> dict:
    if args.studies < 1 or args.images_per_study < 1 or args.burst < 0 or args.quiet_seconds < 0:
        sys.exit("node_bench: --studies and --images-per-study must be >= 1, --burst and --quiet-seconds >= 0")
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
        r = storescu(node, cold_files)
        expected += 1
        wait_srs(watch, expected, 60 + q, "the cold study's SR")
        cold = {"storescu_s": round(r["wall_s"], 4), "statuses_ok": r["statuses"] == [0] * len(cold_files),
                "_end": r["end"], "uid": cold_uid}

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
                r = storescu(node, files)
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
            rb = storescu(node, files, no_halt=True, timeout=600)
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
        },
        "cold": cold, "steady": steady, "burst": burst, "notes": notes,
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
    if b:
        lines += ["", f"Burst: storescu took {_s(b['storescu_wall_s'], 1)} s; the last accepted SR arrived "
                      f"{_s(b['drain_s_after_storescu'], 1)} s after it returned ({_s(b['sr_rate_per_s'], 1)} SRs/s "
                      f"while draining); statuses {b['statuses']}."]
    if rep["notes"]:
        lines += ["", *[f"> **note**: {n}" for n in rep["notes"]]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=40, help="steady mode: studies (default 40)")
    p.add_argument("--images-per-study", type=int, default=2, help="steady mode: images per study (default 2)")
    p.add_argument("--burst", type=int, default=1000, help="burst mode: single-image studies in one storescu call "
                                                           "(default 1000; 0 skips it)")
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
    ok = all(d["all_srs_seen"] for d in rep["steady"]) and (rep["burst"] is None or rep["burst"]["all_srs_seen"])
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
