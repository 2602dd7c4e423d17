"""The triton backend against a real Triton Inference Server (``edgeinfer triton-host`` in the PyTriton venv,
tests/peers.py's TritonHost): the same scores as in-process, the bundle's identity checked, STAT before ROUTINE,
a server that dies or is not there."""
from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest

import peers
from edgeinfer import autoselect, triton as policy
from edgeinfer.backends.triton import ServerUnreachable
from edgeinfer.bundle import load_bundle
from edgeinfer.cli import main
from edgeinfer.errors import BackendUnavailable, IntegrityError
from edgeinfer.triage import TriageEngine

pytestmark = pytest.mark.slow


def _runner(bundle, url, precision="fp32"):
    return autoselect.choose(bundle, backend="triton", precision=precision, extra={"triton_url": url}).create_runner()


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_scores_from_the_server_are_the_in_process_scores_and_say_which_server_ran(triton_host, scheme):
    bundle = load_bundle("phantom-cxr")
    url = triton_host.http_url if scheme == "http" else triton_host.grpc_url
    x = np.random.default_rng(3).random((5, 1, 256, 256), dtype=np.float32)
    with _runner(bundle, url) as remote, _local(bundle) as local:
        got, want = remote.infer({"image": x}), local.infer({"image": x})
        report = remote.report().as_dict()
    assert sorted(got) == ["cam", "probs"] and got["probs"].shape == (5, 2) and got["cam"].shape == (5, 2, 8, 8)
    np.testing.assert_allclose(got["probs"], want["probs"], atol=1e-5)
    np.testing.assert_allclose(got["cam"], want["cam"], atol=1e-4)
    assert report["backend"] == "triton" and report["provider"] == "triton 2.51.0" and report["precision"] == "fp32"
    assert report["details"]["remote"] == {"url": url, "model": "phantom-cxr-fp32", "model_version": "1",
                                           "server": "triton", "server_version": "2.51.0"}


def test_the_host_serves_the_shared_policy_and_the_bundles_identity(triton_host):
    import tritonclient.http as http

    config = http.InferenceServerClient(f"127.0.0.1:{triton_host.http_port}").get_model_config("phantom-cxr-fp32")
    bundle = load_bundle("phantom-cxr")
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert {k: params[k] for k in policy.IDENTITY_KEYS} == policy.identity(bundle, bundle.artifact(precision="fp32"))
    db = config["dynamic_batching"]
    assert config["max_batch_size"] == 8 and db["priority_levels"] == 3 and db["default_priority_level"] == 3
    assert db["preferred_batch_size"] == [1, 2, 4, 8] and db["max_queue_delay_microseconds"] == policy.QUEUE_DELAY_US
    assert db["priority_queue_policy"]["3"]["timeout_action"] == "DELAY"
    assert sum(g["count"] for g in config["instance_group"]) == policy.INSTANCES
    assert [(t["name"], t["dims"]) for t in config["input"]] == [("image", [1, 256, 256])]
    # Triton's own readiness and metrics
    assert "nv_inference_request_success" in triton_host.metrics()


def test_a_server_serving_another_bundle_is_refused_with_both_digests(triton_host, tmp_path):
    local = tmp_path / "phantom-cxr"
    shutil.copytree(load_bundle("phantom-cxr").path, local)
    manifest = json.loads((local / "manifest.json").read_text())
    manifest["version"] = "0.1.1"          # same graphs, another bundle: its digest differs
    (local / "manifest.json").write_text(json.dumps(manifest))
    (local / "signatures.json").unlink(missing_ok=True)
    bundle = load_bundle(local)
    with pytest.raises(IntegrityError) as err:
        _runner(bundle, triton_host.http_url).activate()
    served = load_bundle("phantom-cxr").digest
    assert f"bundle digest {served[:16]}…" in str(err.value) and bundle.digest[:16] in str(err.value)
    assert "server: phantom-cxr 0.1.0; here: phantom-cxr 0.1.1" in str(err.value)


