"""edgeinfer triton-host: what it refuses before starting a server, said plainly (the server itself is exercised
by tests/edgeinfer/backends/test_triton_backend.py and the node tests)."""
from __future__ import annotations

import importlib.util
import socket

import pytest

import peers
from edgeinfer.cli import main


def _args(*extra, ports=None):
    http, grpc, metrics = ports or (peers.free_port(), peers.free_port(), peers.free_port())
    return ["triton-host", "phantom-cxr", "--address", "127.0.0.1", "--http-port", str(http), "--grpc-port", str(grpc),
            "--metrics-port", str(metrics), *extra]


def test_a_port_another_server_holds_is_named_before_anything_starts(capsys):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(_args(ports=(peers.free_port(), port, peers.free_port()))) == 1
    err = capsys.readouterr().err
    assert f"--grpc-port {port}: cannot listen on 127.0.0.1:{port}" in err and "choose another port" in err


@pytest.mark.parametrize("extra, message", [
    (("--backend", "triton"), "triton-host runs the bundle here: pick a local backend"),
    (("--instances", "0"), "--instances 0: from 1 to 16"),
    (("--max-batch", "0"), "--max-batch 0: from 1 to 1024"),
])
def test_settings_that_cannot_serve_are_refused(capsys, extra, message):
    assert main(_args(*extra)) == 1
    assert message in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("pytriton") is not None, reason="PyTriton is installed here")
def test_without_pytriton_the_host_says_which_venv_to_make(capsys):
    assert main(_args()) != 0
    err = capsys.readouterr().err
    assert "nvidia-pytriton in a venv made from Debian's /usr/bin/python3" in err and "make .venv-triton" in err


def test_only_pytriton_s_start_up_race_makes_the_host_start_again():
    """The text PyTriton 0.7 gave when a second instance connected before the first listened (seen here), against
    a model that cannot load for a reason a second start would not mend."""
    from edgeinfer.triton_host import START_ATTEMPTS, lost_start_race

    race = Exception("[400] load failed for model 'phantom-cxr-fp32': version 1 is at UNAVAILABLE state: Internal: "
                     "TritonModelException: Model initialize error: Traceback (most recent call last):\n"
                     '  File "/tmp/folder7XaNHq/1/model.py", line 425, in initialize\n'
                     "    inference_handler_config = get_config_from_handshake_server(handshake_socket)\n"
                     "ConnectionRefusedError: [Errno 111] Connection refused")
    other = Exception("[400] load failed for model 'phantom-cxr-fp32': version 1 is at UNAVAILABLE state: Internal: "
                      "ValueError: input image: shape mismatch")
    assert lost_start_race(race) and not lost_start_race(other) and START_ATTEMPTS >= 2
