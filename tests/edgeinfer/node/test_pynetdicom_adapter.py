"""What the node takes from pynetdicom's internals still works with the installed release: a real SCP and a
real SCU over a socket. When a pynetdicom upgrade moves one of them, this fails first, by name."""
from __future__ import annotations

import socket
import threading
from importlib import metadata

from packaging.specifiers import SpecifierSet
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from edgeinfer.node import pynetdicom_adapter as pn


def test_the_installed_pynetdicom_is_in_the_supported_range():
    assert metadata.version("pynetdicom") in SpecifierSet(pn.SUPPORTED), \
        f"pynetdicom {metadata.version('pynetdicom')} is outside {pn.SUPPORTED}: check pynetdicom_adapter.py first"


def test_every_reach_into_pynetdicom_works_on_a_real_association():
    seen: dict = {}

    def on_open(event):
        raw = pn.raw_socket(event.assoc)
        seen["raw"] = isinstance(raw, socket.socket) and raw.getsockname()[1] == server.server_address[1]
        pn.limit_pdu_reads(event.assoc, 65536)

    def on_requested(event):
        seen["titles"] = pn.requested_titles(event.assoc)
        seen["peer"] = pn.peer_address(event.assoc)
        if seen["titles"][0] == "SECOND":
            pn.reject_local_limit(event.assoc)

    scp = AE(ae_title="ADAPTER")
    scp.add_supported_context(Verification)
    server, thread = pn.accept_thread(lambda: scp.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_CONN_OPEN, on_open), (evt.EVT_REQUESTED, on_requested)]))
    try:
        assert isinstance(thread, threading.Thread) and thread.is_alive(), "the accept thread was not found by name"
        scu = AE(ae_title="FIRST")
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="ADAPTER")
        assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert seen["raw"] and seen["titles"] == ("FIRST", "ADAPTER") and seen["peer"].startswith("127.0.0.1:")
        # a rejection from EVT_REQUESTED: transient, DUL service provider (presentation), local limit exceeded
        second = AE(ae_title="SECOND")
        second.add_requested_context(Verification)
        assoc = second.associate("127.0.0.1", server.server_address[1], ae_title="ADAPTER")
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
        # a connection shut down from another thread ends: its reader sees the end of the stream
        held = {}
        scp_conn_open = threading.Event()

        def keep(event):
            held["assoc"] = event.assoc
            scp_conn_open.set()
        server.bind(evt.EVT_CONN_OPEN, keep)
        s = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10)
        assert scp_conn_open.wait(10)
        pn.shut_down(held["assoc"])
        assert s.recv(1) == b""
        s.close()
    finally:
        server.shutdown()