def test_a_precision_the_server_does_not_serve_is_named_with_what_to_do(triton_host):
    bundle = load_bundle("phantom-cxr")
    with pytest.raises(BackendUnavailable, match="does not serve phantom-cxr-int8; serve it with"):
        _runner(bundle, triton_host.http_url, "int8").activate()
    # asked for no precision, the client takes the one the server serves
    sel = autoselect.choose(bundle, backend="triton", extra={"triton_url": triton_host.grpc_url})
    assert (sel.backend, sel.precision) == ("triton", "fp32")


def test_a_stat_request_overtakes_queued_routine_ones(triton_host):
    """64 ROUTINE requests of a full batch each queue up behind the ones running; a STAT request sent after them
    finishes before at least 16 of them (first in first out, it would be last). Not first: the host's two instances
    work through the queue while the requests are still being sent."""
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(f"127.0.0.1:{triton_host.grpc_port}")
    x = np.random.default_rng(0).random((8, 1, 256, 256), dtype=np.float32)
    done: list[str] = []
    lock = threading.Lock()
    finished = threading.Event()

    def send(tag: str, priority: int):
        inp = grpc.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)

        def callback(result, error):
            with lock:
                done.append(tag if error is None else f"error {error}")
                if len(done) == 65:
                    finished.set()

        client.async_infer("phantom-cxr-fp32", [inp], callback, outputs=[grpc.InferRequestedOutput("probs")],
                           priority=priority)

    for i in range(64):
        send(f"routine{i}", policy.REQUEST_PRIORITY["ROUTINE"])
    time.sleep(0.1)     # sent ahead of the STAT one
    send("stat", policy.REQUEST_PRIORITY["STAT"])
    assert finished.wait(120), done
    assert not [d for d in done if d.startswith("error")], done
    assert len(done) - 1 - done.index("stat") >= 16, done     # at least 16 queued ROUTINE requests came after it
    client.close()


def test_triage_through_the_server_gives_the_in_process_priorities(triton_host, phantom_dir, tmp_path, capsys):
    remote, local = tmp_path / "remote.json", tmp_path / "local.json"
    assert main(["triage", str(phantom_dir), "--triton-url", triton_host.http_url, "--precision", "fp32",
                 "--output", str(remote), "--no-progress"]) == 0
    assert main(["triage", str(phantom_dir), "--backend", "onnxruntime", "--precision", "fp32",
                 "--output", str(local), "--no-progress"]) == 0
    got, want = (json.loads(p.read_text()) for p in (remote, local))
    assert [(s["study_uid"], s["priority"]) for s in got["studies"]] == \
        [(s["study_uid"], s["priority"]) for s in want["studies"]]
    for a, b in zip(got["studies"], want["studies"]):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert a["model"]["backend"] == "triton" and a["model"]["server"] == {
            "url": triton_host.http_url, "server_version": "2.51.0", "model": "phantom-cxr-fp32", "model_version": "1"}


def test_no_server_makes_every_study_a_human_read_never_routine(phantom_dir, tmp_path, capsys):
    out = tmp_path / "wl.json"
    url = f"http://127.0.0.1:{peers.free_port()}"
    assert main(["triage", str(phantom_dir), "--triton-url", url, "--precision", "fp32", "--output", str(out),
                 "--no-progress"]) == 0
    wl = json.loads(out.read_text())
    assert wl["summary"]["studies"] > 0 and {s["priority"] for s in wl["studies"]} == {"INDETERMINATE"}
    image = wl["studies"][0]["images"][0]
    assert image["status"] == "indeterminate" and f"the Triton server at {url} is unreachable" in image["reason"]
    assert "the inference server could not be reached for part of the run" in capsys.readouterr().err
    # without a precision, the client cannot ask the server which one it serves: said, with what to do
    assert main(["triage", str(phantom_dir), "--triton-url", url, "--no-progress"]) != 0
    assert "pass --precision" in capsys.readouterr().err


