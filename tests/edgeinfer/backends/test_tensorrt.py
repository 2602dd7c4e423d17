"""TensorRT backend.

On this machine (no GPU, no TensorRT) the real checks are: the backend says it is
unavailable and why, registry choice fails with that reason, importing the module does
not import tensorrt, and a plan is refused before anything is deserialized.

The runner's buffer handling (pinned/device buffers, H2D/execute/D2H, chunking, padding,
CUDA graph replay, timings, freeing) is exercised against a small fake of the TensorRT
and cuda-python APIs that really moves bytes between ctypes buffers.

On a GPU (``gpu`` marker; ``make test-gpu``, ``deploy/gpu-smoke.sh``) the same runner drives
the real GPU through real cuda-python: an engine stand-in whose "inference" is a device copy
lets pinned buffers, async copies, events, graph capture and replay run without a TensorRT
plan (no builder is needed), and the real lean runtime refuses plans it must not load. Real
plans built on the device run in the ``gpu`` tests of tests/export/test_trt_build.py.
"""
import ctypes
import hashlib
import subprocess
import sys
import types

import numpy as np
import pytest

import edgeinfer.backends.tensorrt as trtmod
from edgeinfer import trt_policy
from edgeinfer.backends import RunnerOptions, backend_for, create_runner, cuda, get_backend
from edgeinfer.backends.tensorrt import TensorRTBackend, TrtRunner
from edgeinfer.bundle import artifact_record, load_bundle, upsert_artifact, write_manifest
from edgeinfer.errors import BackendUnavailable, InferenceError, IntegrityError, MissingDependency
from edgeinfer.trt_policy import PlanIncompatible
from helpers import make_bundle

PLAN = b"FAKEPLAN" + bytes(range(200))


# --- a fake of the TensorRT and cuda-python APIs the runner uses -------------------------------
class FakeCudart:
    class cudaMemcpyKind:
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeThreadLocal = 2

    def __init__(self, devices=1):
        self.devices = devices
        self.mem = {}
        self.freed = []
        self.capturing = None
        self.graphs = {}
        self.launches = 0
        self.events = set()
        self.streams = set()
        self.calls = []

    def _alloc(self, n):
        buf = ctypes.create_string_buffer(max(int(n), 1))
        addr = ctypes.addressof(buf)
        self.mem[addr] = buf
        return 0, addr

    def cudaGetErrorName(self, err):
        return 0, b"cudaErrorFake"

    def cudaGetDeviceCount(self):
        return 0, self.devices

    def cudaSetDevice(self, i):
        return (0,)

    def cudaGetDeviceProperties(self, i):
        return 0, types.SimpleNamespace(name=b"Orin\0\0\0", major=8, minor=7, integrated=1)

    def cudaRuntimeGetVersion(self):
        return 0, 12060

    def cudaDriverGetVersion(self):
        return 0, 12060

    def cudaStreamCreate(self):
        self.streams.add(77)
        return 0, 77

    def cudaStreamDestroy(self, s):
        self.streams.discard(int(s))
        return (0,)

    def cudaStreamSynchronize(self, s):
        return (0,)

    def cudaMallocHost(self, n):
        return self._alloc(n)

    def cudaMalloc(self, n):
        return self._alloc(n)

    def cudaFree(self, p):
        self.mem.pop(p)
        self.freed.append(p)
        return (0,)

    cudaFreeHost = cudaFree

    def _op(self, fn):
        if self.capturing is not None:
            self.capturing.append(fn)
        else:
            fn()

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        self.calls.append(("memcpy", kind, n))
        self._op(lambda: ctypes.memmove(dst, src, n))
        return (0,)

    def cudaEventCreate(self):
        ev = len(self.events) + 100
        self.events.add(ev)
        return 0, ev

    def cudaEventDestroy(self, ev):
        self.events.discard(ev)
        return (0,)

    def cudaEventRecord(self, ev, stream):
        return (0,)

    def cudaEventElapsedTime(self, a, b):
        return 0, 0.25

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        ops, self.capturing = self.capturing, None
        gid = 1000 + len(self.graphs)
        self.graphs[gid] = ops
        return 0, gid

    def cudaGraphInstantiateWithFlags(self, graph, flags):
        return 0, ("exec", graph)

    def cudaGraphLaunch(self, graph_exec, stream):
        self.launches += 1
        for op in self.graphs[graph_exec[1]]:
            op()
        return (0,)

    def cudaGraphExecDestroy(self, e):
        return (0,)

    def cudaGraphDestroy(self, g):
        self.graphs.pop(g)
        return (0,)

    def cudaGetLastError(self):
        self.calls.append(("get_last_error",))
        return (0,)


