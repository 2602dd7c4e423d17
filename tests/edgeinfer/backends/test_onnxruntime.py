import numpy as np
import pytest

from edgeinfer.backends import RunnerOptions, backend_for, create_runner, get_backend
from edgeinfer.backends.onnxruntime import providers_for
from edgeinfer.bundle import load_bundle
from edgeinfer.errors import BackendError, BackendUnavailable, InferenceError, IntegrityError


def test_runs_on_cpu_and_reports_what_ran(tiny_bundle):
    art = load_bundle(tiny_bundle).artifact(precision="fp32")
    with create_runner(art, RunnerOptions(threads=1)) as r:
        assert [t.name for t in r.inputs] == ["image"] and r.inputs[0].shape == ("batch", 1, 32, 32)
        x = np.zeros((3, 1, 32, 32), np.float32)
        out = r.infer({"image": x})["probs"]
        rep = r.report()
    assert out.shape == (3, 2)
    # sigmoid(4 * 0 - 2) for label 0
    np.testing.assert_allclose(out[:, 0], 1 / (1 + np.exp(2.0)), rtol=1e-6)
    assert (rep.backend, rep.provider, rep.device, rep.precision) == ("onnxruntime", "CPUExecutionProvider", "cpu", "fp32")
    assert rep.fallback_from is None and rep.artifact_sha256 == art.sha256
    assert not r.is_active and r.activate_ms > 0


@pytest.mark.parametrize("shared", [False, True])
def test_shared_cpu_stops_the_pool_spinning(tiny_bundle, shared):
    # with an intake pool on the same cores, ORT's idle threads must sleep, not spin (and say so)
    art = load_bundle(tiny_bundle).artifact(precision="fp32")
    with create_runner(art, RunnerOptions(threads=2, shared_cpu=shared)) as r:
        r.activate()
        so = r.session.get_session_options()
        got = {}
        for k in ("intra_op", "inter_op"):
            try:
                got[k] = so.get_session_config_entry(f"session.{k}.allow_spinning")
            except Exception:  # not set: ORT's default, spinning
                got[k] = None
        spinning = r.report().details["spinning"]
    assert got == ({"intra_op": "0", "inter_op": "0"} if shared else {"intra_op": None, "inter_op": None})
    assert spinning is (not shared)


def test_raw_call_gives_the_same_answer(tiny_bundle):
    art = load_bundle(tiny_bundle).artifact(precision="fp32")
    x = {"image": np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)}
    with create_runner(art) as r:
        np.testing.assert_array_equal(r.raw_call(x)()[0], r.infer(x)["probs"])


def test_unavailable_provider_is_an_error_unless_fallback_allowed(tiny_bundle):
    art = load_bundle(tiny_bundle).artifact(precision="fp32")
    with pytest.raises(BackendUnavailable, match=r"CUDAExecutionProvider is not available.*--allow-fallback"):
        backend_for(art, RunnerOptions(device="cuda"))
    with create_runner(art, RunnerOptions(device="tensorrt", allow_fallback=True)) as r:
        rep = r.report()
    assert rep.provider == "CPUExecutionProvider" and rep.fallback_from == "tensorrt"
    assert rep.as_dict()["fallback_from"] == "tensorrt"


def test_providers_for_is_pure():
    assert providers_for("cpu", ["CPUExecutionProvider"]) == (["CPUExecutionProvider"], None)
    got, why = providers_for("tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert got == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"] and why is None
    assert "not one of" in providers_for("npu", ["CPUExecutionProvider"])[1]


def test_lifecycle_and_input_checks(tiny_bundle):
    art = load_bundle(tiny_bundle).artifact(precision="fp32")
    r = create_runner(art)
    with pytest.raises(BackendError, match="not active"):
        r.infer({"image": np.zeros((1, 1, 32, 32), np.float32)})
    with r:
        with pytest.raises(InferenceError, match="inputs"):
            r.infer({"x": np.zeros((1, 1, 32, 32), np.float32)})
        with pytest.raises(InferenceError, match="onnxruntime failed"):
            r.infer({"image": np.zeros((1, 1, 7, 7), np.float32)})


def test_artifact_changed_after_load_is_refused(tiny_bundle, tmp_path):
    import shutil

    d = tmp_path / "b"
    shutil.copytree(tiny_bundle, d)
    art = load_bundle(d).artifact(precision="fp32")
    p = d / "model.onnx"
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="changed after the bundle was loaded"):
        create_runner(art).activate()


def test_registry_names_and_reasons(tiny_bundle):
    assert get_backend("ort").name == "onnxruntime"
    with pytest.raises(BackendUnavailable, match="unknown backend 'nope'"):
        get_backend("nope")


def test_resolve_never_changes_the_callers_options(tiny_bundle):
    from edgeinfer.backends import resolve
    from edgeinfer.bundle import load_bundle

    options = RunnerOptions(threads=1)
    res = resolve(load_bundle(tiny_bundle), "fp32", options)
    assert res.options is options and res.backend.name == "onnxruntime" and res.artifact.precision == "fp32"
    pytest.importorskip("openvino")
    b16 = resolve(load_bundle(tiny_bundle), "bf16", options, backend="openvino")
    assert b16.options.precision_hint == "bf16" and options.precision_hint is None  # a copy carries the hint
    assert b16.artifact.precision == "fp32"


# --- the CUDA provider's settings and the I/O binding path -------------------------------------------
from edgeinfer.backends.onnxruntime import CudaSettings, output_shape  # noqa: E402
from edgeinfer.errors import UsageError  # noqa: E402


