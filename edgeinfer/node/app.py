"""``edgeinfer serve`` as one application: it assembles the parts and runs them.

receiver -> spool -> state -> worker (the model host's runner, the result writers) -> outbox, plus
retention and the HTTP side; :class:`Node` builds each from exactly what it uses, starts and stops them
in order, and is the view the HTTP side reads (health, readiness as a loop over named components,
details, the worklist window, metrics).

Each arrow is a file or a table row, so a ``kill -9`` anywhere loses nothing that was acknowledged:
on start the node removes temporary files, rebuilds an unreadable state database and registers spool
files the state does not know (``recovery.py``: the spool is the source of truth), re-queues studies
that were being scored, and resumes the outbox.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

from .. import __version__
from .._io import write_json
from ..bundle import load_bundle
from ..errors import UsageError
from ..worklist import priority_order, worklist_document
from .config import NodeConfig
from .builder import ResultBuilder
from .model import ModelHost
from .outbox import Outbox
from .receiver import Receiver
from .recovery import open_state, reconcile
from .retention import Retention
from .spool import Spool
from .worker import Worker

#: the worklist's default window: results of the last day, the most urgent 500 studies of them
WORKLIST_WINDOW_H = 24
WORKLIST_LIMIT = 500

log = logging.getLogger("edgeinfer.node")
audit = logging.getLogger("edgeinfer.audit")


class Node:
    """The running service; also the view the HTTP side reads (health, readiness, worklist, metrics)."""

    def __init__(self, config: NodeConfig, *, metrics=None):
        from .metrics import NodeMetrics

        self.config = config
        self.started_at = time.time()
        self.bundle = load_bundle(config.bundle, trust=config.trust)
        self.spool = Spool(config.spool, group=config.spool_group)
        removed = self.spool.remove_temporary()
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted write", removed)
        self.state, notes = open_state(self.spool)
        #: what start-up found and repaired (a rebuilt database, re-registered files): the log and /readyz say it
        self.startup_notes = notes + reconcile(self.spool, self.state)
        resumed = self.state.resume()
        if resumed:
            log.warning("%d study(ies) were being scored when the node stopped; each is scored again, up to "
                        "max_crashes (%d) such stops, then it goes to a human read", resumed, config.max_crashes)
        self.metrics = metrics or NodeMetrics(states=("receiving", "queued", "scoring", "scored"))
        self.model = ModelHost(config, self.bundle)
        self.receiver = Receiver(config, self.spool, self.state, metrics=self.metrics, busy=self.busy)
        self.outbox = Outbox(config, self.state, self.metrics)
        #: result objects are built beside the worker (nothing to build when nothing is sent)
        self.builder = ResultBuilder(config.result_processes if config.send_to else 0,
                                     timeout=config.inference_timeout)
        self.worker = Worker(config, self.state, self.spool, self.model, self.metrics, builder=self.builder,
                             wake_outbox=self.outbox.wake, on_result=self.result_recorded,
                             refresh_gauges=self.refresh_gauges)
        self.retention = Retention(config, self.state, self.spool, self.metrics)
        left = self.retention.remove_leftovers()
        if left:
            log.info("deleted %d spool file(s) whose deletion a stop interrupted", left)
        self.http = None
        #: counts recorded results: a worklist page rendered at one value is current until it changes
        self.worklist_version = 0
        self._stopped = threading.Event()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> "Node":
        self.model.runner()  # load the model before saying we receive: /readyz tells the truth from the start
        try:
            self.model.start_intake()
            self._start_builder()
        except UsageError:
            self.stop()
            raise
        self.worker.start()
        self.outbox.start()
        self.retention.start()
        c = self.config
        try:
            self.receiver.start()
        except OSError as exc:
            self.stop()
            raise UsageError(f"cannot listen for DICOM on {c.host}:{c.port} ({exc.strerror or exc}); "
                             "another program may use that port: choose another --port") from None
        if c.http_port is not None:
            from .http import HttpServer, make_app

            try:
                guard = None
                if c.http_auth is not None:
                    from .auth import Guard, load_users

                    guard = Guard(load_users(c.http_auth))
                self.http = HttpServer(make_app(self, guard), host=c.http_host, port=c.http_port,
                                       tls_cert=c.http_tls_cert, tls_key=c.http_tls_key).start()
            except OSError as exc:
                self.stop()
                raise UsageError(f"cannot serve HTTP on {c.http_host}:{c.http_port} ({exc.strerror or exc}); "
                                 "choose another --http-port, or --no-http") from None
        audit.info("node started: %s on port %d, bundle %s %s (digest %s)", self.config.ae_title, self.receiver.port,
                   self.bundle.name, self.bundle.version, self.bundle.digest[:16])
        return self

    def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.receiver.stop()
        self.worker.stop()
        job = self.worker.current
        if job is not None:  # a clean stop is not a crash: the study is scored after the restart, uncounted
            self.state.requeue(job)
        self.builder.stop()
        self.outbox.stop()
        self.retention.stop()
        if self.http is not None:
            self.http.stop()
        self.model.stop()
        self.state.close()
        self._stopped.set()

    def _start_builder(self) -> None:
        try:
            self.builder.start()
        except Exception as exc:  # noqa: BLE001 - a start-up problem of this machine, said as such
            raise UsageError(f"could not start the result builder process ({exc.__class__.__name__}: {exc}); "
                             "run with --result-processes 0") from None

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        def _stop(signum, frame):
            self._stopped.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        self.start()
        try:
            self._stopped.wait()
        finally:
            self.stop()
            if any(t.is_alive() for t in self.model.abandoned):
                # a backend thread stuck in native code would abort the interpreter's shutdown (a crash,
                # maybe a core dump holding images): everything is stopped and durable, so leave now
                logging.shutdown()
                os._exit(0)

    # -- decisions ----------------------------------------------------------------------------------
    def busy(self, study_uid: str | None = None) -> str | None:
        """Why the node cannot take an instance now (the sender gets 0xA700), or None.

        Only disk space refuses: the spool is durable, so a backlog of studies waiting for inference
        costs nothing to accept, while a refusal makes a technologist resend by hand (many modalities
        do not retry 0xA700). The backlog is reported instead (``details``, ``refresh_gauges``)."""
        free = self.spool.free_mb()
        if free < self.config.min_free_mb:
            self.retention.wake()  # delivered studies go now, whatever their age
            return f"the spool has {free:.0f} MB free, below the {self.config.min_free_mb} MB threshold"
        return None

    def result_recorded(self, job, record: dict) -> None:
        self.worklist_version += 1   # the HTTP side's cached worklist pages are out of date
        study = record.get("study")
        if study is not None:
            audit.info("study %s scored v%d: %s", job.study_uid, job.version, study["priority"])
            self.metrics.studies_total.labels(priority=study["priority"]).inc()
            self.metrics.arrival_to_result_seconds.observe(max(0.0, time.time() - job.last_received))
        else:
            audit.info("study %s v%d: not for this model (listed on the worklist as not applicable, no SR)",
                       job.study_uid, job.version)
        if self.config.worklist is not None:
            try:
                write_json(self.config.worklist, self.worklist())
            except OSError as exc:
                log.error("could not write the worklist %s (%s); /worklist still has it",
                          self.config.worklist, exc.strerror or exc)

    def refresh_gauges(self, *, spool: bool = True) -> None:
        """The gauges counted in the state (at each scrape; the worker refreshes the cheap ones as it goes)."""
        counts = self.state.counts_by_state()
        self.metrics.queue_depth.set(counts.get("queued", 0))
        self.metrics.backlog_oldest_seconds.set(self.state.backlog()[1])
        if spool:
            self.metrics.studies_without_sr.set(self.state.count_without_sr())
            self.metrics.spool_bytes.set(self.state.spool_bytes())
            self.metrics.spool_free_bytes.set(self.spool.free_mb() * 2**20)
        self.metrics.set_study_states(counts)
        self.metrics.set_outbox(self.state.outbox_counts())

    # -- NodeView (the HTTP side) -------------------------------------------------------------------
    def health(self) -> dict:
        return {"status": "alive", "version": __version__, "uptime_s": round(time.time() - self.started_at, 1)}

    def readiness(self) -> list[str]:
        """Why the node is not ready: each component says it for itself (``not_ready``), then disk space."""
        reasons = [why for c in (self.model, self.receiver, self.worker, self.outbox, self.retention)
                   if (why := c.not_ready())]
        why = self.busy()
        if why:
            reasons.append(why)
        return reasons

    def details(self) -> dict:
        """What an operator should know although the node may be ready: what start-up repaired
        (``notes``), the studies waiting for inference (``backlog``) and the results no SR could be made for
        (``without_sr``), each only when there is any."""
        waiting, oldest = self.state.backlog()
        no_sr = self.state.count_without_sr() if self.config.send_to else 0
        return ({"notes": list(self.startup_notes)} if self.startup_notes else {}) | (
            {"backlog": {"studies": waiting, "oldest_waiting_s": round(oldest, 1)}} if waiting else {}) | (
            {"without_sr": {"studies": no_sr, "why": "no SR could be made (e.g. images naming two patients): "
                                                     "each is on the worklist as a human read"}} if no_sr else {})

    def identity_hidden(self) -> str | None:
        """Why the console must not show patient names and accession numbers, or None when it may: only over
        HTTPS and to a logged-in user (``http_tls_cert``/``http_tls_key`` and ``http_auth``)."""
        tls, auth = self.config.http_tls_cert is not None, self.config.http_auth is not None
        if tls and auth:
            return None
        missing = [what for what, given in (("no TLS (--http-tls-cert, --http-tls-key)", tls),
                                            ("no login (--http-auth FILE)", auth)) if not given]
        return "this HTTP side has " + " and ".join(missing)

    def identity(self, study_uids) -> dict[str, dict]:
        """Patient name and accession number of each study, from the header kept of its first received
        instance: only for the console, only when :meth:`identity_hidden` is None."""
        if self.identity_hidden() is not None:
            return {}
        from ..dicomio.parse import routing_header
        from ..dicomio.quiet import _library_quiet

        out = {}
        for uid, data in self.state.first_headers(list(study_uids)).items():
            try:
                with _library_quiet():
                    ds = routing_header(data)
                    name = ds.get("PatientName")
                    out[uid] = {"patient_name": name.family_comma_given() if name else "",
                                "accession": str(ds.get("AccessionNumber", "") or "")}
            except Exception:  # noqa: BLE001 - an unreadable header shows no identity, never an error page
                continue
        return out

    def heatmap_png(self, study_uid: str, sop_uid: str, label: str, max_side: int) -> bytes | None:
        """The heatmap of ``label`` on image ``sop_uid`` of the study's current result, rendered on the image
        (windowed as the model saw it, at most ``max_side`` pixels, with its banner) as PNG; None when there
        is no such heatmap or its image has left the spool."""
        import cv2

        from ..dicomout.sc import banner_lines
        from ..errors import InputError
        from ..heatmap import render_on_source
        from ..preprocess import PreprocessSpec

        study = (self.state.current_result(study_uid) or {}).get("study") or {}
        for img in study.get("images") or []:
            if img.get("sop_instance_uid") != sop_uid:
                continue
            for heat in img.get("heatmaps") or []:
                if heat.get("label") != label:
                    continue
                try:
                    rgb = render_on_source(img["path"], img["source_shape"], heat,
                                           PreprocessSpec.from_manifest(self.bundle.manifest["preprocessing"]),
                                           max_side=max_side,   # a thumbnail is too small for the text
                                           lines=banner_lines(heat, self.bundle.summary()) if max_side >= 256 else [])
                except (InputError, OSError):
                    return None
                ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                return png.tobytes() if ok else None
        return None

    def worklist(self, *, since: float | None = None, limit: int | None = None, offset: int = 0) -> dict:
        """One window of the worklist: the results made since ``since`` (default: the last
        ``WORKLIST_WINDOW_H`` hours), ``limit`` studies (default ``WORKLIST_LIMIT``) from ``offset`` in worklist
        order, and every not-applicable study of the window. Only that page is read from the state, so the
        cost does not grow with the node's history; ``window`` says what the page is part of."""
        import datetime as dt

        now = time.time()
        since = now - WORKLIST_WINDOW_H * 3600 if since is None else since
        limit = WORKLIST_LIMIT if limit is None else limit
        records, counts = self.state.worklist_window(priority_order(self.bundle), since=since, limit=limit,
                                                     offset=offset)
        in_window = sum(n for p, n in counts.items() if p is not None)
        iso = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")  # noqa: E731
        window = {"since": iso(since), "as_of": iso(now), "limit": limit, "offset": offset,
                  "studies_in_window": in_window, "by_priority_in_window": {p: n for p, n in counts.items() if p},
                  "truncated": offset + limit < in_window}
        return worklist_document(records, bundle=self.bundle, run=self.model.run_record(), window=window)
