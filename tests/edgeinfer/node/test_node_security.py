"""edgeinfer serve under hostile or misconfigured peers, through real sockets.

DCMTK's echoscu/storescu play the modality wherever the test is about what a modality sees (TLS,
mutual TLS, a wrong called AE title); raw TCP sockets play the attacker (idle connections, PDUs
built by hand per PS3.8 9.3 that claim a huge length or exceed the node's ``--max-pdu``).

What pynetdicom 3.0 does with a PDU (``dul.py`` ``DULServiceProvider._read_pdu_data``): it reads the
6-byte header (type, reserved, 4-byte big-endian length), rejects an unknown type, then
``AssociationSocket.recv(length)`` (``transport.py``) reads the body 4096 bytes at a time into a
growing bytearray until it has ``length`` bytes or the peer closes. It never compares the length
with the maximum it advertised, and on the acceptor side the socket has no timeout (``socket.accept()``
returns a blocking socket; pynetdicom sets ``network_timeout`` only on the listening socket and on
requestor sockets), so a peer that stops in the middle of a PDU holds the association's thread, and
its slot among ``--max-associations``, for as long as it keeps the connection open. Likewise
``AssociationServer.get_request`` wraps each accepted socket with ``ssl_context.wrap_socket(...,
server_side=True)`` in the single thread that accepts connections, so the TLS handshake of one peer
that never sends a ClientHello blocks every other client. And pynetdicom decodes command sets with
pydicom outside the node's ``_library_quiet`` boundary, so pydicom's warnings quote peer values into the
log. The node guards against each of those four (``edgeinfer/node/receiver.py``: a read timeout and a
PDU size check on every accepted socket, the TLS handshake deferred into the association's thread
with a timeout, pydicom's warnings silenced in the service); the tests below hold it to that.

Not tested here: results sent to PACS over TLS (the outbox speaks plain DICOM only, for now).
"""
from __future__ import annotations

import socket
import sqlite3
import struct
import subprocess
import time

import pydicom

import peers
from peers import NODE_AET, NodeProcess

HOST = "127.0.0.1"


