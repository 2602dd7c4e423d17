"""The outbox: results go to every destination by C-STORE, retried with capped backoff.

A failure that may pass (PACS down or unreachable, an association it rejects, no answer, 0xA7xx "out
of resources") is retried, the delay doubling from ``send_backoff`` up to ``send_backoff_max``, until
the item is ``send_horizon`` old (default 7 days), also across restarts: the state holds every item
with its age. Only a PACS that refuses the result itself (any other failure status: the data set, its
SOP class or the calling AE is not acceptable) dead-letters it at once, and so does the horizon.
Dead letters are kept, counted in ``/metrics`` from the state (so the count survives a restart) and
re-driven by an operator: ``edgeinfer outbox list`` and ``edgeinfer outbox retry``.
"""
from __future__ import annotations

import logging
import time

from pydicom.uid import ComprehensiveSRStorage, EnhancedSRStorage, SecondaryCaptureImageStorage, SegmentationStorage

from .config import Destination, NodeConfig
from .loop import Loop
from .receiver import nodelay
from .state import State

log = logging.getLogger("edgeinfer.node")
audit = logging.getLogger("edgeinfer.audit")
MAX_BACKOFF_S = 600.0
#: C-STORE statuses that mean "not now" (out of resources): retried like a PACS that cannot be reached
_TRANSIENT = range(0xA700, 0xA800)
_SUCCESS = (0x0000, 0xB000, 0xB007, 0xB006)  # success, or success with warnings


class Refused(str):
    """A send failure that will not pass by waiting: the PACS refused the result itself."""


def backoff(attempt: int, first: float, cap: float = MAX_BACKOFF_S) -> float:
    """Delay before retry ``attempt`` (1-based): ``first`` doubling, capped at ``cap``."""
    return min(first * 2 ** max(0, attempt - 1), cap)


def store_failure(status: int, dest) -> str | None:
    """What a C-STORE response status means for the outbox (pure): None (delivered), a transient
    failure (a str, retried) or a :class:`Refused` one (dead-lettered)."""
    if status in _SUCCESS:
        return None
    why = f"{dest} answered C-STORE status 0x{int(status):04X}"
    return why + " (out of resources: retried)" if status in _TRANSIENT else Refused(why + " (refused)")