def tiny_model(x):
    """What tests/helpers.tiny_onnx computes: mean -> Gemm(w=[4, 2], b=-2) -> sigmoid."""
    m = x.reshape(x.shape[0], -1).mean(axis=1, dtype=np.float64)
    logits = np.stack([4.0 * m - 2.0, 2.0 * m - 2.0], axis=1)
    return (1 / (1 + np.exp(-logits))).astype(np.float32)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addr = engine, {}, {}
        self.batches = []

    def set_input_shape(self, name, shape):
        lo, _opt, hi = self.engine.profile
        shape = tuple(shape)
        if not (len(shape) == 4 and lo[0] <= shape[0] <= hi[0] and shape[1:] == hi[1:]):
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name):
        if name == "image":
            return self.shapes.get("image", (-1, 1, 8, 8))
        return (self.shapes["image"][0], 2) if "image" in self.shapes else (-1, 2)

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr
        return True

    def execute_async_v3(self, stream):
        n = self.shapes["image"][0]
        src, dst = self.addr["image"], self.addr["probs"]

        def run():
            self.batches.append(n)
            x = np.frombuffer((ctypes.c_float * (n * 64)).from_address(src), dtype=np.float32).reshape(n, 1, 8, 8)
            out = tiny_model(x)
            ctypes.memmove(dst, out.ctypes.data, out.nbytes)

        self.engine.cudart._op(run)
        return True


class FakeEngine:
    context_class = FakeContext

    def __init__(self, cudart, profile):
        self.cudart, self.profile = cudart, profile
        self.num_io_tensors = 2
        self.contexts = []

    def get_tensor_name(self, i):
        return ["image", "probs"][i]

    def get_tensor_mode(self, name):
        return FakeTrt.TensorIOMode.INPUT if name == "image" else FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return "float"

    def get_tensor_shape(self, name):
        return (-1, 1, 8, 8) if name == "image" else (-1, 2)

    def get_tensor_profile_shape(self, name, index):
        return [list(s) for s in self.profile]

    def create_execution_context(self):
        ctx = self.context_class(self)
        self.contexts.append(ctx)
        return ctx


class FakeTrt(types.SimpleNamespace):
    __version__ = "10.3.0.30"
    engine_class = FakeEngine

    class TensorIOMode:
        INPUT, OUTPUT = 0, 1

    class ILogger:
        def __init__(self):
            pass

    def __init__(self, cudart, profile=((1, 1, 8, 8), (2, 1, 8, 8), (4, 1, 8, 8))):
        super().__init__()
        self.cudart, self.profile = cudart, profile
        self.deserialized = []
        self.loaded_runtimes = []
        self.runtimes = []
        self.engines = []
        fake = self

        class Runtime:
            num_DLA_cores = 2

            def __init__(self, logger):
                self.DLA_core = None
                self.engine_host_code_allowed = False
                fake.runtimes.append(self)

            def load_runtime(self, path):
                fake.loaded_runtimes.append(path)
                return Runtime(None)

            def deserialize_cuda_engine(self, data):
                fake.deserialized.append(bytes(data))
                if not bytes(data).startswith(b"FAKEPLAN"):
                    return None
                fake.engines.append(fake.engine_class(fake.cudart, fake.profile))
                return fake.engines[-1]

        self.Runtime = Runtime

    @staticmethod
    def nptype(t):
        return {"float": np.float32}[t]


