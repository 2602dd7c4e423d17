#!/usr/bin/env python
"""A bare pynetdicom storage SCP: the ingest floor the library sets, for node_bench.py's comparison pass.

    .venv/bin/python benchmarks/bare_scp.py FOLDER [--port 0] [--max-pdu 16384] [--ae-title BARE]

A benchmark helper, not a node. It negotiates what ``edgeinfer serve`` negotiates (the node's own
presentation contexts, :func:`edgeinfer.node.receiver.scp_contexts`, when they can be imported), turns
Nagle's algorithm off on each connection as the node does, and for each C-STORE does only this: the
data set as received (``event.encoded_dataset(include_meta=True)``, as the node takes it) is written to
``FOLDER/NNNNNNN.dcm``, the file is fsync'd, the folder is fsync'd, and only then is Success (0x0000)
answered. No parsing, no state database, no limits, no logging per instance.

Prints ``READY <port>`` on stdout once it listens (``--port 0``: a free port the kernel picks) and runs
until SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import itertools
import os
import signal
import socket
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def contexts() -> list[tuple[str, list[str]]]:
    """The node's presentation contexts, or (should they move) every storage SOP class in every
    transfer syntax pynetdicom knows, compressed ones first, as the node orders them."""
    try:
        from edgeinfer.node.receiver import scp_contexts
        return scp_contexts()
    except Exception:  # noqa: BLE001 - a fallback with the same order of preference
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
        native = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"]
        every = [str(t) for t in ALL_TRANSFER_SYNTAXES if str(t) not in native]
        every += [t for t in native if t in {str(x) for x in ALL_TRANSFER_SYNTAXES}]
        return [(str(cx.abstract_syntax), every) for cx in AllStoragePresentationContexts]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--max-pdu", type=int, default=16384, help="receive PDU size (the node's default: 16384)")
    p.add_argument("--ae-title", default="BARE")
    args = p.parse_args(argv)

    import logging

    from pynetdicom import AE, evt

    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    counter = itertools.count(1)
    lock = threading.Lock()

    def on_open(event):
        try:
            event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):
            pass

    def on_store(event):
        data = event.encoded_dataset(include_meta=True)
        with lock:
            n = next(counter)
        fd = os.open(folder / f"{n:07d}.dcm", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(dir_fd)
        return 0x0000

    ae = AE(ae_title=args.ae_title)
    offered = contexts()
    for abstract_syntax, transfer_syntaxes in offered:
        ae.add_supported_context(abstract_syntax, transfer_syntaxes)
    if "1.2.840.10008.1.1" not in {a for a, _ in offered}:
        ae.add_supported_context("1.2.840.10008.1.1")  # Verification: a readiness probe
    ae.require_called_aet = False
    ae.maximum_pdu_size = args.max_pdu
    ae.maximum_associations = 64
    server = ae.start_server(("127.0.0.1", args.port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, on_open)])
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"READY {server.server_address[1]}", flush=True)
    while not done.wait(1.0):
        pass
    server.shutdown()
    os.close(dir_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
