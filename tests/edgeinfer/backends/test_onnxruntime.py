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