@pytest.fixture
def fake(monkeypatch):
    cudart = FakeCudart()
    trt = FakeTrt(cudart)
    monkeypatch.setattr(cuda, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(cuda, "import_trt_runtime", lambda names=cuda.RUNTIMES: (trt, "tensorrt"))
    monkeypatch.setattr(cuda, "import_cudart", lambda: cudart)
    monkeypatch.setattr(trtmod, "_module_present", lambda name: True)
    trtmod.probe.cache_clear()
    yield types.SimpleNamespace(trt=trt, cudart=cudart)
    trtmod.probe.cache_clear()


def fake_device(**kw):
    d = {"tensorrt_version": "10.3.0.30", "cuda_version": "12.6", "gpu_name": "Orin", "compute_capability": "8.7",
         "platform": cuda.platform_tag(), "dla_cores": 2}
    d.update(kw)
    return d


def plan_bundle(tmp_path, plan_bytes=PLAN, **record_kw):
    """The tiny test bundle plus a tensorrt-plan artifact whose compatibility record fits the fake device."""
    d = make_bundle(tmp_path / "b", size=8)
    (d / "fp32.plan").write_bytes(plan_bytes)
    kw = dict(tensorrt_version="10.3.0.30", cuda_version="12.6", gpu_name="Orin", compute_capability="8.7",
              plan_sha256=hashlib.sha256(plan_bytes).hexdigest(), platform=cuda.platform_tag())
    kw.update(record_kw)
    compat = trt_policy.compatibility_record(**kw)
    rec = artifact_record(d, "fp32.plan", id="trt-fp32", precision="fp32", format="tensorrt-plan",
                          produced_by={"tool": "tests"}, source_artifact="fp32", compatibility=compat)
    m = load_bundle(d, verify=False).manifest
    write_manifest(d, upsert_artifact(m, rec))
    return d


def plan_artifact(d):
    return load_bundle(d).artifact(id="trt-fp32")


# --- the real machine: no TensorRT here ------------------------------------------------------
def test_unavailable_here_with_a_clear_reason():
    trtmod.probe.cache_clear()
    ok, why = TensorRTBackend.available()
    assert not ok
    assert "no TensorRT runtime is installed" in why and "tensorrt_lean" in why and "edgeinfer[trt]" in why


def test_registry_choice_fails_cleanly_with_that_reason(tmp_path):
    trtmod.probe.cache_clear()
    art = plan_artifact(plan_bundle(tmp_path))
    assert get_backend("trt") is TensorRTBackend
    with pytest.raises(BackendUnavailable) as exc:
        backend_for(art, RunnerOptions(device="cuda"), backend="tensorrt")
    assert "tensorrt: no TensorRT runtime is installed" in str(exc.value)
    # without a named backend every candidate says why it cannot run the plan
    with pytest.raises(BackendUnavailable) as exc:
        create_runner(art, RunnerOptions(device="cuda"))
    text = str(exc.value)
    assert "trt-fp32 (fp32, tensorrt-plan)" in text
    assert "onnxruntime: runs ONNX graphs, not tensorrt-plan" in text and "tensorrt: no TensorRT runtime" in text


def test_importing_the_backend_imports_no_tensorrt_or_cuda():
    code = ("import sys, edgeinfer.backends.tensorrt, edgeinfer.backends.cuda, edgeinfer.trt_policy; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'cuda', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_activation_without_tensorrt_names_the_extra(tmp_path):
    art = plan_artifact(plan_bundle(tmp_path))
    with pytest.raises(MissingDependency, match=r"edgeinfer\[trt\]"):
        TrtRunner(art).activate()


def test_changed_plan_is_refused_before_anything_else(tmp_path, monkeypatch):
    d = plan_bundle(tmp_path)
    art = plan_artifact(d)
    (d / "fp32.plan").write_bytes(PLAN[:-1] + b"\x00")
    monkeypatch.setattr(trtmod, "device_info", lambda *a: pytest.fail("device queried for a changed plan"))
    with pytest.raises(IntegrityError, match="changed after the bundle was loaded.*refusing to deserialize"):
        TrtRunner(art).activate()


def test_plan_without_record_is_refused(tmp_path, fake):
    d = make_bundle(tmp_path / "b", size=8)
    (d / "x.plan").write_bytes(PLAN)
    rec = artifact_record(d, "x.plan", id="trt-x", precision="fp32", format="tensorrt-plan", produced_by={})
    write_manifest(d, upsert_artifact(load_bundle(d, verify=False).manifest, rec))
    art = load_bundle(d).artifact(id="trt-x")
    with pytest.raises(IntegrityError, match="no compatibility record"):
        TrtRunner(art, RunnerOptions(device="cuda")).activate()
    assert fake.trt.deserialized == []
    assert "no compatibility record" in TensorRTBackend.accepts(art, RunnerOptions(device="cuda"))[1]


# --- accepts -------------------------------------------------------------------------------------
def test_accepts_only_plans_on_gpu_devices(tmp_path, fake):
    d = plan_bundle(tmp_path)
    b = load_bundle(d)
    plan, onnx = b.artifact(id="trt-fp32"), b.artifact(id="fp32")
    assert TensorRTBackend.accepts(plan, RunnerOptions(device="cuda")) == (True, "")
    assert TensorRTBackend.accepts(plan, RunnerOptions(device="tensorrt"))[0]
    ok, why = TensorRTBackend.accepts(onnx, RunnerOptions(device="cuda"))
    assert not ok and "not onnx" in why
    ok, why = TensorRTBackend.accepts(plan, RunnerOptions(device="cpu"))
    assert not ok and "device 'cpu'" in why
    ok, why = TensorRTBackend.accepts(plan, RunnerOptions(device="cuda", precision_hint="fp16"))
    assert not ok and "fixed at build time" in why


def test_accepts_explains_an_incompatible_plan(tmp_path, fake):
    art = plan_artifact(plan_bundle(tmp_path, compute_capability="8.6", gpu_name="RTX"))
    ok, why = TensorRTBackend.accepts(art, RunnerOptions(device="cuda"))
    assert not ok and "built for compute capability 8.6 (Ampere), this GPU is 8.7 (Orin)" in why
    with pytest.raises(BackendUnavailable, match="this GPU is 8.7"):
        backend_for(art, RunnerOptions(device="cuda"), backend="tensorrt")


def test_probe_with_the_fake(fake):
    assert TensorRTBackend.available() == (True, "")
    fake.cudart.devices = 0
    trtmod.probe.cache_clear()
    assert TensorRTBackend.available() == (False, "no CUDA GPU found")
    trtmod.probe.cache_clear()
    fake.trt.__version__ = "8.6.1"
    assert "too old" in TensorRTBackend.available()[1]


def test_probe_names_a_driver_older_than_cuda_python(fake, monkeypatch):
    # cuda-python 13 on a CUDA 12 driver (JetPack 6): every call answers cudaErrorInsufficientDriver
    fake.cudart.cudaGetDeviceCount = lambda: (35, 0)
    monkeypatch.setattr(cuda, "cuda_python_version", lambda: "13.0.1")
    trtmod.probe.cache_clear()
    ok, why = TensorRTBackend.available()
    assert not ok and "CUDA error 35" in why
    assert "cuda-python 13.0.1 is built for a newer CUDA than the NVIDIA driver: this driver supports CUDA 12.6" in why
    assert "cuda-python>=12.6,<13" in why
    trtmod.probe.cache_clear()


def test_device_info_from_cuda_properties(fake):
    info = trtmod.device_info()
    assert info == {"tensorrt_version": "10.3.0.30", "tensorrt_runtime": "tensorrt", "tensorrt_cuda": None,
                    "cuda_python": "12.6", "cuda_driver_version": "12.6",
                    "gpu_name": "Orin", "compute_capability": "8.7", "integrated": True, "dla_cores": 2,
                    "platform": cuda.platform_tag(), "device_id": 0}
    with pytest.raises(BackendUnavailable, match="device 3"):
        trtmod.device_info(3)


# --- the runner against the fake ---------------------------------------------------------------
def test_incompatible_plan_is_never_deserialized(tmp_path, fake):
    art = plan_artifact(plan_bundle(tmp_path, tensorrt_version="10.0.1.6"))
    with pytest.raises(PlanIncompatible) as exc:
        TrtRunner(art, RunnerOptions(device="cuda")).activate()
    assert exc.value.differences == ["built with TensorRT 10.0.1.6, this device has 10.3.0.30 (plans are not "
                                     "portable across TensorRT versions unless built version-compatible)"]
    assert fake.trt.deserialized == [] and fake.cudart.mem == {}


def test_runs_and_reports_what_ran(tmp_path, fake):
    art = plan_artifact(plan_bundle(tmp_path))
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    with create_runner(art, RunnerOptions(device="cuda"), backend="tensorrt") as r:
        assert [(t.name, t.shape, t.dtype) for t in r.inputs] == [("image", ("batch", 1, 8, 8), "float32")]
        assert [(t.name, t.shape) for t in r.outputs] == [("probs", ("batch", 2))]
        out = r.infer({"image": x})["probs"]
        rep = r.report()
    np.testing.assert_allclose(out, tiny_model(x), rtol=1e-6)
    assert fake.trt.deserialized == [PLAN]
    assert (rep.backend, rep.provider, rep.device, rep.precision) == ("tensorrt", "TensorRT 10.3.0.30", "Orin", "fp32")
    assert rep.details["batch_profile"] == [1, 4] and rep.details["cuda_graph"] == "off"
    assert rep.artifact_sha256 == art.sha256
    # everything allocated was freed, the stream destroyed
    assert fake.cudart.mem == {} and len(fake.cudart.freed) == 4 and fake.cudart.streams == set()


def test_large_batches_are_chunked_and_small_ones_padded(tmp_path, monkeypatch):
    cudart = FakeCudart()
    trt = FakeTrt(cudart, profile=((2, 1, 8, 8), (4, 1, 8, 8), (4, 1, 8, 8)))
    monkeypatch.setattr(cuda, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(cuda, "import_trt_runtime", lambda names=cuda.RUNTIMES: (trt, "tensorrt"))
    monkeypatch.setattr(cuda, "import_cudart", lambda: cudart)
    art = plan_artifact(plan_bundle(tmp_path))
    x = np.random.default_rng(1).random((11, 1, 8, 8), dtype=np.float32)
    with TrtRunner(art, RunnerOptions(device="cuda")) as r:
        out = r.infer({"image": x})["probs"]        # 4 + 4 + 3
        one = r.infer({"image": x[:1]})["probs"]    # padded to the profile's min batch 2
    np.testing.assert_allclose(out, tiny_model(x), rtol=1e-6)
    np.testing.assert_allclose(one, tiny_model(x[:1]), rtol=1e-6)
    assert out.shape == (11, 2) and one.shape == (1, 2)
    assert trt.engines[0].contexts[0].batches == [4, 4, 3, 2]


def test_input_checks(tmp_path, fake):
    art = plan_artifact(plan_bundle(tmp_path))
    with TrtRunner(art, RunnerOptions(device="cuda")) as r:
        with pytest.raises(InferenceError, match="is float64; the engine takes float32"):
            r.infer({"image": np.zeros((1, 1, 8, 8))})
        with pytest.raises(InferenceError, match=r"shape \(1, 1, 9, 8\); the engine takes \(batch, 1, 8, 8\)"):
            r.infer({"image": np.zeros((1, 1, 9, 8), np.float32)})
        with pytest.raises(InferenceError, match="inputs"):
            r.infer({"x": np.zeros((1, 1, 8, 8), np.float32)})


def test_cuda_graph_replays_with_new_data(tmp_path, fake):
    art = plan_artifact(plan_bundle(tmp_path))
    rng = np.random.default_rng(2)
    with TrtRunner(art, RunnerOptions(device="cuda", extra={"cuda_graph": True})) as r:
        xs = [rng.random((2, 1, 8, 8), dtype=np.float32) for _ in range(3)]
        outs = [r.infer({"image": x})["probs"] for x in xs]
        assert fake.cudart.launches == 2  # first call warm + capture, then two replays
        other = rng.random((3, 1, 8, 8), dtype=np.float32)
        np.testing.assert_allclose(r.infer({"image": other})["probs"], tiny_model(other), rtol=1e-6)
        assert len(fake.cudart.graphs) == 2  # one graph per input shape
        assert r.report().details["cuda_graph"] == "on"
    for x, o in zip(xs, outs):
        np.testing.assert_allclose(o, tiny_model(x), rtol=1e-6)
    assert fake.cudart.graphs == {}


def test_cuda_graph_capture_failure_is_reported_not_fatal(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(fake.cudart, "cudaStreamBeginCapture", lambda s, m: (900,))
    art = plan_artifact(plan_bundle(tmp_path))
    x = np.ones((2, 1, 8, 8), np.float32)
    with TrtRunner(art, RunnerOptions(device="cuda", extra={"cuda_graph": True})) as r:
        r.infer({"image": x})
        np.testing.assert_allclose(r.infer({"image": x})["probs"], tiny_model(x), rtol=1e-6)
        status = r.report().details["cuda_graph"]
    assert status.startswith("off: capture failed") and "cudaErrorFake" in status


def test_a_capture_that_fails_midway_leaves_no_graph_and_no_sticky_error(tmp_path, fake):
    # execute_async_v3 refuses while the stream is capturing; the capture still ends and
    # yields a (partial) graph, which must be destroyed, and the error cleared (as trtexec does)
    art = plan_artifact(plan_bundle(tmp_path))
    x = np.random.default_rng(4).random((2, 1, 8, 8), dtype=np.float32)
    with TrtRunner(art, RunnerOptions(device="cuda", extra={"cuda_graph": True})) as r:
        ctx = fake.trt.engines[-1].contexts[-1]
        real = ctx.execute_async_v3
        ctx.execute_async_v3 = lambda stream: False if fake.cudart.capturing is not None else real(stream)
        r.infer({"image": x})
        assert fake.cudart.graphs == {} and r._graphs == {}
        assert ("get_last_error",) in fake.cudart.calls
        assert r.report().details["cuda_graph"].startswith("off: capture failed (TensorRT execute_async_v3 failed")
        np.testing.assert_allclose(r.infer({"image": x})["probs"], tiny_model(x), rtol=1e-6)  # the plain path
        assert fake.cudart.launches == 0


def test_timings_for_benchmarks(tmp_path, fake):
    art = plan_artifact(plan_bundle(tmp_path))
    with TrtRunner(art, RunnerOptions(device="cuda", extra={"timing": True})) as r:
        r.infer({"image": np.ones((2, 1, 8, 8), np.float32)})
        assert r.last_timings == {"h2d_ms": 0.25, "compute_ms": 0.25, "d2h_ms": 0.25}
        r.infer({"image": np.ones((6, 1, 8, 8), np.float32)})  # two chunks: summed
        assert r.last_timings == {"h2d_ms": 0.5, "compute_ms": 0.5, "d2h_ms": 0.5}
        assert r.report().details["timings_ms"]["compute_ms"] == 0.5
    assert fake.cudart.events == set()


def test_raw_call_is_the_bare_execute(tmp_path, fake):
    art = plan_artifact(plan_bundle(tmp_path))
    x = np.random.default_rng(3).random((2, 1, 8, 8), dtype=np.float32)
    with TrtRunner(art, RunnerOptions(device="cuda")) as r:
        call = r.raw_call({"image": x})
        fake.cudart.calls.clear()
        (probs,) = call()
        np.testing.assert_allclose(probs, tiny_model(x), rtol=1e-6)
        assert [c[1] for c in fake.cudart.calls] == [1, 2]  # one H2D, one D2H: nothing else per call
        with pytest.raises(InferenceError, match="profile 1..4"):
            r.raw_call({"image": np.zeros((5, 1, 8, 8), np.float32)})
    # the outputs are the caller's: still readable after the pinned buffers are freed
    assert fake.cudart.mem == {}
    np.testing.assert_allclose(probs, tiny_model(x), rtol=1e-6)


def test_undeserializable_plan_frees_everything(tmp_path, fake):
    art = plan_artifact(plan_bundle(tmp_path, plan_bytes=b"NOTAPLAN"))
    with pytest.raises(BackendUnavailable, match="could not deserialize"):
        TrtRunner(art, RunnerOptions(device="cuda")).activate()
    assert fake.cudart.mem == {}


def test_dla_and_version_compatible_settings_reach_the_runtime(tmp_path, fake):
    art = plan_artifact(plan_bundle(tmp_path, dla_core=1, version_compatible=True, tensorrt_version="10.0.1.6"))
    with TrtRunner(art, RunnerOptions(device="cuda")) as r:
        rep = r.report()
    rt = fake.trt.runtimes[-1]
    assert rt.DLA_core == 1 and rt.engine_host_code_allowed is True
    assert rep.device == "Orin DLA core 1" and rep.details["version_compatible"] is True
    assert any("lean runtime" in w for w in rep.details["warnings"])


def test_host_code_stays_forbidden_for_ordinary_plans(tmp_path, fake):
    art = plan_artifact(plan_bundle(tmp_path))
    with TrtRunner(art, RunnerOptions(device="cuda")):
        pass
    assert fake.trt.runtimes[-1].engine_host_code_allowed is False


def test_failed_allocation_frees_what_was_allocated(tmp_path, fake, monkeypatch):
    calls = {"n": 0}
    real = fake.cudart.cudaMalloc

    def flaky(n):
        calls["n"] += 1
        return (2, 0) if calls["n"] == 2 else real(n)

    monkeypatch.setattr(fake.cudart, "cudaMalloc", flaky)
    art = plan_artifact(plan_bundle(tmp_path))
    with pytest.raises(InferenceError, match=r"cudaMalloc\(\d+\) failed: CUDA error 2"):
        TrtRunner(art, RunnerOptions(device="cuda")).activate()
    assert fake.cudart.mem == {} and fake.cudart.streams == set()


# --- the lean runtime ---------------------------------------------------------------------------
@pytest.fixture
def lean(fake, monkeypatch):
    monkeypatch.setattr(cuda, "import_trt_runtime", lambda names=cuda.RUNTIMES: (fake.trt, "tensorrt_lean"))
    return fake


def test_the_lean_runtime_never_sees_an_ordinary_plan(tmp_path, lean):
    art = plan_artifact(plan_bundle(tmp_path))
    with pytest.raises(PlanIncompatible, match="runs version-compatible plans only"):
        TrtRunner(art, RunnerOptions(device="cuda")).activate()
    assert lean.trt.deserialized == [] and lean.cudart.mem == {}
    ok, why = TensorRTBackend.accepts(art, RunnerOptions(device="cuda"))
    assert not ok and "tensorrt_lean" in why


def test_the_lean_runtime_runs_a_version_compatible_plan_and_says_so(tmp_path, lean):
    art = plan_artifact(plan_bundle(tmp_path, version_compatible=True))
    x = np.random.default_rng(5).random((2, 1, 8, 8), dtype=np.float32)
    with TrtRunner(art, RunnerOptions(device="cuda")) as r:
        np.testing.assert_allclose(r.infer({"image": x})["probs"], tiny_model(x), rtol=1e-6)
        rep = r.report()
    assert rep.provider == "TensorRT 10.3.0.30 (lean runtime)" and rep.details["runtime"] == "tensorrt_lean"
    assert lean.trt.runtimes[-1].engine_host_code_allowed is True


def test_a_plan_without_its_lean_runtime_loads_one_on_the_full_runtime(tmp_path, fake, monkeypatch):
    art = plan_artifact(plan_bundle(tmp_path, version_compatible=True, lean_runtime_embedded=False))
    monkeypatch.setattr(cuda, "find_lean_library", lambda: None)
    with pytest.raises(BackendUnavailable, match="no libnvinfer_lean library was found"):
        TrtRunner(art, RunnerOptions(device="cuda")).activate()
    assert fake.trt.deserialized == [] and fake.cudart.mem == {}
    monkeypatch.setattr(cuda, "find_lean_library", lambda: "/opt/trt/libnvinfer_lean.so.10")
    with TrtRunner(art, RunnerOptions(device="cuda")) as r:
        r.infer({"image": np.ones((1, 1, 8, 8), np.float32)})
    assert fake.trt.loaded_runtimes == ["/opt/trt/libnvinfer_lean.so.10"]
    # the runtime load_runtime returned is the one that deserialized the plan, host code allowed
    assert fake.trt.runtimes[-1].engine_host_code_allowed is True and len(fake.trt.deserialized) == 1


# --- on a real GPU: real cuda-python, an engine whose inference is a device copy -------------------------
class CopyContext(FakeContext):
    """execute_async_v3 enqueues one device-to-device copy of the input on the runner's stream
    (or, with ``sync``, a synchronous cudaMemcpy: legal outside a capture, refused inside one)."""

    def get_tensor_shape(self, name):
        n = self.shapes.get("image", (-1,))[0]
        return (n, 1, 8, 8) if name == "image" else (n, 64)

    def execute_async_v3(self, stream):
        cudart, n = self.engine.cudart, self.shapes["image"][0]
        d2d = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        nbytes = n * 64 * 4
        if self.engine.sync:
            err = cudart.cudaMemcpy(self.addr["probs"], self.addr["image"], nbytes, d2d)
        else:
            err = cudart.cudaMemcpyAsync(self.addr["probs"], self.addr["image"], nbytes, d2d, stream)
        return int(getattr(err[0], "value", err[0])) == 0


class CopyEngine(FakeEngine):
    context_class = CopyContext
    sync = False

    def get_tensor_shape(self, name):
        return (-1, 1, 8, 8) if name == "image" else (-1, 64)


def copy_runtime(monkeypatch, *, sync=False):
    """(fake TensorRT over the real cudart, device_info of the real GPU), installed for the runner."""
    cudart = cuda.import_cudart()
    engine = type("SyncCopyEngine" if sync else "CopyEngine", (CopyEngine,), {"sync": sync})
    trt = FakeTrt(cudart)
    trt.engine_class = engine
    monkeypatch.setattr(cuda, "import_trt_runtime", lambda names=cuda.RUNTIMES: (trt, "tensorrt"))
    return trt, cuda.device_info(0, (trt, "tensorrt"))


def real_plan(tmp_path, dev, **kw):
    return plan_artifact(plan_bundle(tmp_path, tensorrt_version=dev["tensorrt_version"], gpu_name=dev["gpu_name"],
                                     compute_capability=dev["compute_capability"], **kw))


@pytest.mark.gpu
def test_the_runner_drives_a_real_gpu(tmp_path, monkeypatch):
    _trt, dev = copy_runtime(monkeypatch)
    assert cuda.gpu_count() >= 1 and dev["gpu_name"] and dev["compute_capability"][0].isdigit()
    art = real_plan(tmp_path, dev)
    rng = np.random.default_rng()
    x, y, z = (rng.random((n, 1, 8, 8), dtype=np.float32) for n in (4, 4, 6))
    with TrtRunner(art, RunnerOptions(device="cuda", extra={"cuda_graph": True, "timing": True})) as r:
        out_x = r.infer({"image": x})["probs"]            # the ordinary path, then the capture
        plain = dict(r.last_timings)
        out_y = r.infer({"image": y})["probs"]            # the graph replays, reading y
        replay = dict(r.last_timings)
        out_z = r.infer({"image": z})["probs"]            # batch 6 > profile 4: chunks of 4 and 2
        (raw,) = r.raw_call({"image": y})()
        rep = r.report()
    np.testing.assert_array_equal(out_x, x.reshape(4, 64))
    np.testing.assert_array_equal(out_y, y.reshape(4, 64))
    np.testing.assert_array_equal(out_z, z.reshape(6, 64))
    np.testing.assert_array_equal(raw, y.reshape(4, 64))  # a copy: still valid after the buffers are gone
    assert set(plain) == {"h2d_ms", "compute_ms", "d2h_ms"} and all(v >= 0 for v in plain.values())
    assert set(replay) == {"graph_ms"} and replay["graph_ms"] > 0
    assert rep.details["cuda_graph"] == "on" and rep.device == dev["gpu_name"]


@pytest.mark.gpu
def test_a_failed_capture_on_a_real_gpu_leaves_no_graph_and_no_error(tmp_path, monkeypatch):
    # a synchronous copy inside a thread-local capture is refused by CUDA and invalidates it
    _trt, dev = copy_runtime(monkeypatch, sync=True)
    art = real_plan(tmp_path, dev)
    rng = np.random.default_rng()
    x, y = (rng.random((2, 1, 8, 8), dtype=np.float32) for _ in range(2))
    with TrtRunner(art, RunnerOptions(device="cuda", extra={"cuda_graph": True})) as r:
        out_x = r.infer({"image": x})["probs"]
        status = r.report().details["cuda_graph"]
        graphs = dict(r._graphs)
        out_y = r.infer({"image": y})["probs"]  # no error left behind: the ordinary path works
    assert status.startswith("off: capture failed"), status
    assert graphs == {}
    np.testing.assert_array_equal(out_x, x.reshape(2, 64))
    np.testing.assert_array_equal(out_y, y.reshape(2, 64))


@pytest.mark.gpu
def test_the_real_lean_runtime_refuses_what_it_must_not_load(tmp_path, monkeypatch):
    lean = pytest.importorskip("tensorrt_lean", reason="the lean runtime is not installed (the trt-lean extra)")
    runtime = cuda.import_trt_runtime(("tensorrt_lean",))
    monkeypatch.setattr(cuda, "import_trt_runtime", lambda names=cuda.RUNTIMES: runtime)
    dev = cuda.device_info(0, runtime)
    assert dev["tensorrt_runtime"] == "tensorrt_lean" and dev["tensorrt_version"] == lean.__version__
    assert dev["tensorrt_cuda"] == cuda.tensorrt_cuda_major(cuda.installed_distributions(), "tensorrt_lean")
    trtmod.probe.cache_clear()
    try:
        assert TensorRTBackend.available() == (True, "")
    finally:
        trtmod.probe.cache_clear()
    kw = dict(tensorrt_cuda=dev["tensorrt_cuda"])
    # an ordinary plan: refused by the policy, never handed to TensorRT
    art = real_plan(tmp_path / "ordinary", dev, **kw)
    with pytest.raises(PlanIncompatible, match="runs version-compatible plans only"):
        TrtRunner(art, RunnerOptions(device="cuda")).activate()
    # a version-compatible record over bytes that are no plan: TensorRT refuses them, the runner says so
    art = real_plan(tmp_path / "garbage", dev, plan_bytes=b"FAKEPLAN but not a TensorRT plan " * 64,
                    version_compatible=True, **kw)
    runner = TrtRunner(art, RunnerOptions(device="cuda"))
    with pytest.raises(BackendUnavailable, match="TensorRT could not deserialize plan trt-fp32"):
        runner.activate()
    assert not runner.is_active
