"""The outbox: results go to every destination by C-STORE, with retries and backoff; after the last
attempt an item is dead-lettered (kept, visible in /metrics and the state, never silently dropped)."""
from __future__ import annotations

import logging
import time

from .config import Destination, NodeConfig
from .loop import Loop
from .receiver import nodelay
from .state import State

log = logging.getLogger("edgeinfer.node")
audit = logging.getLogger("edgeinfer.audit")
MAX_BACKOFF_S = 600.0


def backoff(attempt: int, first: float) -> float:
    """Delay before retry ``attempt`` (1-based): ``first`` doubling, capped at 10 minutes."""
    return min(first * 2 ** max(0, attempt - 1), MAX_BACKOFF_S)


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


def send_file(path: str, dest: Destination, calling_aet: str, timeout: float = 30.0, tls=None) -> str | None:
    """C-STORE one Part 10 file to ``dest`` (over TLS with ``tls``, an SSL context). None on success,
    else why it failed (no data values)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    ds = pydicom.dcmread(path)
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet,
                         tls_args=(tls, dest.host) if tls is not None else None)
    if not assoc.is_established:
        return (f"association with {dest} was not established (rejected, aborted, no answer"
                + (", or the TLS handshake failed)" if tls is not None else ")"))
    nodelay(assoc.dul.socket.socket)
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    if not status or "Status" not in status:
        return f"{dest} sent no C-STORE response (connection lost or DIMSE timeout)"
    if status.Status not in (0x0000, 0xB000, 0xB007, 0xB006):  # success, or success with warnings
        return f"{dest} answered C-STORE status 0x{int(status.Status):04X}"
    return None


class Outbox(Loop):
    name = "edgeinfer-outbox"

    def __init__(self, config: NodeConfig, state: State, metrics=None, send=send_file):
        super().__init__()
        self.config, self.state, self.metrics, self.send = config, state, metrics, send
        self.tls = client_tls(config)

    def step(self) -> bool:
        self.drain()
        return False  # what is due was sent; retries wait for their time

    def drain(self) -> int:
        """Send every item that is due now; returns how many were attempted."""
        due = self.state.due_sends()
        for item_id, study_uid, version, destination, path, attempts in due:
            if self.stopping:
                break
            dest = Destination.parse(destination)
            try:
                error = self.send(path, dest, self.config.ae_title, tls=self.tls)
            except Exception as exc:  # noqa: BLE001
                error = f"sending failed ({exc.__class__.__name__})"
            if error is None:
                self.state.mark_sent(item_id)
                audit.info("sent study %s result v%d to %s", study_uid, version, dest)
                self._inc("outbox_sent_total", destination)
                continue
            attempt = attempts + 1
            if attempt >= self.config.send_retries:
                self.state.mark_failed(item_id, error, retry_at=None)
                log.error("dead-lettered study %s result v%d for %s after %d attempts: %s",
                          study_uid, version, dest, attempt, error)
                self._inc("outbox_dead_letters_total", destination)
            else:
                delay = backoff(attempt, self.config.send_backoff)
                self.state.mark_failed(item_id, error, retry_at=time.time() + delay)
                log.warning("sending study %s result v%d to %s failed (%s); retry %d in %.0f s",
                            study_uid, version, dest, error, attempt, delay)
                self._inc("outbox_retries_total", destination)
        if self.metrics is not None:
            self.metrics.outbox_pending.set(self.state.outbox_counts().get("pending", 0))
        return len(due)

    def _inc(self, name: str, destination: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, name).labels(destination=destination).inc()
