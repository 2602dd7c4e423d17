"""The DICOM side: a pynetdicom storage SCP that stores each instance durably before it answers Success.

Status codes the sender can see (C-STORE; :class:`edgeinfer.node.status.Status`):
  0x0000  stored durably (spool file fsync'd and renamed, state committed)
  0xA700  out of resources: the spool's free space is below its threshold, or the disk filled up during
          the write (try again later; nothing was kept). A backlog of studies waiting for inference never
          refuses: the spool is durable, and a refusal makes a technologist resend by hand; /metrics and
          /readyz report the backlog instead.
  0xC210  cannot understand: the data set cannot be parsed, or its Study/SOP Instance UID is malformed
  0xC211  the node failed while storing (an unexpected error; nothing was kept, the sender may retry)
  0xC212  conflict: an instance with this SOP Instance UID and other content was stored already; the
          first one is kept as it was and this one is not (send it with a new SOP Instance UID)

The same bytes sent again are a duplicate: Success, and nothing changes. Nothing acknowledged is ever
overwritten: a file's name carries its content's digest, and the state decides, in one transaction,
whether an instance is new, a duplicate or a conflict (``State.add_instance``).

Association slots: ``max_associations`` counts established associations only. A connection that has
not sent its whole A-ASSOCIATE-RQ holds no slot: it has ``acse_timeout`` seconds from accept to send it
(one deadline, not one per byte), and when ``HANDSHAKE_SLOTS`` connections wait in that state the oldest
is closed, so peers that drip bytes cannot keep a modality out (a real request arrives in milliseconds).
"""
from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import warnings
from typing import Callable

from ..vr import valid_uid
from . import pynetdicom_adapter as pn
from .config import NodeConfig
from .spool import Spool, content_digest
from .state import CONFLICT as CONFLICT_FOUND
from .state import DUPLICATE, NEW, State
from .status import Status, store_error_status

log = logging.getLogger("edgeinfer.node")
audit = logging.getLogger("edgeinfer.audit")

_URGENT_PRIORITIES = {"STAT", "HIGH"}
#: connections allowed to wait for their A-ASSOCIATE-RQ at once; beyond, the oldest one is closed
HANDSHAKE_SLOTS = 32
#: connections the kernel queues for the node to accept
LISTEN_BACKLOG = 128


class _HandshakeInAssociation(ssl.SSLContext):
    """pynetdicom wraps each accepted socket in the one thread that accepts connections; a handshake
    there lets a single silent peer block every TLS client. This context defers the handshake to the
    first read, in the association's own thread, bounded by a timeout."""

    handshake_timeout = 30.0

    def wrap_socket(self, sock, *args, **kwargs):
        sock.settimeout(self.handshake_timeout)
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def tls_context(config: NodeConfig) -> ssl.SSLContext | None:
    """Server TLS from the config: TLS 1.2 or newer; with a CA, clients must present a certificate it signed."""
    if config.tls_cert is None:
        return None
    ctx = _HandshakeInAssociation(ssl.PROTOCOL_TLS_SERVER)
    ctx.handshake_timeout = config.acse_timeout
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    if config.tls_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(config.tls_ca))
    return ctx