def test_cuda_settings_default_to_the_fast_path_in_strict_fp32():
    s = CudaSettings()
    assert s.provider_options() == {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC",
                                    "arena_extend_strategy": "kNextPowerOfTwo", "use_tf32": "0",
                                    "prefer_nhwc": "0", "enable_cuda_graph": "1"}
    # a graph needs the bound buffers: without I/O binding it is never asked of the provider
    assert CudaSettings.parse("iobinding=off").provider_options()["enable_cuda_graph"] == "0"
    assert s.provider_options(cuda_graph=False)["enable_cuda_graph"] == "0"


def test_cuda_settings_round_trip_and_name_bad_input():
    s = CudaSettings.parse("graph=off, conv=exhaustive,arena=exact,tf32=on,nhwc=on,pinned=off,gpu=1")
    assert (s.cuda_graph, s.conv_algo, s.arena, s.tf32, s.nhwc, s.pinned, s.device_id) == (
        False, "EXHAUSTIVE", "kSameAsRequested", True, True, False, 1)
    assert CudaSettings.parse(s.spec()) == s and CudaSettings.parse({"graph": "off"}) == CudaSettings(cuda_graph=False)
    assert CudaSettings.parse(None) == CudaSettings.parse("") == CudaSettings()
    for bad, says in (("graph", "KEY=VALUE"), ("graph=maybe", "on or off"), ("conv=fast", "exhaustive"),
                      ("arena=big", "pow2 or exact"), ("gpu=x", "ordinal"), ("speed=max", "options are")):
        with pytest.raises(UsageError, match=says):
            CudaSettings.parse(bad)


def test_output_shape_takes_the_batch_and_refuses_data_dependent_axes():
    assert output_shape(["batch", 2], 8) == (8, 2)
    assert output_shape([None, 2, 256, 256], 3) == (3, 2, 256, 256)
    assert output_shape(["batch", "n"], 1) is None and output_shape([], 1) is None


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_io_binding_gives_session_runs_answers_at_every_batch_shape(precision):
    # the bound path (one binding per shape, reused) on the CPU provider, against plain session.run,
    # with shapes alternating so that a binding reused for the wrong shape would show
    art = load_bundle(None).artifact(precision=precision)
    rng = np.random.default_rng(7)
    with create_runner(art, RunnerOptions(threads=1)) as plain, \
            create_runner(art, RunnerOptions(threads=1, extra={"io_binding": True, "timing": True})) as bound:
        name = plain.inputs[0].name
        for n in (1, 3, 1, 2, 3):
            x = rng.standard_normal((n, 1, 256, 256)).astype(np.float32)
            want, got = plain.infer({name: x}), bound.infer({name: x})
            assert want.keys() == got.keys()
            for k in want:
                np.testing.assert_array_equal(got[k], want[k])
        assert len(bound._bound) == 3 and bound.report().details["io_binding"] == "on"
        assert set(bound.last_timings) == {"h2d_ms", "compute_ms", "d2h_ms"}
        assert all(v >= 0 for v in bound.last_timings.values())
        np.testing.assert_array_equal(bound.raw_call({name: x})()[next(iter(want))], want[next(iter(want))])
    assert "cuda" not in plain.report().details  # CPU rows carry no CUDA settings


def _cuda_provider() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_provider(), reason="this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_cuda_graphs_replay_the_right_graph_for_each_batch_shape(precision):
    # one captured graph per shape (gpu_graph_id): alternating shapes must give session.run's answers
    art = load_bundle(None).artifact(precision=precision)
    rng = np.random.default_rng(11)
    with create_runner(art, RunnerOptions(device="cuda", extra={"cuda": "iobinding=off,graph=off"})) as plain, \
            create_runner(art, RunnerOptions(device="cuda")) as fast:
        cuda = fast.report().details["cuda"]
        assert cuda["io_binding"] == "on" and cuda["pinned"] == "on", cuda
        name = plain.inputs[0].name
        for n in (1, 4, 1, 4, 2, 1):
            x = rng.standard_normal((n, 1, 256, 256)).astype(np.float32)
            want, got = plain.infer({name: x}), fast.infer({name: x})
            for k in want:
                np.testing.assert_allclose(got[k], want[k], atol=2e-3 if precision != "fp32" else 1e-5)


def test_a_graph_that_fails_at_run_time_leaves_the_runner_on_the_bound_path_without_it():
    # the provider captures in its first runs; when that fails, the call is answered without a graph
    art = load_bundle(None).artifact(precision="fp32")
    x = np.random.default_rng(3).standard_normal((2, 1, 256, 256)).astype(np.float32)
    with create_runner(art, RunnerOptions(threads=1)) as plain:
        want = plain.infer({plain.inputs[0].name: x})
    with create_runner(art, RunnerOptions(threads=1, extra={"io_binding": True})) as r:
        r._graph_on = True  # as on the CUDA provider with enable_cuda_graph

        def capture_fails(*a, **k):
            raise RuntimeError("operation not permitted when stream is capturing")

        r.session.run_with_iobinding = capture_fails
        got = r.infer({r.inputs[0].name: x})
        assert not r._graph_on and "capture or replay failed" in r._cuda_status["cuda_graph"]
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
        r._graph_on = False
        r.session.run_with_iobinding = capture_fails  # without a graph, a failure is the caller's error
        with pytest.raises(InferenceError, match="stream is capturing"):
            r.infer({r.inputs[0].name: x})
