"""From a complete study to its result: intake, the runner (under a watchdog), the SR, the outbox."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path

from ..errors import EdgeInferError
from ..triage import engine_for
from ..worklist import INDETERMINATE
from .builder import ResultBuilder
from .loop import Loop
from .state import Job

log = logging.getLogger("edgeinfer.node")
audit = logging.getLogger("edgeinfer.audit")


class Worker(Loop):
    """Scores queued studies one at a time. A hung inference is stopped after ``inference_timeout``
    seconds: the study is INDETERMINATE (a human read), a fresh runner takes over, the next study goes on.

    A scored study's result objects are built by the :class:`ResultBuilder` (a process of its own by
    default) while the next study is scored; its result is recorded (one transaction with its outbox items)
    once they are built, in scoring order, at most ``PIPELINE`` studies behind. Nothing waits when there
    is no next study: the result is recorded as soon as it is built."""

    name = "edgeinfer-worker"
    what = "inference worker"
    interval = 0.2   # how often quiet timers are looked at
    #: scored studies whose results may still be building while the next one is scored
    PIPELINE = 1
    #: while the inference server (``triton_url``) cannot be reached: seconds before the next try, doubling to the max
    REMOTE_RETRY_S = 1.0
    REMOTE_RETRY_MAX_S = 15.0

    def __init__(self, config, state, spool, model, metrics=None, *, builder: ResultBuilder | None = None,
                 wake_outbox=lambda: None, on_result=lambda job, record: None, refresh_gauges=lambda **kw: None):
        """Exactly what it uses: the settings, the state, the spool (results go there), the model host, the
        metrics, the result builder (None: in this thread), and three hooks: wake the outbox after a result,
        tell the node a result was recorded (the audit line, the worklist file), refresh the gauges."""
        super().__init__()
        self.config, self.state, self.spool, self.model, self.metrics = config, state, spool, model, metrics
        self.builder = builder or ResultBuilder(processes=0, timeout=config.inference_timeout)
        self.wake_outbox, self.on_result, self.refresh_gauges = wake_outbox, on_result, refresh_gauges
        self.current: Job | None = None
        #: (job, record, future of its result objects or None), in scoring order
        self.building: deque[tuple[Job, dict, Future | None]] = deque()
        #: why the inference server cannot be reached (None: it can, or inference runs in this process)
        self.remote_down: str | None = None
        self._remote_retry_at = 0.0
        self._remote_backoff = self.REMOTE_RETRY_S

    def on_stop(self) -> None:
        """The loop ends: record every result still building (a clean stop loses none)."""
        self._commit_all()

    def _commit_all(self) -> None:
        self._commit_ready(behind=0)

    def _commit_ready(self, behind: int | None = None) -> None:
        """Record, in scoring order, the results at the front that are built; and, waiting for them, any that
        leave more than ``behind`` studies building (0: all; None: wait for none)."""
        while self.building and ((behind is not None and len(self.building) > behind)
                                 or self.building[0][2] is None or self.building[0][2].done()):
            self._commit(*self.building.popleft())

    def step(self) -> bool:
        self._commit_ready()
        for uid in self.state.complete_quiet_studies(self.config.quiet_for):
            n, senders = self.state.received_from(uid)
            audit.info("study %s received: %d instance(s) from %s (quiet period passed)", uid, n,
                       ", ".join(senders) or "no calling AE title")
        # while the inference server is down, only studies that waited inference_timeout are taken (to a human read)
        waiting = self.remote_down is not None and time.monotonic() < self._remote_retry_at
        job = self.state.next_job(queued_before=time.time() - self.config.inference_timeout if waiting else None)
        if job is not None:
            self.current = job
            try:
                if job.crashes >= self.config.max_crashes:
                    self.give_up(job)
                else:
                    self.run(job)
            except Exception as exc:  # noqa: BLE001 - the study must not stay 'scoring' until a restart
                log.error("study %s: the node failed while scoring it (%s); it goes to a human read",
                          job.study_uid, exc.__class__.__name__)
                self._record(job, self._indeterminate(job, f"the node failed while scoring it "
                                                           f"({exc.__class__.__name__})"))
            finally:
                self.current = None
        else:
            self._commit_all()   # nothing to score meanwhile: record what is building as soon as it is built
        self.refresh_gauges(spool=False)
        return job is not None

    def next_wait(self) -> float:
        """Until the first quiet period ends (a study is scored when it is complete, not up to a poll later),
        at most ``interval`` (a study that starts receiving meanwhile is seen at the next pass)."""
        deadline = self.state.next_quiet_deadline(self.config.quiet_for)
        if deadline is None:
            return self.interval
        return min(self.interval, max(0.005, deadline - time.time() + 0.001))

    # -- one study --------------------------------------------------------------------------------
    def give_up(self, job: Job) -> None:
        """The node died ``job.crashes`` times while scoring this version: something in it may be what
        crashes the node (a decoder or the runtime on one of its files). It goes to a human read
        without another try, so that it cannot stop the node again and hold up every study after it."""
        log.error("study %s: the node stopped %d times while scoring it; it is not scored again and goes to "
                  "a human read (look for a crash in the service log, e.g. with journalctl)", job.study_uid,
                  job.crashes)
        self._record(job, self._indeterminate(
            job, f"the node stopped {job.crashes} times while scoring this study, so it was not scored again",
            code="node-stopped"))

    def not_ready(self) -> str | None:
        why = super().not_ready()
        if why is None and self.remote_down is not None:
            n, oldest = self.state.backlog()
            why = (f"the inference server cannot be reached: {self.remote_down}; {n} study(ies) wait for it, the "
                   f"oldest {oldest:.0f} s (each goes to a human read after {self.config.inference_timeout:g} s queued)")
        return why

    def run(self, job: Job) -> None:
        why = self.model.unreachable()
        if why is not None:
            self._wait_for_server(job, why)
            return
        files = [Path(p) for p in job.paths]
        t0 = time.perf_counter()
        box: dict = {}

        def infer():
            try:
                runner = self.model.runner()
                failures = runner.transport_failures
                # a remote server serves urgent studies first (Triton's priority levels); local runners ignore it
                runner.request_priority = "STAT" if job.urgent else "ROUTINE"
                box["wl"] = engine_for(self.model.bundle, runner, batch_size=self.config.batch_size,
                                       pool=self.model.intake_pool).run(files)
                if runner.transport_failures > failures:   # some of its images met the server down
                    box["lost"] = runner.down or "the server stopped answering during the study"
            except BaseException as exc:  # noqa: BLE001 - reported below, never lost
                box["error"] = exc

        thread = threading.Thread(target=infer, name=f"edgeinfer-infer-{job.study_uid[-12:]}", daemon=True)
        thread.start()
        thread.join(self.config.inference_timeout)
        elapsed = time.perf_counter() - t0
        if thread.is_alive():
            log.error("study %s: inference did not finish within %.0f s; stopped by the watchdog, the study "
                      "needs a human read", job.study_uid, self.config.inference_timeout)
            stuck = self.model.current_runner()
            if stuck is not None:
                stuck.cancel()          # ONNX Runtime stops the run; every later call of that runner fails at once
            thread.join(10.0)
            if thread.is_alive():       # a backend that cannot be interrupted: leave it, never wait on it again
                log.error("study %s: the inference could not be interrupted; a fresh runner takes over", job.study_uid)
                self.model.abandoned.append(thread)
            self.model.replace_runner()
            record = self._indeterminate(job, f"inference did not finish within {self.config.inference_timeout:g} s "
                                              "(watchdog)")
        elif "error" in box:
            exc = box["error"]
            log.error("study %s: scoring failed (%s); the study needs a human read", job.study_uid,
                      exc.__class__.__name__)
            record = self._indeterminate(job, f"scoring failed ({exc.__class__.__name__})")
        elif box.get("lost"):   # the server went away during the study: its images were not scored; wait for it
            self._wait_for_server(job, box["lost"])
            return
        else:
            self._server_back()
            wl = box["wl"]
            study = next((s for s in wl.studies if s["study_uid"] == job.study_uid), None)
            others = [s for s in wl.studies if s["study_uid"] != job.study_uid]
            errors = wl.errors + [
                {"path": i["path"], "code": "other-study", "reason": "the file names another study than the one it "
                 "was received for"} for s in others for i in s["images"]]
            record = {"study": study, "skipped": wl.skipped, "errors": errors, "run": wl.run}
            if study is None and errors:
                # every file failed before its study could be read from it: it was received for this study
                codes = sorted({e.get("code", "error") for e in errors})
                record["study"] = self._human_read_study(
                    job, f"no image of this study could be read ({', '.join(codes)})", [e["path"] for e in errors])
            elif study is None:
                record["not_applicable"] = {
                    "study_uid": job.study_uid, "modality": job.modality, "files": len(wl.skipped),
                    "reasons": sorted({s.get("reason", "") for s in wl.skipped}) or ["no image in the study"]}
            if self.metrics is not None:
                self.metrics.inference_seconds.observe(elapsed)
        self._record(job, record)

    def _wait_for_server(self, job: Job, why: str) -> None:
        """The inference server cannot be reached: ``job`` goes back to the queue (durably, its place kept) and is
        tried again after a back-off, or, once it has been queued ``inference_timeout`` seconds, goes to a human
        read (INDETERMINATE, with the reason) like a study whose inference hung."""
        if self.remote_down is None:
            log.error("the inference server cannot be reached: %s; studies stay queued until it answers, for up to "
                      "%g s each", why, self.config.inference_timeout)
        self.remote_down = why
        if self.metrics is not None:
            self.metrics.inference_server_up.set(0)
        waited = time.time() - job.enqueued
        if waited >= self.config.inference_timeout:
            log.error("study %s: the inference server could not be reached for %.0f s; the study goes to a human read",
                      job.study_uid, waited)
            self._record(job, self._indeterminate(
                job, f"the inference server could not be reached for {waited:.0f} s ({why})", code="server-unreachable"))
            return
        self.state.requeue(job)
        if self.metrics is not None:
            self.metrics.inference_deferred_total.inc()
        self._remote_retry_at = time.monotonic() + self._remote_backoff
        self._remote_backoff = min(2 * self._remote_backoff, self.REMOTE_RETRY_MAX_S)

    def _server_back(self) -> None:
        if self.remote_down is not None:
            log.info("the inference server answers again; queued studies are scored")
        self.remote_down = None
        self._remote_backoff = self.REMOTE_RETRY_S
        if self.metrics is not None:
            self.metrics.inference_server_up.set(1)

    def _record(self, job: Job, record: dict) -> None:
        """The result of one study version: its objects go to the builder; recorded when built (:meth:`_commit`)."""
        record.update(version=job.version, bundle=self.model.bundle.summary(), received_last=job.last_received,
                      scored_at=time.time())
        study = record["study"]
        future = None
        if study is not None:
            study["version"], study["received_last"] = job.version, job.last_received
            if self.config.send_to:
                kept = self.state.headers(job.paths)   # as received: the images are not read again
                future = self.builder.submit(self.config.results, study, [(p, kept.get(p)) for p in job.paths],
                                             bundle=record["bundle"], run=record["run"], version=job.version)
        self.building.append((job, record, future))
        self._commit_ready(behind=self.PIPELINE)

    def _commit(self, job: Job, record: dict, future: Future | None) -> None:
        """Its objects into the spool, then one transaction: the result and one outbox item per object and
        destination."""
        study = record["study"]
        sends = []
        if future is not None:
            try:
                objects = self.builder.result(future, job.study_uid)
                paths = [(obj.sop_uid, str(self.spool.store_result(obj.sop_uid, obj.data))) for obj in objects]
                sends = [(str(d), sop_uid, path) for sop_uid, path in paths for d in self.config.send_to]
            except EdgeInferError as exc:  # e.g. sources naming two patients: no SR, and a human read
                log.error("study %s: no result can be sent to PACS (%s); it goes to a human read",
                          job.study_uid, exc)
                study["priority"], study["score"] = INDETERMINATE, None
                study["reason"] = f"no result could be sent to PACS ({exc}) - needs a human read"
                record["no_sr"] = str(exc)   # counted in /metrics and /readyz (State.count_without_sr)
        fresh = self.state.finish_job(job, priority=study and study["priority"],
                                      score=study and study["score"], record=record, sends=sends)
        if fresh:
            self.on_result(job, record)
        self.wake_outbox()

    def _human_read_study(self, job: Job, why: str, failed: list[str]) -> dict:
        """The study record of a version the model did not score: INDETERMINATE, with the reason."""
        return {"study_uid": job.study_uid, "priority": INDETERMINATE, "score": None, "modality": job.modality,
                "images": [], "failed_images": list(failed), "model": self.model.model_record(),
                "reason": f"{why} - needs a human read"}

    def _indeterminate(self, job: Job, why: str, code: str = "watchdog") -> dict:
        study = self._human_read_study(job, why, job.paths)
        return {"study": study, "skipped": [], "errors": [{"path": p, "code": code, "reason": why}
                                                          for p in job.paths], "run": self.model.run_record()}