def client_tls(config: NodeConfig):
    """TLS for sending results (1.2 or newer, the PACS's certificate and host name checked against
    ``send_tls_ca``; our certificate for mutual TLS), or None for plain DICOM."""
    import ssl

    if config.send_tls_ca is None:
        return None
    ctx = ssl.create_default_context(cafile=str(config.send_tls_ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.send_tls_cert is not None:
        ctx.load_cert_chain(str(config.send_tls_cert), str(config.send_tls_key))
    return ctx


#: what a result is proposed in (the SR is written in the first)
SCU_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")   # Explicit, Implicit VR Little Endian
#: the SOP classes result writers make, proposed on every association to PACS: Comprehensive SR, Enhanced SR,
#: Secondary Capture, Segmentation
RESULT_SOP_CLASSES = (ComprehensiveSRStorage, EnhancedSRStorage, SecondaryCaptureImageStorage, SegmentationStorage)


class Associations:
    """The associations a drain sends over: one per destination (a PACS may serve one association at a time,
    as DCMTK's storescp does), opened at its first item and kept for the items after it (a burst of results
    costs one handshake, not one each), all released by :meth:`close` at the end of the drain, so nothing
    stays open to PACS while the outbox is idle. It proposes every SOP class the result writers make
    (:data:`RESULT_SOP_CLASSES`) and the item's own; an item whose class the PACS did not accept there gets
    a fresh association for it. A failed send drops its association; the next item opens a fresh one."""

    def __init__(self, timeout: float = 30.0):
        self.timeout = timeout
        self._open: dict[str, object] = {}

    def send(self, path: str, dest: Destination, calling_aet: str, tls=None) -> str | None:
        """C-STORE one Part 10 file to ``dest`` (over TLS with ``tls``, an SSL context). None on success,
        else why it failed (no data values)."""
        import pydicom

        ds = pydicom.dcmread(path)
        key, sop_class = str(dest), str(ds.SOPClassUID)
        assoc = self._open.get(key)
        if assoc is not None and not (assoc.is_established and any(
                c.abstract_syntax == sop_class for c in assoc.accepted_contexts)):
            self._drop(key)
            assoc = None
        if assoc is None:
            assoc = self._associate(sop_class, dest, calling_aet, tls)
            if assoc is None:
                return (f"association with {dest} was not established (rejected, aborted, no answer"
                        + (", or the TLS handshake failed)" if tls is not None else ")"))
            self._open[key] = assoc
        try:
            status = assoc.send_c_store(ds)
        except Exception:  # noqa: BLE001 - the connection went away under the send: a fresh one next time
            status = None
        if not status or "Status" not in status:
            self._drop(key, abort=True)
            return f"{dest} sent no C-STORE response (connection lost or DIMSE timeout)"
        return store_failure(int(status.Status), dest)

    def _associate(self, sop_class, dest: Destination, calling_aet: str, tls):
        from pynetdicom import AE

        ae = AE(ae_title=calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for uid in dict.fromkeys((sop_class, *RESULT_SOP_CLASSES)):
            ae.add_requested_context(uid, list(SCU_TRANSFER_SYNTAXES))
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet,
                             tls_args=(tls, dest.host) if tls is not None else None)
        if not assoc.is_established:
            return None
        nodelay(assoc.dul.socket.socket)
        return assoc

    def _drop(self, key, *, abort: bool = False) -> None:
        assoc = self._open.pop(key, None)
        if assoc is not None and assoc.is_established:
            try:
                assoc.abort() if abort else assoc.release()
            except Exception:  # noqa: BLE001 - it is gone either way
                pass

    def close(self) -> None:
        """Release every association (the end of a drain)."""
        for key in list(self._open):
            self._drop(key)


class Outbox(Loop):
    name = "edgeinfer-outbox"
    what = "outbox"

    def __init__(self, config: NodeConfig, state: State, metrics=None, send=None):
        """``send(path, dest, calling_aet, tls=None)``: how one item goes (None: over :class:`Associations`
        kept for the drain)."""
        super().__init__()
        self.config, self.state, self.metrics = config, state, metrics
        self.associations = Associations() if send is None else None
        self.send = send or self.associations.send
        self.tls = client_tls(config)

    def step(self) -> bool:
        self.drain()
        return False  # what is due was sent; retries wait for their time

    def drain(self) -> int:
        """Send every item that is due now; returns how many were attempted."""
        try:
            return self._drain()
        finally:
            if self.associations is not None:
                self.associations.close()

    def _drain(self) -> int:
        due = self.state.due_sends()
        c = self.config
        for item_id, study_uid, version, destination, path, attempts, created, sop_uid in due:
            if self.stopping:
                break
            dest = Destination.parse(destination)
            try:
                error = self.send(path, dest, c.ae_title, tls=self.tls)
            except Exception as exc:  # noqa: BLE001
                error = f"sending failed ({exc.__class__.__name__})"
            if error is None:
                self.state.mark_sent(item_id)
                audit.info("sent study %s result v%d (%s) to %s", study_uid, version, sop_uid, dest)
                self._inc("outbox_sent_total", destination)
                continue
            attempt = attempts + 1
            now = time.time()
            if isinstance(error, Refused) or now - created >= c.send_horizon:
                why = "refused" if isinstance(error, Refused) else f"not delivered within {c.send_horizon:.0f} s"
                self.state.mark_failed(item_id, error, retry_at=None)
                log.error("dead-lettered study %s result v%d for %s after %d attempt(s) (%s): %s; "
                          "edgeinfer outbox retry sends it again", study_uid, version, dest, attempt, why, error)
                self._inc("outbox_dead_letters_total", destination)
            else:
                delay = backoff(attempt, c.send_backoff, c.send_backoff_max)
                self.state.mark_failed(item_id, error, retry_at=now + delay)
                log.warning("sending study %s result v%d to %s failed (%s); retry %d in %.0f s",
                            study_uid, version, dest, error, attempt, delay)
                self._inc("outbox_retries_total", destination)
        if self.metrics is not None:
            self.metrics.set_outbox(self.state.outbox_counts())
        return len(due)

    def _inc(self, name: str, destination: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, name).labels(destination=destination).inc()