def test_a_server_killed_mid_run_leaves_human_reads_and_is_used_again_when_back(tmp_path, phantom_dir):
    host = peers.TritonHost(tmp_path)
    bundle = load_bundle("phantom-cxr")
    files = sorted(p for p in phantom_dir.rglob("*.dcm"))
    try:
        runner = _runner(bundle, host.http_url).activate()
        engine = TriageEngine(bundle, runner, batch_size=1, workers=0)
        seen = []

        def progress(n):
            seen.append(n)
            if len(seen) == len(files) // 2:
                host.kill()      # half way: the server and its model are gone

        wl = engine.run(files, progress=progress)
        scored = [s for s in wl.studies if s["score"] is not None]
        lost = [s for s in wl.studies if s["priority"] == "INDETERMINATE"]
        assert scored and lost and len(scored) + len(lost) == len(wl.studies)
        assert all("unreachable" in i["reason"] for s in lost for i in s["images"] if i["status"] != "ok")
        assert runner.transport_failures >= 1 and runner.down
        with pytest.raises(ServerUnreachable):           # fails at once while it is down
            runner.infer({"image": np.zeros((1, 1, 256, 256), np.float32)})
        host.start()                                       # back, on the same ports
        time.sleep(2.1)                                    # RETRY_AFTER_S
        again = TriageEngine(bundle, runner, batch_size=4, workers=0).run(files)
        assert all(s["score"] is not None for s in again.studies) and runner.down is None
    finally:
        host.stop()


def _local(bundle):
    return autoselect.choose(bundle, backend="onnxruntime", precision="fp32", threads=1).create_runner()


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_a_server_that_accepts_but_never_answers_is_unreachable_within_the_timeout(scheme):
    """A hung host (the port open, nothing answering) is a server down after the timeout and its retries, never a
    hung call: the node waits for it, triage makes human reads."""
    import socket

    bundle = load_bundle("phantom-cxr")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"{scheme}://127.0.0.1:{silent.getsockname()[1]}"
        sel = autoselect.choose(bundle, backend="triton", precision="fp32",
                                extra={"triton_url": url, "triton_timeout_s": 0.5, "triton_retries": 1})
        runner = sel.create_runner()
        t0 = time.monotonic()
        runner.activate()                                   # a warning, not an error: the node must start
        with pytest.raises(ServerUnreachable, match=f"the Triton server at {url} is unreachable"):
            runner.infer({"image": np.zeros((1, 1, 256, 256), np.float32)})
        assert time.monotonic() - t0 < 10 and runner.unreachable() is not None


def test_a_segmentation_bundle_through_the_server_gives_the_in_process_volumes(tmp_path, capsys):
    """The head-CT U-Net hosted in Triton: the sliding window's batches go to the server, the volumes in mL and
    the priorities are the in-process ones."""
    from edgeinfer.phantom.ct_head import generate_ct

    studies = tmp_path / "ct"
    generate_ct(studies, 2, seed=9, size=256)
    host = peers.TritonHost(tmp_path, "phantom-ct-head")
    try:
        out = {}
        for name, flags in (("remote", ["--triton-url", host.grpc_url]), ("local", ["--backend", "onnxruntime"])):
            out[name] = tmp_path / f"{name}.json"
            assert main(["triage", str(studies), "--bundle", "phantom-ct-head", *flags, "--precision", "fp32",
                         "--output", str(out[name]), "--no-progress"]) == 0
    finally:
        host.stop()
    got, want = (json.loads(out[k].read_text())["studies"] for k in ("remote", "local"))
    assert [(s["priority"], s["volumes_ml"]) for s in got] == [(s["priority"], s["volumes_ml"]) for s in want]
    assert any(v > 0.5 for s in got for v in s["volumes_ml"].values())          # one of them bleeds
    assert {s["model"]["server"]["model"] for s in got} == {"phantom-ct-head-fp32"}
