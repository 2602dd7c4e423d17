"""Every reach into pynetdicom's internals, in one place.

The receiver needs a few things pynetdicom 3.0 offers no public way to do: the raw socket of an
association (a read timeout, TCP_NODELAY, a PDU size check before the body is read, shutting down a
connection that never sent its association request), the thread that accepts connections (for
``/readyz``), the A-ASSOCIATE-RQ's AE titles before negotiation, and rejecting an association from
``EVT_REQUESTED``. Each is a function here; ``tests/edgeinfer/node/test_pynetdicom_adapter.py`` fails
loudly when a pynetdicom release moves one of them, and ``pyproject.toml`` pins the tested range.
"""
from __future__ import annotations

import socket
import threading
from typing import Callable

#: the pynetdicom releases this adapter was written against (pyproject.toml pins the same range)
SUPPORTED = ">=3.0,<3.1"


def raw_socket(assoc) -> socket.socket | None:
    """The association's TCP (or TLS) socket."""
    return getattr(getattr(assoc.dul, "socket", None), "socket", None)


def limit_pdu_reads(assoc, cap: int) -> None:
    """Refuse, before reading its body, any PDU that announces more than ``cap`` bytes: pynetdicom reads a
    PDU's body whole, whatever length its header claims (``AssociationSocket.recv``)."""
    sock = assoc.dul.socket
    real_recv = sock.recv

    def recv(n: int):
        if n > cap:
            raise OSError(f"the peer announced a {n}-byte PDU, over the {cap}-byte limit")
        return real_recv(n)
    sock.recv = recv


def shut_down(assoc) -> None:
    """End a connection from another thread: its reader sees the end of the stream (the plain socket's
    shutdown, so a TLS object's state is never touched; the owning thread closes it)."""
    try:
        socket.socket.shutdown(raw_socket(assoc), socket.SHUT_RDWR)
    except (OSError, AttributeError, TypeError):
        pass


def requested_titles(assoc) -> tuple[str, str]:
    """(calling, called) AE titles: from the negotiated association, or from its A-ASSOCIATE-RQ before."""
    rq = getattr(assoc.requestor, "primitive", None)
    called = str(getattr(rq, "called_ae_title", "") or getattr(assoc.acceptor, "ae_title", "") or "")
    calling = str(assoc.requestor.ae_title or getattr(rq, "calling_ae_title", "") or "")
    return calling.strip(), called.strip()


def peer_address(assoc) -> str:
    return f"{assoc.requestor.address}:{assoc.requestor.port}"


def reject_local_limit(assoc) -> None:
    """A-ASSOCIATE-RJ, transient, "local limit exceeded", from ``EVT_REQUESTED``; then the DUL stops, as
    pynetdicom does after its own rejections."""
    assoc.acse.send_reject(0x02, 0x03, 0x02)
    assoc.kill()


def accept_thread(start: Callable[[], object]) -> tuple[object, threading.Thread | None]:
    """Run ``start`` (``ae.start_server(..., block=False)``) and find the thread it started to accept
    connections: pynetdicom keeps no handle on it."""
    before = set(threading.enumerate())
    server = start()
    return server, next((t for t in threading.enumerate() if t not in before
                         and t.name.startswith("AcceptorServer")), None)