def nodelay(sock) -> None:
    """Turn off Nagle's algorithm: with the peer's delayed ACK it costs ~40 ms per DIMSE exchange."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


class _NoTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


_no_traceback = _NoTraceback()


def _header(data: bytes):
    """The header up to group 0040 (what routing needs, and what the study's report copies), read without
    touching the pixel data and without inflating a deflated data set past a few megabytes, and its bytes
    as received: ``(dataset, prefix or None)`` (``dicomio.parse.routing_header``)."""
    from ..dicomio.parse import routing_header
    from ..dicomio.quiet import _logs_quiet  # warnings: ignored for the whole process (Receiver.start)

    with _logs_quiet():
        return routing_header(data, with_prefix=True)


def instance_fields(ds, *, sop: str | None = None, urgent_request: bool = False) -> dict | None:
    """What the state records of an instance, from its header (``sop``: the C-STORE's Affected SOP
    Instance UID, else the header's); None when its SOP Instance or Study Instance UID is malformed."""
    sop = (sop if sop is not None else str(ds.get("SOPInstanceUID", "") or "")).strip(" \x00")
    study = str(ds.get("StudyInstanceUID", "") or "").strip(" \x00")
    if not (valid_uid(sop) and valid_uid(study)):
        return None
    series = str(ds.get("SeriesInstanceUID", "") or "").strip(" \x00")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    urgent = urgent_request or str(ds.get("RequestedProcedurePriority", "") or "").strip().upper() in _URGENT_PRIORITIES
    return {"sop_uid": sop, "study_uid": study, "series_uid": series if valid_uid(series) else "",
            "modality": modality[:16], "urgent": urgent}


#: uncompressed transfer syntaxes, in the order the node prefers them when a context offers several
_NATIVE_ORDER = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")


def scp_contexts() -> list[tuple[str, list[str]]]:
    """What the node accepts as an SCP: (abstract syntax, its transfer syntaxes, in order of preference).
    Every storage SOP class pynetdicom knows in every transfer syntax it knows, and Verification in the
    uncompressed ones; the conformance statement (``docs/conformance.md``) is checked against this.

    pynetdicom accepts, for a presentation context, the first of these the requestor also offers. A
    compressed syntax comes first: a sender that offers its file's own compression and the uncompressed
    ones (dcmsend, storescu ``-x?``) sends the file as it is, so the node keeps what the modality made, a
    resend gives the same bytes, and no sender has to decompress (which some cannot, for lossy files).
    Then Explicit VR Little Endian (it keeps the VRs), Implicit, Deflated, Big Endian."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES, DEFAULT_TRANSFER_SYNTAXES, AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification

    every = [str(ts) for ts in ALL_TRANSFER_SYNTAXES if str(ts) not in _NATIVE_ORDER]
    every += [ts for ts in _NATIVE_ORDER if ts in {str(t) for t in ALL_TRANSFER_SYNTAXES}]
    return [(str(cx.abstract_syntax), every) for cx in AllStoragePresentationContexts] + \
        [(str(Verification), [str(ts) for ts in DEFAULT_TRANSFER_SYNTAXES])]


class Receiver:
    """Starts and stops the SCP; every accepted instance is in the spool and the state before Success."""

    def __init__(self, config: NodeConfig, spool: Spool, state: State, *, metrics=None,
                 busy: Callable[[str], str | None] = lambda study_uid: None):
        self.config, self.spool, self.state, self.metrics = config, spool, state, metrics
        self.busy = busy            # -> why the node cannot take more now (0xA700), or None
        self._server = None
        self._thread: threading.Thread | None = None
        self.started = threading.Event()
        self._slots = threading.Lock()
        self._handshaking: dict = {}     # association -> when its connection was accepted (monotonic)
        self._established: set = set()   # associations admitted to a slot
        self._stopping = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        from pynetdicom import AE, evt

        pn_log = logging.getLogger("pynetdicom")
        pn_log.setLevel(logging.WARNING)      # its debug output dumps data sets
        pn_log.addFilter(_no_traceback)       # a peer's bad PDU is an event, not a crash: no traceback
        # pydicom warns with the offending value when it decodes a peer's command set or a header: never
        # shown. The receiver's threads read headers outside dicomio's (one-thread-at-a-time) boundary,
        # so that a long decode in the worker never holds up an acknowledgement.
        warnings.filterwarnings("ignore", module="pydicom")
        c = self.config
        ae = AE(ae_title=c.ae_title)
        for abstract_syntax, transfer_syntaxes in scp_contexts():
            ae.add_supported_context(abstract_syntax, transfer_syntaxes)
        ae.require_called_aet = True
        ae.require_calling_aet = list(c.allow_calling)
        # pynetdicom counts every connection, handshakes included: its limit leaves room for them, and
        # the slots of established associations are counted here (_on_requested)
        ae.maximum_associations = c.max_associations + 2 * HANDSHAKE_SLOTS
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = c.acse_timeout, c.dimse_timeout, c.network_timeout
        ae.maximum_pdu_size = c.max_pdu
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: Status.SUCCESS),
                    (evt.EVT_ACCEPTED, self._on_accepted), (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_CONN_OPEN, self._on_connection), (evt.EVT_REQUESTED, self._on_requested),
                    (evt.EVT_CONN_CLOSE, self._on_closed)]
        self._server, self._thread = pn.accept_thread(lambda: ae.start_server(
            (c.host, c.port), block=False, evt_handlers=handlers, ssl_context=tls_context(c)))
        # socketserver listens with a backlog of 5: connections beyond it (modalities starting at once, a flood)
        # are reset by the kernel before the node sees them. Listening again sets a deeper queue.
        self._server.socket.listen(LISTEN_BACKLOG)
        threading.Thread(target=self._close_overdue_handshakes, name="handshake-deadline", daemon=True).start()
        self.started.set()
        log.info("receiving as %s on %s:%d%s", c.ae_title, c.host, self.port,
                 " (TLS" + (", mutual" if c.tls_ca else "") + ")" if c.tls_cert else "")

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.config.port

    @property
    def alive(self) -> bool:
        """The thread accepting associations is running."""
        return self._server is not None and self._thread is not None and self._thread.is_alive()

    def not_ready(self) -> str | None:
        return None if self.alive else "the DICOM receiver is not running"

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # -- events -----------------------------------------------------------------------------------
    def _count(self, family: str, outcome: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, family).labels(outcome=outcome).inc()

    def _on_connection(self, event) -> None:
        """Bound what one peer can hold: a read timeout on its socket (a peer that stalls inside a PDU
        cannot keep an association slot), a deadline for its association request, and a PDU size limit
        checked before the body is read."""
        with self._slots:
            self._handshaking[event.assoc] = time.monotonic()
            oldest = (min(self._handshaking, key=self._handshaking.get)
                      if len(self._handshaking) > HANDSHAKE_SLOTS else None)
        if oldest is not None:
            self._close_handshake(oldest, f"{HANDSHAKE_SLOTS} connections were waiting for their association "
                                          "request; the oldest is closed")
        raw = pn.raw_socket(event.assoc)
        raw.settimeout(self.config.network_timeout)
        nodelay(raw)  # small DIMSE responses go out at once, not after the peer's delayed ACK
        if self.config.max_pdu:  # P-DATA-TF within our maximum; association PDUs are small
            pn.limit_pdu_reads(event.assoc, max(self.config.max_pdu, 65536))

    def _close_handshake(self, assoc, why: str) -> None:
        """Close a connection that has not sent its whole A-ASSOCIATE-RQ: its thread, blocked reading
        the request, sees the end of the stream and ends (the socket is shut down, not closed, so the
        thread that owns it closes it; pynetdicom then closes it without an event, so it is audited here)."""
        with self._slots:
            if self._handshaking.pop(assoc, None) is None:
                return  # it sent its request meanwhile, or is gone
        self._audit_incomplete(assoc, why)
        pn.shut_down(assoc)

    def _audit_incomplete(self, assoc, why: str) -> None:
        self._count("associations_total", "incomplete")
        audit.info("association request not completed: connection from %s closed (%s)", pn.peer_address(assoc), why)

    def _close_overdue_handshakes(self) -> None:
        limit = self.config.acse_timeout
        while not self._stopping.wait(min(0.5, limit / 4)):
            now = time.monotonic()
            with self._slots:
                overdue = [a for a, t in self._handshaking.items() if now - t > limit]
            for assoc in overdue:
                self._close_handshake(assoc, self._deadline_passed)

    @property
    def _deadline_passed(self) -> str:
        return f"no complete A-ASSOCIATE-RQ within {self.config.acse_timeout:g} s (--acse-timeout)"

    def _on_requested(self, event) -> None:
        """The whole A-ASSOCIATE-RQ is in: a slot if one is free, else A-ASSOCIATE-RJ (transient, local limit
        exceeded), before pynetdicom's own checks (AE titles, contexts)."""
        with self._slots:
            self._handshaking.pop(event.assoc, None)
            self._established = {a for a in self._established if a.is_alive()}  # in case a close went unseen
            full = len(self._established) >= self.config.max_associations
            if not full:
                self._established.add(event.assoc)
        if full:
            self._audit_rejected(event, f"the association limit ({self.config.max_associations}) was reached")
            pn.reject_local_limit(event.assoc)

    def _on_closed(self, event) -> None:
        """A connection ended. One that never sent its whole A-ASSOCIATE-RQ and that the node did not close
        itself (pynetdicom's ARTIM timer did, or the peer) is counted and audited here."""
        with self._slots:
            accepted_at = self._handshaking.pop(event.assoc, None)
            self._established.discard(event.assoc)
        if accepted_at is not None:
            self._audit_incomplete(event.assoc, self._deadline_passed if time.monotonic() - accepted_at
                                   >= self.config.acse_timeout - 0.1 else "the peer closed it")

    @staticmethod
    def _peer(event) -> tuple[str, str, str]:
        """(calling AE title, called AE title, peer address): what an admin matches against the modality's
        configuration (AE titles are configuration, not patient data)."""
        return (*pn.requested_titles(event.assoc), pn.peer_address(event.assoc))

    def _on_accepted(self, event) -> None:
        self._count("associations_total", "accepted")
        calling, called, peer = self._peer(event)
        audit.info("association accepted: %s -> %s from %s", calling, called, peer)

    def _on_rejected(self, event) -> None:
        """pynetdicom's own rejections (AE titles; its connection limit, which handshakes count toward)."""
        calling, called, _ = self._peer(event)
        c = self.config
        if c.allow_calling and calling not in c.allow_calling:
            why = "the calling AE title is not in allow_calling"
        elif called and called != c.ae_title:
            why = f"the called AE title is not this node's ({c.ae_title})"
        else:
            why = f"the connection limit ({c.max_associations} associations + {2 * HANDSHAKE_SLOTS} handshakes) was reached"
        self._audit_rejected(event, why)

    def _audit_rejected(self, event, why: str) -> None:
        self._count("associations_total", "rejected")
        calling, called, peer = self._peer(event)
        audit.info("association rejected: %s -> %s from %s: %s", calling, called, peer, why)

    def _on_store(self, event) -> int:
        try:
            return self._store(event)
        except Exception as exc:  # noqa: BLE001 - never Success on an error; the class only, no values
            status = store_error_status(exc)
            if status == Status.OUT_OF_RESOURCES:   # the disk filled up during the write: nothing was kept
                log.error("storing an instance found no room on the spool's disk (%s); answered %s",
                          exc.__class__.__name__, status.hex)
                self._count("instances_total", "out_of_resources")
            else:
                log.error("storing an instance failed (%s); answered %s", exc.__class__.__name__, status.hex)
                self._count("instances_total", "failed")
            return status

    def _store(self, event) -> int:
        data = event.encoded_dataset(include_meta=True)   # the bytes as received: no decode, no re-encode
        try:
            ds, prefix = _header(data)
        except Exception:  # noqa: BLE001 - a data set pydicom cannot parse
            self._count("instances_total", "rejected")
            return Status.CANNOT_UNDERSTAND
        fields = instance_fields(ds, sop=str(event.request.AffectedSOPInstanceUID or ""),
                                 urgent_request=event.request.Priority == 1)
        if fields is None:
            missing = [k for k, v in (("SOP Instance UID", event.request.AffectedSOPInstanceUID),
                                      ("Study Instance UID", ds.get("StudyInstanceUID", ""))) if not str(v or "").strip()]
            log.warning("answered %s: %s", Status.CANNOT_UNDERSTAND.hex, f"the {' and the '.join(missing)} is missing" if missing else
                        "the SOP Instance or Study Instance UID is malformed (not shown)")
            self._count("instances_total", "rejected")
            return Status.CANNOT_UNDERSTAND
        sop, study = fields["sop_uid"], fields["study_uid"]
        digest = content_digest(data)
        known = self.state.known_digest(sop)
        if known is not None:  # the same SOP Instance UID again: nothing is written, whatever it holds
            return self._known(sop, study, same=known == digest)
        why = self.busy(study)
        if why:
            log.warning("answered %s (out of resources): %s", Status.OUT_OF_RESOURCES.hex, why)
            self._count("instances_total", "out_of_resources")
            return Status.OUT_OF_RESOURCES
        path = self.spool.store_instance(sop, digest, data)
        try:
            outcome = self.state.add_instance(**fields, path=str(path), sha256=digest, nbytes=len(data), header=prefix,
                                              calling_aet=str(event.assoc.requestor.ae_title).strip()[:16])
        except BaseException:  # not recorded, so not acknowledged: the file must not be found at the next start
            path.unlink(missing_ok=True)
            raise
        if outcome != NEW:  # another association stored this SOP Instance UID meanwhile
            if outcome == CONFLICT_FOUND:
                path.unlink(missing_ok=True)  # ours, never acknowledged (the first one has another name)
            return self._known(sop, study, same=outcome == DUPLICATE)
        self._count("instances_total", "stored")  # the audit line is one per study, when it is complete (worker)
        return Status.SUCCESS

    def _known(self, sop: str, study: str, *, same: bool) -> int:
        if same:
            self._count("instances_total", "duplicate")
            return Status.SUCCESS
        log.warning("answered %s (conflict): instance %s (study %s) was stored before with other content; "
                    "the stored instance is kept, this one is not", Status.CONFLICT.hex, sop, study)
        self._count("instances_total", "conflict")
        return Status.CONFLICT

