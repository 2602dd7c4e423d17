"""Nodes that send their inference to one Triton Inference Server (``serve --triton-url``): real nodes, a real
tritonserver (tests/peers.py's TritonHost), DCMTK as the modality and Orthanc as the PACS."""
from __future__ import annotations

import time

import pytest

import peers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    from edgeinfer import phantom

    out = []
    for i, seed in enumerate((21, 22)):
        folder = tmp_path_factory.mktemp("triton_studies") / f"set{i}"
        rows = phantom.generate(folder, 3, seed=seed, max_size=256)
        out.append((folder, sorted({r["study_uid"] for r in rows})))
    return out


def _node(node_factory, orthanc, url, *args):
    return node_factory("--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "--quiet-seconds", "1",
                        "--backend", "triton", "--triton-url", url, *args)


def test_two_nodes_share_one_server_and_each_puts_its_srs_into_pacs(node_factory, orthanc, dcmtk, triton_host,
                                                                     two_sets):
    before = peers.metric(triton_host.metrics(), "nv_inference_request_success", '{model="phantom-cxr-fp32",version="1"}')
    nodes = [_node(node_factory, orthanc, triton_host.http_url), _node(node_factory, orthanc, triton_host.grpc_url)]
    for node, (folder, _) in zip(nodes, two_sets):
        assert node.store([folder]).returncode == 0
    for node, (_, uids) in zip(nodes, two_sets):
        for uid in uids:
            assert len(orthanc.wait_for_srs(uid, 1, timeout=60)) == 1
        code, wl = node.get("/worklist")
        assert code == 200 and sorted(s["study_uid"] for s in wl["studies"]) == uids
        assert {s["priority"] for s in wl["studies"]} <= {"STAT", "URGENT", "ROUTINE"}
        model = wl["studies"][0]["model"]
        assert model["backend"] == "triton" and model["server"]["server_version"] == "2.51.0"
        assert model["server"]["model"] == "phantom-cxr-fp32" and model["server"]["model_version"] == "1"
        assert node.get("/readyz")[0] == 200
        assert peers.metric(node.get("/metrics")[1], "edgeinfer_inference_server_up") == 1
    after = peers.metric(triton_host.metrics(), "nv_inference_request_success", '{model="phantom-cxr-fp32",version="1"}')
    assert after - before >= sum(len(uids) for _, uids in two_sets)   # the server ran both nodes' studies


def test_a_study_waits_queued_while_the_server_is_down_and_is_scored_when_it_is_back(
        node_factory, orthanc, dcmtk, two_sets, tmp_path):
    ports = (peers.free_port(), peers.free_port(), peers.free_port())
    url = f"http://127.0.0.1:{ports[0]}"
    node = _node(node_factory, orthanc, url, "--inference-timeout", "300")
    assert node.get("/readyz")[0] == 200                # nothing waits yet: the node is ready to receive
    folder, uids = two_sets[0]
    assert node.store([folder]).returncode == 0
    peers.wait_until(lambda: node.get("/readyz")[0] == 503, 30, 0.2, "the node to say the server is down")
    code, body = node.get("/readyz")
    assert any(f"the inference server cannot be reached: the Triton server at {url} is unreachable" in r
               and "wait for it" in r for r in body["reasons"]), body
    metrics = node.get("/metrics")[1]
    assert peers.metric(metrics, "edgeinfer_inference_server_up") == 0
    assert peers.metric(metrics, "edgeinfer_inference_deferred_total") >= 1
    assert orthanc.study_uids() == [] and node.get("/worklist")[1]["studies"] == []   # queued, not guessed
    host = peers.TritonHost(tmp_path, ports=ports)       # the server comes (back)
    try:
        for uid in uids:
            assert len(orthanc.wait_for_srs(uid, 1, timeout=60)) == 1
        wl = node.get("/worklist")[1]
        assert sorted(s["study_uid"] for s in wl["studies"]) == uids
        assert all(s["score"] is not None for s in wl["studies"])
        peers.wait_until(lambda: node.get("/readyz")[0] == 200, 10, 0.2, "the node ready again")
        assert peers.metric(node.get("/metrics")[1], "edgeinfer_inference_server_up") == 1
    finally:
        host.stop()


def test_a_server_that_stays_down_sends_the_study_to_a_human_read_after_the_inference_timeout(
        node_factory, orthanc, dcmtk, two_sets):
    url = f"grpc://127.0.0.1:{peers.free_port()}"
    node = _node(node_factory, orthanc, url, "--inference-timeout", "4")
    folder, uids = two_sets[1]
    t0 = time.monotonic()
    assert node.store([folder]).returncode == 0
    for uid in uids:    # an SR reaches PACS: a result no one can miss, saying why
        assert len(orthanc.wait_for_srs(uid, 1, timeout=60)) == 1
    assert time.monotonic() - t0 >= 4
    wl = node.get("/worklist")[1]
    assert {s["priority"] for s in wl["studies"]} == {"INDETERMINATE"}
    assert all("the inference server could not be reached for" in s["reason"] for s in wl["studies"])