# --- fixtures and helpers ------------------------------------------------------------------------------
def tls_flags(tls: peers.TlsMaterial, mutual: bool = False) -> tuple[str, ...]:
    flags = ("--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key))
    return flags + (("--tls-ca", str(tls.ca_cert)) if mutual else ())


def echo(node: NodeProcess, *extra: str, called: str = NODE_AET, timeout: float = 20) -> subprocess.CompletedProcess:
    return peers.echoscu(HOST, node.port, called, extra=extra, timeout=timeout)


def echo_ok(node: NodeProcess, *extra: str, timeout: float = 20) -> bool:
    """The C-ECHO succeeded; False when echoscu failed or had to be killed after ``timeout`` s."""
    try:
        return echo(node, *extra, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def rss_mb(node: NodeProcess) -> float:
    """The node process's resident memory (VmRSS in /proc/<pid>/status), MB."""
    with open(f"/proc/{node.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def assert_healthy(node: NodeProcess) -> None:
    """Still running, /healthz answers, and nothing in its log is a traceback."""
    assert node.proc.poll() is None, node.log.read_text(errors="replace")[-3000:]
    code, body = node.get("/healthz")
    assert code == 200 and body["status"] == "alive"
    log = node.log.read_text(errors="replace")
    assert "Traceback" not in log and "Exception in thread" not in log, log[-3000:]


def closed_by_peer(sock: socket.socket) -> bool:
    """The node closed (or reset) this connection: EOF now, or only the node's last PDUs (an A-ABORT or
    A-ASSOCIATE-RJ) before EOF. Non-blocking: False while the connection is open and silent."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:       # ECONNRESET: closed too
        return True


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the node sends until it closes the connection; AssertionError if it is still open
    after ``timeout`` s."""
    sock.settimeout(timeout)
    got = bytearray()
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return bytes(got)
            got += data
    except socket.timeout:
        raise AssertionError(f"the node kept the connection open for {timeout:g} s") from None
    except ConnectionResetError:
        return bytes(got)


# --- PDUs by hand (PS3.8 9.3) --------------------------------------------------------------------------
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, P_DATA_TF, A_ABORT = 0x01, 0x02, 0x04, 0x07
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _uid(uid: str) -> bytes:
    return uid.encode()  # item lengths carry the exact size: no padding inside items (PS3.8 9.3.2.x)


def associate_rq(called: str = NODE_AET, calling: str = "RAWSCU", max_pdu: int = 16384) -> bytes:
    """A-ASSOCIATE-RQ (9.3.2): protocol version 1, Verification in implicit VR little endian, our max PDU."""
    context = struct.pack(">BBBB", 1, 0, 0, 0) + _item(0x30, _uid(VERIFICATION)) + _item(0x40, _uid(IMPLICIT_LE))
    items = (_item(0x10, _uid("1.2.840.10008.3.1.1.1"))        # application context
             + _item(0x20, context)                            # presentation context, ID 1
             + _item(0x50, _item(0x51, struct.pack(">L", max_pdu))))  # user information: maximum length
    fixed = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
    return pdu(A_ASSOCIATE_RQ, fixed + items)


def p_data_tf(data: bytes, context_id: int = 1, control: int = 0x03) -> bytes:
    """P-DATA-TF (9.3.5) holding one PDV; control 0x03: command, last fragment."""
    return pdu(P_DATA_TF, struct.pack(">LBB", len(data) + 2, context_id, control) + data)


def _element(elem: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHL", 0x0000, elem, len(value)) + value


def c_echo_rq(message_id: int = 1, padding: int = 0) -> bytes:
    """A C-ECHO-RQ command set (PS3.7 9.3.5), implicit VR little endian; ``padding`` bytes of an extra
    group-0000 element make it as large as wanted while it stays a valid request."""
    elements = (_element(0x0002, _uid(VERIFICATION)) + _element(0x0100, struct.pack("<H", 0x0030))
                + _element(0x0110, struct.pack("<H", message_id)) + _element(0x0800, struct.pack("<H", 0x0101)))
    if padding:
        elements += _element(0x5555, bytes(padding))
    return _element(0x0000, struct.pack("<L", len(elements))) + elements


def read_pdu(sock: socket.socket, timeout: float = 10.0) -> tuple[int | None, bytes]:
    """(type, body) of the next PDU; (None, b"") when the node closed the connection first."""
    sock.settimeout(timeout)

    def exactly(n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            try:
                data = sock.recv(n - len(buf))
            except ConnectionResetError:
                return None
            if not data:
                return None
            buf += data
        return bytes(buf)

    header = exactly(6)
    if header is None:
        return None, b""
    pdu_type, _, length = struct.unpack(">BBL", header)
    body = exactly(length)
    return (pdu_type, body) if body is not None else (None, b"")


def accepted_max_pdu(ac_body: bytes) -> int | None:
    """The node's maximum receive length from an A-ASSOCIATE-AC body (user information item 0x51)."""
    pos = 68  # protocol version, reserved, 2 x 16 AE titles (not checked), 32 reserved
    while pos + 4 <= len(ac_body):
        item_type, _, length = struct.unpack(">BBH", ac_body[pos:pos + 4])
        value = ac_body[pos + 4:pos + 4 + length]
        if item_type == 0x50:
            sub = 0
            while sub + 4 <= len(value):
                sub_type, _, sub_len = struct.unpack(">BBH", value[sub:sub + 4])
                if sub_type == 0x51:
                    return struct.unpack(">L", value[sub + 4:sub + 8])[0]
                sub += 4 + sub_len
        pos += 4 + length
    return None


def associate(node: NodeProcess) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection((HOST, node.port), timeout=10)
    sock.sendall(associate_rq())
    pdu_type, body = read_pdu(sock)
    assert pdu_type == A_ASSOCIATE_AC, f"expected A-ASSOCIATE-AC, got {pdu_type!r}"
    return sock, body


# --- 1. TLS --------------------------------------------------------------------------------------------
def test_tls_node_serves_tls_modalities_and_refuses_plain_dicom(node_factory, tls_material, node_phantoms):
    peers.require_dcmtk_tls()
    node = node_factory(*tls_flags(tls_material))
    # the modality trusts our CA and checks the node's certificate (DCMTK's default -rc)
    with_cert = peers.dcmtk_tls_args(tls_material, "client")
    r = echo(node, *with_cert)
    assert r.returncode == 0, r.stderr[-2000:]
    assert echo_ok(node, *peers.dcmtk_tls_args(tls_material, "none"))  # no --tls-ca: no client cert needed
    sent = node.store([node_phantoms], extra=("-xr", *with_cert))
    assert sent.returncode == 0, sent.stderr[-2000:]
    n_files = len(list(node_phantoms.rglob("*.dcm")))
    assert peers.parse_store_statuses(sent.stdout + sent.stderr) == [0] * n_files
    assert len(list((node.spool / "instances").rglob("*.dcm"))) == n_files
    # plain DICOM on the TLS port: the node answers with a TLS alert, never an association
    plain = echo(node)
    assert plain.returncode != 0 and "Association Accepted" not in plain.stderr
    assert echo_ok(node, *with_cert)
    assert_healthy(node)


# --- 2. mutual TLS -------------------------------------------------------------------------------------
def test_mutual_tls_admits_only_clients_with_a_certificate_from_our_ca(node_factory, tls_material, node_phantoms):
    peers.require_dcmtk_tls()
    node = node_factory(*tls_flags(tls_material, mutual=True))
    good = peers.dcmtk_tls_args(tls_material, "client")
    r = echo(node, *good)
    assert r.returncode == 0, r.stderr[-2000:]
    for client in ("rogue", "none"):  # a certificate from another CA; no certificate at all
        r = echo(node, *peers.dcmtk_tls_args(tls_material, client))
        assert r.returncode != 0 and "Association Accepted" not in r.stderr, (client, r.stderr[-2000:])
        rs = node.store([node_phantoms], extra=("-xr", *peers.dcmtk_tls_args(tls_material, client)))
        assert rs.returncode != 0 and peers.parse_store_statuses(rs.stdout + rs.stderr) == [], client
    assert echo(node).returncode != 0                      # plain DICOM
    assert not list((node.spool / "instances").rglob("*.dcm"))
    # the refused handshakes left the node serving
    sent = node.store([node_phantoms], extra=("-xr", *good))
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert set(peers.parse_store_statuses(sent.stdout + sent.stderr)) == {0}
    assert_healthy(node)


def test_an_idle_connection_to_the_tls_port_does_not_block_other_clients(node_factory, tls_material):
    peers.require_dcmtk_tls()
    node = node_factory(*tls_flags(tls_material), "--acse-timeout", "2", "--network-timeout", "2")
    good = peers.dcmtk_tls_args(tls_material, "client")
    assert echo_ok(node, *good)
    idle = socket.create_connection((HOST, node.port), timeout=10)  # sends nothing, not even a ClientHello
    try:
        time.sleep(0.5)  # let the node accept it
        peers.wait_until(lambda: echo_ok(node, *good, timeout=4), 8, 0.2,
                         "a TLS C-ECHO while another peer holds an idle connection")
    finally:
        idle.close()  # unblocks the node's accept thread (else its SIGTERM stop would wait for it)
    assert_healthy(node)


# --- 4. connection flood -------------------------------------------------------------------------------
def test_a_flood_of_idle_connections_is_dropped_and_the_node_keeps_serving(node_factory, dcmtk):
    node = node_factory("--max-associations", "5", "--acse-timeout", "2", "--network-timeout", "2")
    assert echo_ok(node)
    rss_before = rss_mb(node)
    idle: list[socket.socket] = []
    try:
        for _ in range(50):  # nothing sent: not even an A-ASSOCIATE-RQ
            idle.append(socket.create_connection((HOST, node.port), timeout=30))
        code, body = node.get("/healthz")                       # the HTTP side is not starved
        assert code == 200 and body["status"] == "alive"
        rss_flood = rss_mb(node)
        # --acse-timeout: the node closes each connection that never asked for an association
        peers.wait_until(lambda: all(closed_by_peer(s) for s in idle), 60, 0.25,
                         "the node to drop 50 idle connections (--acse-timeout 2)")
    finally:
        for s in idle:
            s.close()
    peers.wait_until(lambda: echo_ok(node), 30, 0.5, "a C-ECHO after the flood")
    rss_after = rss_mb(node)
    # threads for each connection, not data: bounded, and given back (roughly) when they go
    assert rss_flood - rss_before < 150, (rss_before, rss_flood)
    assert rss_after - rss_before < 100, (rss_before, rss_after)
    assert_healthy(node)


# --- 5. oversized PDUs ---------------------------------------------------------------------------------
def test_pdus_claiming_a_huge_length_are_dropped_without_reserving_it(node_factory, dcmtk):
    node = node_factory("--max-pdu", "16384", "--acse-timeout", "2", "--network-timeout", "2")
    assert echo_ok(node)
    rss_before = rss_mb(node)
    for _ in range(3):
        # an A-ASSOCIATE-RQ header claiming 2 GiB, a few bytes of it, then the end of our data
        s = socket.create_connection((HOST, node.port), timeout=10)
        s.sendall(struct.pack(">BBL", A_ASSOCIATE_RQ, 0, 0x7FFFFFFF) + struct.pack(">HH", 1, 0) + NODE_AET.encode())
        s.shutdown(socket.SHUT_WR)
        assert read_until_closed(s, 10) == b""               # dropped: no A-ASSOCIATE-AC/RJ for it
        s.close()
        # inside an association: a P-DATA-TF (and its PDV) claiming 2 GiB, a few bytes, end of data
        s, ac = associate(node)
        assert accepted_max_pdu(ac) == 16384                 # --max-pdu is what the node advertises
        s.sendall(struct.pack(">BBL", P_DATA_TF, 0, 0x7FFFFFFF) + struct.pack(">LBB", 0x7FFFFFFF - 4, 1, 0x03)
                  + c_echo_rq()[:20])
        s.shutdown(socket.SHUT_WR)
        tail = read_until_closed(s, 10)
        assert not tail or tail[0] == A_ABORT, tail[:16]      # no answer to a PDU it never got in full
        s.close()
    # an unknown PDU type is refused at its header
    s = socket.create_connection((HOST, node.port), timeout=10)
    s.sendall(struct.pack(">BBL", 0x4B, 0, 0x7FFFFFFF) + b"\0" * 16)
    assert read_pdu(s)[0] in (None, A_ABORT)
    s.close()
    assert rss_mb(node) - rss_before < 64, "the node reserved memory for a claimed PDU length"
    peers.wait_until(lambda: echo_ok(node), 20, 0.5, "a C-ECHO after the oversized PDUs")
    assert_healthy(node)


def test_a_p_data_tf_larger_than_max_pdu_aborts_the_association(node_factory, dcmtk):
    node = node_factory("--max-pdu", "16384")
    s, ac = associate(node)
    try:
        assert accepted_max_pdu(ac) == 16384
        s.sendall(p_data_tf(c_echo_rq(message_id=7)))
        assert read_pdu(s)[0] == P_DATA_TF                   # a C-ECHO within the limit is answered
        s.sendall(p_data_tf(c_echo_rq(message_id=8, padding=64 * 16384)))   # a valid C-ECHO-RQ in 1 MiB
        pdu_type, _ = read_pdu(s)
    finally:
        s.close()
    assert pdu_type in (None, A_ABORT), "the node answered a P-DATA-TF 64 times its --max-pdu"
    assert echo_ok(node)
    assert_healthy(node)


def test_peers_that_stall_inside_a_pdu_cannot_hold_every_association_slot(node_factory, dcmtk):
    node = node_factory("--max-associations", "2", "--acse-timeout", "2", "--network-timeout", "2")
    stalled: list[socket.socket] = []
    try:
        for _ in range(3):  # one more than --max-associations; each stays open, silent, mid-PDU
            s = socket.create_connection((HOST, node.port), timeout=10)
            s.sendall(struct.pack(">BBL", A_ASSOCIATE_RQ, 0, 0x7FFFFFFF) + struct.pack(">HH", 1, 0))
            stalled.append(s)
        peers.wait_until(lambda: echo_ok(node), 10, 0.5,
                         "a C-ECHO while 3 peers stall inside a PDU (--acse-timeout/--network-timeout 2 s)")
    finally:
        for s in stalled:
            s.close()
    assert_healthy(node)


def test_slowloris_peers_dripping_an_association_request_never_keep_a_modality_out(node_factory, dcmtk):
    """40 peers (more than the node's 32 handshake places) each drip an A-ASSOCIATE-RQ one byte every
    0.4 s, so no read ever waits long enough for --network-timeout (60 s). The request has one deadline
    from accept (--acse-timeout), handshakes hold no association slot (--max-associations 2), and when
    the handshake places are full the oldest is closed: every C-ECHO of the legitimate modality succeeds.
    (Accepting 40 connections takes the node a few seconds on 2 cores: pynetdicom polls in every
    connection's thread. The deadline counts from accept.)"""
    from edgeinfer.node.receiver import HANDSHAKE_SLOTS

    node = node_factory("--max-associations", "2", "--acse-timeout", "6", "--network-timeout", "60")
    request = associate_rq()
    drippers = [socket.create_connection((HOST, node.port), timeout=10) for _ in range(HANDSHAKE_SLOTS + 8)]
    opened = time.monotonic()
    closed_at: dict[int, float] = {}
    echoes: list[bool] = []
    try:
        for i in range(int(14 / 0.4)):                       # 14 s of dripping, a C-ECHO every ~1.2 s
            for n, s in enumerate(drippers):
                if n in closed_at:
                    continue
                try:
                    s.sendall(request[i:i + 1])
                except OSError:                              # reset or broken pipe: the node closed it
                    closed_at[n] = time.monotonic() - opened
            if i % 3 == 0:
                echoes.append(echo_ok(node, timeout=10))
            time.sleep(0.4)
        for n, s in enumerate(drippers):
            if n not in closed_at and closed_by_peer(s):
                closed_at[n] = time.monotonic() - opened
    finally:
        for s in drippers:
            s.close()
    assert echoes and all(echoes), echoes
    assert len(closed_at) == len(drippers), f"{len(drippers) - len(closed_at)} drippers still connected after 14 s"
    assert request[:len(request) // 3] and len(request) > 14 / 0.4   # none could have completed its request
    peers.wait_until(lambda: peers.metric(node.get("/metrics")[1], "edgeinfer_associations_total",
                                          '{outcome="incomplete"}') == len(drippers), 10, 0.2,
                     "every dripping connection counted as an incomplete association request")
    log = node.log.read_text(errors="replace")
    assert "association request not completed: connection from 127.0.0.1:" in log
    assert "(no complete A-ASSOCIATE-RQ within 6 s (--acse-timeout))" in log
    assert f"({HANDSHAKE_SLOTS} connections were waiting for their association request; the oldest is closed)" in log
    assert_healthy(node)


def test_the_association_limit_counts_established_associations(node_factory, dcmtk):
    """--max-associations 1: with one association held open, the next is rejected (transient, local limit
    exceeded) with an audit line; once it is released, the next is accepted."""
    node = node_factory("--max-associations", "1")
    s, _ = associate(node)
    try:
        r = echo(node)
        assert r.returncode != 0 and "Association Rejected" in r.stderr, r.stderr[-2000:]
        assert "Local Limit Exceeded" in r.stderr, r.stderr[-2000:]
    finally:
        s.close()
    peers.wait_until(lambda: echo_ok(node), 10, 0.2, "a C-ECHO once the held association is gone")
    log = node.log.read_text(errors="replace")
    assert "association rejected: MODALITY -> EDGEINFER from 127.0.0.1:" in log
    assert "the association limit (1) was reached" in log
    assert_healthy(node)


def test_values_in_a_hostile_command_set_never_reach_the_log(node_factory, dcmtk):
    node = node_factory()
    secret = b"DOE^JANE^SECRET"
    elements = (_element(0x0002, secret) + _element(0x0100, struct.pack("<H", 0x0030))
                + _element(0x0110, struct.pack("<H", 3)) + _element(0x0800, struct.pack("<H", 0x0101)))
    s, _ = associate(node)
    try:
        s.sendall(p_data_tf(_element(0x0000, struct.pack("<L", len(elements))) + elements))
        assert read_pdu(s)[0] in (None, A_ABORT, P_DATA_TF)   # the node answers or aborts: either is fine
    finally:
        s.close()
    assert echo_ok(node)
    assert_healthy(node)
    assert secret.decode() not in node.log.read_text(errors="replace")


# --- 6. called AE title --------------------------------------------------------------------------------
def test_a_wrong_called_ae_title_is_rejected_at_association(node_factory, dcmtk):
    node = node_factory()
    r = echo(node, called="OTHER")
    assert r.returncode != 0
    assert "Association Rejected" in r.stderr and "Called AE Title Not Recognized" in r.stderr, r.stderr[-2000:]
    assert echo_ok(node)                                     # the right title still works
    peers.wait_until(lambda: "association rejected" in node.log.read_text(errors="replace"), 5, 0.1,
                     "the audit line for the rejected association")
    log = node.log.read_text(errors="replace")
    # an admin can match the line to the modality: AE titles, peer address and the reason
    assert "association rejected: MODALITY -> OTHER from 127.0.0.1:" in log, log[-2000:]
    assert "the called AE title is not this node's (EDGEINFER)" in log
    assert "association accepted: " in log and f"-> {NODE_AET} from 127.0.0.1:" in log
    assert_healthy(node)


def test_results_go_to_a_tls_pacs_with_mutual_authentication(orthanc_factory, node_factory, tls_material,
                                                             node_phantoms):
    """The outbox speaks DICOM over TLS: Orthanc's DICOM port takes only TLS with a client certificate from our CA."""
    pacs = orthanc_factory(tls=tls_material)
    dest = f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"
    node = node_factory("--send-to", dest, "--quiet-seconds", "1",
                       "--send-tls-ca", str(tls_material.ca_cert), "--send-tls-cert", str(tls_material.client_cert),
                       "--send-tls-key", str(tls_material.client_key))
    assert node.store([node_phantoms]).returncode == 0
    for uid in {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in node_phantoms.rglob("*.dcm")}:
        assert len(pacs.wait_for_srs(uid, 1, timeout=60)) == 1
    # without our client certificate the PACS refuses: the item is retried, never marked sent
    plain = node_factory("--send-to", dest, "--quiet-seconds", "1", "--send-horizon", "2",
                        "--send-backoff", "0.2", "--send-tls-ca", str(tls_material.ca_cert))
    assert plain.store([node_phantoms]).returncode == 0
    db = plain.spool / "state.sqlite3"
    peers.wait_until(lambda: sqlite3.connect(db).execute(
        "SELECT count(*) FROM outbox WHERE state='dead'").fetchone()[0] >= 1, 60, 0.3, "a dead letter")
    assert sqlite3.connect(db).execute("SELECT count(*) FROM outbox WHERE state='sent'").fetchone()[0] == 0
    _, metrics = plain.get("/metrics")
    assert "edgeinfer_outbox_dead_letters_total{destination=" in metrics

