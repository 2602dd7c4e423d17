"""Prometheus metrics of one DICOM node, in a registry of its own.

Each :class:`NodeMetrics` owns a private :class:`~prometheus_client.CollectorRegistry`, never the
process-wide default one, so several nodes (and tests) coexist in one process without
"Duplicated timeseries" errors. Every metric name starts with ``edgeinfer_``.

Labels are bounded sets: outcomes and states are fixed words, priorities come from the bundle,
destinations are the configured PACS AE titles. Never put a UID, a patient detail or a free-text
error into a label.

Only this module and :mod:`edgeinfer.node.http` import ``prometheus_client``; nothing imports
them when ``edgeinfer`` itself is imported.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: outcome of one received instance (C-STORE)
INSTANCE_OUTCOMES = ("stored", "duplicate", "conflict", "rejected", "out_of_resources", "failed")
#: outcome of one association request
ASSOCIATION_OUTCOMES = ("accepted", "rejected", "incomplete")

#: from a study's last received instance to its result: seconds to an hour (a backed-up queue)
ARRIVAL_TO_RESULT_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
                             3600.0)
#: one inference call: 1 ms (a small model on a GPU) to 60 s (a large volume on a CPU)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class NodeMetrics:
    """The node's metrics. Update them through the attributes, e.g.

    ``m.instances_total.labels(outcome="stored").inc()``, ``m.queue_depth.set(3)``,
    ``m.inference_seconds.observe(0.012)``.

    Instance and association outcomes start at 0 so that dashboards see every series from the
    first scrape; the other labelled series appear on first use (or through ``priorities`` /
    ``states`` / ``destinations`` given here).
    """

    def __init__(self, *, priorities: Iterable[str] = (), states: Iterable[str] = (),
                 destinations: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry

        self.instances_total = Counter(
            "edgeinfer_instances", "DICOM instances received, by outcome", ["outcome"], registry=r)
        self.associations_total = Counter(
            "edgeinfer_associations", "DICOM association requests, by outcome (incomplete: "
            "the connection never sent a whole A-ASSOCIATE-RQ)", ["outcome"], registry=r)
        self.queue_depth = Gauge(
            "edgeinfer_queue_depth", "Studies waiting for analysis", registry=r)
        self.spool_bytes = Gauge(
            "edgeinfer_spool_bytes", "Bytes of received instances in the spool", registry=r)
        self.spool_free_bytes = Gauge(
            "edgeinfer_spool_free_bytes", "Free space on the spool's file system", registry=r)
        self.spool_purged_total = Counter(
            "edgeinfer_spool_purged_instances", "Instances deleted from the spool by retention (result delivered)",
            registry=r)
        self.studies_without_sr = Gauge(
            "edgeinfer_studies_without_sr", "Current results that could not get an SR for PACS (e.g. images naming "
            "two patients); each is on the worklist as a human read", registry=r)
        self.backlog_oldest_seconds = Gauge(
            "edgeinfer_backlog_oldest_seconds", "How long the oldest study waiting for analysis has waited "
            "(0: none waits)", registry=r)
        self.studies_total = Counter(
            "edgeinfer_studies", "Studies triaged, by priority", ["priority"], registry=r)
        self.studies_in_state = Gauge(
            "edgeinfer_studies_in_state", "Studies currently in each processing state", ["state"], registry=r)
        self.arrival_to_result_seconds = Histogram(
            "edgeinfer_arrival_to_result_seconds", "From a study's last received instance to its result",
            registry=r, buckets=ARRIVAL_TO_RESULT_BUCKETS)
        self.inference_seconds = Histogram(
            "edgeinfer_inference_seconds", "Duration of one inference call",
            registry=r, buckets=INFERENCE_BUCKETS)
        self.inference_server_up = Gauge(
            "edgeinfer_inference_server_up", "1 while the inference server (--triton-url) answers, 0 while it "
            "cannot be reached and studies wait for it (in-process inference: always 1)", registry=r)
        self.inference_server_up.set(1)
        self.inference_deferred_total = Counter(
            "edgeinfer_inference_deferred", "Times a study was put back in the queue because the inference server "
            "could not be reached", registry=r)
        self.outbox_sent_total = Counter(
            "edgeinfer_outbox_sent", "Results delivered, by destination", ["destination"], registry=r)
        self.outbox_retries_total = Counter(
            "edgeinfer_outbox_retries", "Result deliveries retried, by destination", ["destination"], registry=r)
        self.outbox_dead_letters_total = Counter(
            "edgeinfer_outbox_dead_letters", "Results given up on after the last retry, by destination",
            ["destination"], registry=r)
        self.outbox_pending = Gauge(
            "edgeinfer_outbox_pending", "Results waiting to be delivered", registry=r)
        self.outbox_items = Gauge(
            "edgeinfer_outbox_items", "Results in the outbox by state (pending, sent, dead), counted in the state "
            "database: the counts survive a restart", ["state"], registry=r)
        for state in ("pending", "sent", "dead"):
            self.outbox_items.labels(state=state)

        for outcome in INSTANCE_OUTCOMES:
            self.instances_total.labels(outcome=outcome)
        for outcome in ASSOCIATION_OUTCOMES:
            self.associations_total.labels(outcome=outcome)
        for priority in priorities:
            self.studies_total.labels(priority=priority)
        self._states: set[str] = set()
        self.set_study_states({s: 0 for s in states})
        for destination in destinations:
            for counter in (self.outbox_sent_total, self.outbox_retries_total, self.outbox_dead_letters_total):
                counter.labels(destination=destination)

    def set_study_states(self, counts: Mapping[str, int]) -> None:
        """Set ``studies_in_state`` from a fresh count per state (e.g. one SQL ``GROUP BY``).

        A state seen before but missing from ``counts`` drops to 0 rather than keeping a stale value.
        """
        for state in self._states - set(counts):
            self.studies_in_state.labels(state=state).set(0)
        for state, n in counts.items():
            self.studies_in_state.labels(state=state).set(n)
        self._states.update(counts)

    def set_outbox(self, counts: Mapping[str, int]) -> None:
        """The outbox gauges from a fresh count per state (the state database's)."""
        for state in ("pending", "sent", "dead"):
            self.outbox_items.labels(state=state).set(counts.get(state, 0))
        self.outbox_pending.set(counts.get("pending", 0))

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this registry: ``(payload, content type)``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
