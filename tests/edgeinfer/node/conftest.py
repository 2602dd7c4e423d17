"""Real peers for the node tests: Orthanc as the PACS, DCMTK as the modality (helpers in tests/peers.py).

Fixtures
--------
``orthanc``          a running Orthanc (AET "PACS", plain DICOM), emptied before each test. One process
                     serves the whole session: starting takes ~0.1 s but a clean SIGTERM stop takes
                     ~3.5 s, so each test gets the shared one after ``reset()`` (``DELETE /studies/{id}``
                     for every study); it is restarted if a test killed it.
``orthanc_factory``  ``start(aet="PACS", tls=None, extra_config=None) -> Orthanc`` for a private Orthanc
                     (a DICOM-TLS one, another AET, other options); stopped at teardown (SIGTERM, SIGKILL
                     after 5 s).
``tls_material``     :class:`peers.TlsMaterial` for the session (read-only).
``dcmtk``            ``{"storescu": path, "echoscu": path, "dsrdump": path}``; skips (fails under ``CI``)
                     when DCMTK is missing.
``node_factory``     ``start(*args, name=None)``: ``edgeinfer serve`` in a subprocess (:class:`peers.NodeProcess`),
                     each node in its own folder, stopped at teardown.
``node_phantoms``    3 phantom images (``phantom.generate(..., 3, seed=1, max_size=256)``), read-only;
                     the folder also holds labels.csv, which ``peers.storescu`` skips (``+sp *.dcm``).
"""
from __future__ import annotations

import pytest

import peers


@pytest.fixture(scope="session")
def _orthanc_session(tmp_path_factory):
    started: list[peers.Orthanc] = []

    def get() -> peers.Orthanc:
        if not started or started[-1].proc.poll() is not None:
            started.append(peers.Orthanc.start(tmp_path_factory.mktemp("orthanc")))
        return started[-1]

    yield get
    peers.stop_processes([s.proc for s in started])


@pytest.fixture
def orthanc(_orthanc_session) -> peers.Orthanc:
    """The session's Orthanc (AET PACS), holding no study."""
    server = _orthanc_session()
    server.reset()
    assert server.studies() == [], "Orthanc still holds studies after reset()"
    return server


@pytest.fixture
def orthanc_factory(tmp_path_factory):
    started: list[peers.Orthanc] = []

    def start(aet: str = "PACS", tls: peers.TlsMaterial | None = None, extra_config: dict | None = None):
        server = peers.Orthanc.start(tmp_path_factory.mktemp("orthanc"), aet=aet, tls=tls, extra_config=extra_config)
        started.append(server)
        return server

    yield start
    peers.stop_processes([s.proc for s in started])  # in parallel: each takes ~3 s to stop cleanly


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory) -> peers.TlsMaterial:
    return peers.make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def dcmtk() -> dict[str, str]:
    return {name: peers.require_binary(name) for name in ("storescu", "echoscu", "dsrdump")}


@pytest.fixture(scope="session")
def node_phantoms(tmp_path_factory):
    from edgeinfer import phantom

    out = tmp_path_factory.mktemp("node_phantoms") / "set"
    phantom.generate(out, 3, seed=1, max_size=256)
    return out


@pytest.fixture
def node_factory(tmp_path):
    """``start(*args, name=None, **kw) -> peers.NodeProcess``: ``edgeinfer serve`` with these flags, each node
    in its own folder under ``tmp_path`` (``name``, default node0, node1...); SIGTERM at teardown."""
    started: list[peers.NodeProcess] = []

    def start(*args: str, name: str | None = None, **kw) -> peers.NodeProcess:
        workdir = tmp_path / (name or f"node{len(started)}")
        workdir.mkdir()
        node = peers.NodeProcess(workdir, *args, **kw)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()
