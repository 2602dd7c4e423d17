"""``edgeinfer build``: TensorRT plan building.

Without a GPU: argument checks, the missing-extra error, and the whole build flow against a
fake of the TensorRT builder API (which flags, which profile, which graph, the timing cache
round trip, the calibration cache keyed so a stale one is never reused, the manifest
record). With a GPU (``gpu`` marker, run on a Jetson or GPU host): real fp32/fp16/int8
engines of the phantom bundle compared with ONNX Runtime.
"""
import ctypes
import json
import shutil
import types
from argparse import Namespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeinfer import trt_policy
from edgeinfer.backends import cuda
from edgeinfer.bundle import artifact_record, load_bundle, upsert_artifact, write_manifest
from edgeinfer.errors import ExportError, MissingDependency, PrecisionNotValidated
from edgeinfer.trt_policy import PolicyError
from edgeinfer_export import trt_build
from helpers import make_bundle

DEV = {"tensorrt_version": "10.3.0.30", "tensorrt_runtime": "tensorrt", "tensorrt_cuda": "12", "cuda_python": "12.6",
       "cuda_driver_version": "12.6", "gpu_name": "Orin",
       "compute_capability": "8.7", "integrated": True, "dla_cores": 2, "platform": "linux-aarch64",
       "device_id": 0}


# --- a fake of the TensorRT builder API -----------------------------------------------------------
class FakeNetwork:
    def __init__(self, flags):
        self.flags, self.inputs, self.outputs = flags, [], []

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, i):
        return self.inputs[i]


class FakeParser:
    fail_with: list = []
    vc_plugins: list = []

    def get_used_vc_plugin_libraries(self):
        return list(FakeParser.vc_plugins)

    def __init__(self, network, logger):
        self.network, self.flags, self.errors = network, [], []

    def set_flag(self, f):
        self.flags.append(f)

    def parse_from_file(self, path):
        if FakeParser.fail_with:
            self.errors = list(FakeParser.fail_with)
            return False
        m = onnx.load(path)
        FakeBuildTrt.last["parsed"] = path
        for vi in m.graph.input:
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
            self.network.inputs.append(types.SimpleNamespace(name=vi.name, shape=tuple(dims)))
        self.network.outputs = [o.name for o in m.graph.output]
        return True

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]


class FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class FakeTimingCache:
    def __init__(self, data):
        self.data = bytes(data)

    def serialize(self):
        return self.data + b"+"


class FakeConfig:
    def __init__(self):
        self.flags, self.cleared, self.pools, self.profiles = set(), set(), {}, []
        self.builder_optimization_level = 3
        self.hardware_compatibility_level = 0
        self.default_device_type = 0
        self.DLA_core = -1
        self.int8_calibrator = None
        self.calibration_profile = None
        self.cache = None

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def set_flag(self, f):
        self.flags.add(f)

    def clear_flag(self, f):
        self.cleared.add(f)

    def add_optimization_profile(self, p):
        self.profiles.append(p)
        return len(self.profiles) - 1

    def set_calibration_profile(self, p):
        self.calibration_profile = p

    def create_timing_cache(self, data):
        return FakeTimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache.data.startswith(b"BAD"):
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


class FakeBuildTrt(types.SimpleNamespace):
    last: dict = {}

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1  # its 10.x value (11.x moved it to 0 and ignores it)

    class BuilderFlag:
        FP16, INT8, GPU_FALLBACK, TF32, VERSION_COMPATIBLE, EXCLUDE_LEAN_RUNTIME = 0, 1, 3, 6, 13, 14

    class MemoryPoolType:
        WORKSPACE = 0

    class HardwareCompatibilityLevel:
        NONE, AMPERE_PLUS, SAME_COMPUTE_CAPABILITY = 0, 1, 2

    class DeviceType:
        GPU, DLA = 0, 1

    class OnnxParserFlag:
        NATIVE_INSTANCENORM = 0

    class ILogger:
        def __init__(self):
            pass

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    OnnxParser = FakeParser

    def __init__(self, version="10.3.0.30", fail_build=False):
        super().__init__()
        self.__version__ = version
        FakeBuildTrt.last = {}
        trt = self
        if version.startswith("11"):
            self.BuilderFlag = types.SimpleNamespace(GPU_FALLBACK=3, TF32=6, VERSION_COMPATIBLE=13)
            self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)

        class Builder:
            num_DLA_cores = 2
            max_DLA_batch_size = 4096

            def __init__(self, logger):
                self.logger = logger

            def create_network(self, flags):
                FakeBuildTrt.last["network_flags"] = flags
                return FakeNetwork(flags)

            def create_builder_config(self):
                FakeBuildTrt.last["config"] = FakeConfig()
                return FakeBuildTrt.last["config"]

            def create_optimization_profile(self):
                return FakeProfile()

            def build_serialized_network(self, network, config):
                if fail_build:
                    self.logger.log(1, "could not find any implementation for node X")
                    return None
                calib = config.int8_calibrator
                if calib is not None:
                    def call(fn, *args):  # TensorRT's wrapper: print the exception, carry on with None
                        try:
                            return fn(*args)
                        except Exception as exc:  # noqa: BLE001
                            FakeBuildTrt.last.setdefault("swallowed", []).append(exc)
                            return None
                    if call(calib.read_calibration_cache) is None:
                        fed = 0
                        while fed < FakeBuildTrt.last.get("take_batches", 99) and \
                                call(calib.get_batch, ["image"]) is not None:
                            fed += 1
                        call(calib.write_calibration_cache, memoryview(b"TRT-100300-EntropyCalibration2\nimage: 1\n"))
                io = [i.name for i in network.inputs] + network.outputs
                return memoryview(b"FAKEPLAN" + json.dumps({"io": io, "flags": sorted(config.flags)}).encode())

        class Runtime:
            def __init__(self, logger):
                self.DLA_core = None
                self.engine_host_code_allowed = False
                trt.last["runtime"] = self

            def load_runtime(self, path):
                trt.last["lean_library"] = path
                return Runtime(None)

            def deserialize_cuda_engine(self, data):
                io = json.loads(bytes(data)[8:])["io"]
                return types.SimpleNamespace(num_io_tensors=len(io), get_tensor_name=lambda i: io[i])

        self.Builder, self.Runtime = Builder, Runtime


class FakeCalibCudart:
    class cudaMemcpyKind:
        cudaMemcpyHostToDevice = 1

    def __init__(self):
        self.mem, self.copies = {}, 0

    def cudaMalloc(self, n):
        buf = ctypes.create_string_buffer(n)
        self.mem[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    def cudaMemcpy(self, dst, src, n, kind):
        ctypes.memmove(dst, src, n)
        self.copies += 1
        return (0,)

    def cudaFree(self, p):
        self.mem.pop(p)
        return (0,)


@pytest.fixture
def fake(monkeypatch):
    def install(version="10.3.0.30", device=None, fail_build=False):
        trt = FakeBuildTrt(version, fail_build)
        cudart = FakeCalibCudart()
        monkeypatch.setattr(trt_build, "_trt", lambda: trt)
        monkeypatch.setattr(cuda, "import_cudart", lambda: cudart)
        monkeypatch.setattr(trt_build, "device_info",
                            lambda device_id=0, runtime=None: dict(device or DEV, tensorrt_version=version))
        return types.SimpleNamespace(trt=trt, cudart=cudart)

    FakeParser.fail_with, FakeParser.vc_plugins = [], []
    yield install
    FakeParser.fail_with, FakeParser.vc_plugins = [], []


def qdq_onnx(path, *, zero_point=0, size=32):
    """image -> Q -> DQ -> GlobalAveragePool -> Flatten -> Gemm -> Sigmoid: a tiny explicitly quantized graph."""
    w = np.array([[4.0, 2.0]], np.float32)
    b = np.array([-2.0, -2.0], np.float32)
    inits = [numpy_helper.from_array(np.array(0.01, np.float32), "s"),
             numpy_helper.from_array(np.array(zero_point, np.int8), "zp"),
             numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    nodes = [helper.make_node("QuantizeLinear", ["image", "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"]),
             helper.make_node("GlobalAveragePool", ["dq"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["probs"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                           ["batch", 1, size, size])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def add_graph(d, file, precision, *, validation=None, maker=None, **kw):
    if maker:
        maker(d / file, **kw)
    else:
        shutil.copy(d / "model.onnx", d / file)
    rec = artifact_record(d, file, id=precision, precision=precision, format="onnx", produced_by={"tool": "tests"},
                          source_artifact="fp32", validation=validation)
    write_manifest(d, upsert_artifact(load_bundle(d, verify=False).manifest, rec))


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path / "bundle")


# --- no TensorRT here ----------------------------------------------------------------------------
def test_build_without_tensorrt_names_the_extra(bundle):
    with pytest.raises(MissingDependency, match=r"edgeinfer build.*pip install 'edgeinfer\[trt\]'"):
        trt_build.build_engine(bundle, "fp32")


@pytest.mark.parametrize("kw, match", [(dict(batch=(4, 2, 8)), "min <= opt <= max"),
                                       (dict(workspace_mb=0), "workspace"),
                                       (dict(builder_optimization_level=-1), "optimisation level"),
                                       (dict(calibration="nope.txt"), "expected an existing .npy")])
def test_arguments_are_checked_before_tensorrt_is_needed(bundle, kw, match):
    with pytest.raises((PolicyError, trt_build.UsageError), match=match):
        trt_build.build_engine(bundle, "fp32", **kw)
    with pytest.raises(PolicyError, match="precision 'fp64'"):
        trt_build.build_engine(bundle, "fp64")


def test_cli_parses_batch_and_reports_errors(bundle):
    import argparse

    p = argparse.ArgumentParser()
    trt_build.add_arguments(p)
    args = p.parse_args([str(bundle), "--precision", "fp16", "--batch", "8,4,1"])
    with pytest.raises(PolicyError, match="min <= opt <= max"):
        trt_build.cli_build(args)
    args = p.parse_args([str(bundle), "--precision", "fp32", "--dla-core", "0", "--batch", "4", "--workspace", "512"])
    assert (args.dla_core, args.batch, args.workspace, args.timing_cache) == (0, "4", 512, trt_build.AUTO)
    with pytest.raises(MissingDependency):
        trt_build.cli_build(args)


# --- the build flow against the fake ---------------------------------------------------------
def test_fp32_build_writes_plan_and_record(bundle, fake, tmp_path):
    fake()  # installs the fake builder
    tc = tmp_path / "timing.cache"
    tc.write_bytes(b"OLD")
    rec = trt_build.build_engine(bundle, "fp32", workspace_mb=256, batch=(1, 4, 8), timing_cache=tc,
                                 builder_optimization_level=4)
    last = FakeBuildTrt.last
    cfg = last["config"]
    assert last["network_flags"] == 1 << 1  # STRONGLY_TYPED looked up by name
    assert cfg.pools == {0: 256 << 20} and cfg.cleared == {6} and cfg.flags == set()  # TF32 cleared
    assert cfg.builder_optimization_level == 4
    assert cfg.profiles[0].shapes == {"image": ((1, 1, 32, 32), (4, 1, 32, 32), (8, 1, 32, 32))}
    assert tc.read_bytes() == b"OLD+"  # loaded, used, saved back
    assert last["parsed"].endswith("model.onnx")
    assert (rec["id"], rec["file"], rec["format"], rec["precision"], rec["source_artifact"]) == \
        ("trt-fp32", "fp32.plan", "tensorrt-plan", "fp32", "fp32")
    c = rec["compatibility"]
    assert c == {"tensorrt_version": "10.3.0.30", "tensorrt_cuda": "12", "cuda_version": "12.6", "gpu_name": "Orin",
                 "compute_capability": "8.7", "dla_core": None, "hardware_compatibility": "none",
                 "version_compatible": False, "lean_runtime_embedded": None, "plan_sha256": rec["sha256"],
                 "platform": "linux-aarch64"}
    pb = rec["produced_by"]
    assert pb["tool"] == "edgeinfer build" and pb["batch"] == [1, 4, 8] and pb["build_plan"]["graph"] == "fp32"
    # the bundle still verifies, with the plan listed
    b = load_bundle(bundle)
    art = b.artifact(id="trt-fp32")
    assert art.path.read_bytes().startswith(b"FAKEPLAN") and art.record["compatibility"] == c
    assert sorted(p.name for p in bundle.iterdir()) == ["fp32.plan", "manifest.json", "model.onnx"]
    assert trt_policy.check_compatibility(c, DEV) == []


def test_rebuild_replaces_the_plan(bundle, fake, tmp_path):
    fake()
    first = trt_build.build_engine(bundle, "fp32", timing_cache=None)
    second = trt_build.build_engine(bundle, "fp32", batch=(1, 1, 2), timing_cache=None)
    m = load_bundle(bundle).manifest
    assert [a["id"] for a in m["artifacts"]] == ["fp32", "trt-fp32"]
    assert second["produced_by"]["batch"] == [1, 1, 2] and first["id"] == second["id"]


def test_mismatched_timing_cache_is_replaced(bundle, fake, tmp_path):
    fake()
    tc = tmp_path / "t.cache"
    tc.write_bytes(b"BAD")
    trt_build.build_engine(bundle, "fp32", timing_cache=tc)
    assert tc.read_bytes() == b"+"


def test_auto_timing_cache_lives_outside_the_bundle(bundle, fake, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    fake()
    trt_build.build_engine(bundle, "fp32")
    files = list((tmp_path / "xdg" / "edgeinfer" / "tensorrt").iterdir())
    assert [p.name for p in files] == ["timing-trt10.3.0.30-sm87-orin.cache"]


def test_fp16_needs_the_fp16_graph(bundle, fake):
    fake()
    with pytest.raises(ExportError, match="no artifact with precision=fp16.*produce it first"):
        trt_build.build_engine(bundle, "fp16", timing_cache=None)
    add_graph(bundle, "fp16.onnx", "fp16")
    rec = trt_build.build_engine(bundle, "fp16", timing_cache=None)
    assert FakeBuildTrt.last["parsed"].endswith("fp16.onnx") and rec["source_artifact"] == "fp16"
    assert FakeBuildTrt.last["config"].flags == set() and FakeBuildTrt.last["network_flags"] == 2


def test_int8_from_the_qdq_graph(bundle, fake):
    fake()
    add_graph(bundle, "int8.onnx", "int8", maker=qdq_onnx)
    rec = trt_build.build_engine(bundle, "int8", timing_cache=None)
    assert FakeBuildTrt.last["parsed"].endswith("int8.onnx") and rec["id"] == "trt-int8"
    assert FakeBuildTrt.last["config"].int8_calibrator is None


def test_int8_asymmetric_or_unquantized_graph_is_refused(tmp_path, fake):
    fake()
    d = make_bundle(tmp_path / "a")
    add_graph(d, "int8.onnx", "int8", maker=qdq_onnx, zero_point=3)
    with pytest.raises(ExportError, match="int8-asymmetric.*symmetric"):
        trt_build.build_engine(d, "int8", timing_cache=None)
    d = make_bundle(tmp_path / "b")
    add_graph(d, "int8.onnx", "int8")
    with pytest.raises(ExportError, match="no Q/DQ nodes"):
        trt_build.build_engine(d, "int8", timing_cache=None)


def test_failed_accuracy_gate_is_never_built(bundle, fake):
    fake()
    add_graph(bundle, "fp16.onnx", "fp16", validation={"passed": False})
    with pytest.raises(PrecisionNotValidated, match="failed its accuracy gate"):
        trt_build.build_engine(bundle, "fp16", timing_cache=None)


def test_trt11_build_is_strongly_typed_without_flags(bundle, fake):
    fake(version="11.4.0.106", device=dict(DEV, integrated=False, platform="linux-x86_64"))
    add_graph(bundle, "fp16.onnx", "fp16")
    rec = trt_build.build_engine(bundle, "fp16", timing_cache=None)
    assert FakeBuildTrt.last["network_flags"] == 0 and FakeBuildTrt.last["config"].flags == set()
    assert rec["compatibility"]["tensorrt_version"] == "11.4.0.106"
    with pytest.raises(PolicyError, match="no INT8 calibrators"):
        trt_build.build_engine(bundle, "int8", calibration=np.zeros((8, 1, 32, 32), np.float32))


def test_dla_build(bundle, fake):
    fake()
    add_graph(bundle, "fp16.onnx", "fp16")
    with pytest.raises(PolicyError, match="dynamic dimensions"):
        trt_build.build_engine(bundle, "fp16", dla_core=0, timing_cache=None)
    rec = trt_build.build_engine(bundle, "fp16", dla_core=1, batch=(4, 4, 4), timing_cache=None)
    cfg = FakeBuildTrt.last["config"]
    assert cfg.default_device_type == FakeBuildTrt.DeviceType.DLA and cfg.DLA_core == 1
    assert cfg.flags == {FakeBuildTrt.BuilderFlag.GPU_FALLBACK, FakeBuildTrt.BuilderFlag.FP16}
    assert FakeBuildTrt.last["runtime"].DLA_core == 1  # the check deserialization targets the same core
    assert (rec["id"], rec["file"], rec["compatibility"]["dla_core"]) == ("trt-fp16-dla1", "fp16-dla1.plan", 1)
    with pytest.raises(PolicyError, match="FP16 and INT8 only"):
        trt_build.build_engine(bundle, "fp32", dla_core=0, batch=(4, 4, 4))


def test_compatibility_options_reach_the_config(bundle, fake):
    fake(device=dict(DEV, integrated=False, platform="linux-x86_64", compute_capability="8.6", dla_cores=0))
    rec = trt_build.build_engine(bundle, "fp32", hardware_compat="ampere_plus", version_compat=True,
                                 timing_cache=None)
    cfg = FakeBuildTrt.last["config"]
    assert cfg.hardware_compatibility_level == FakeBuildTrt.HardwareCompatibilityLevel.AMPERE_PLUS
    assert FakeBuildTrt.BuilderFlag.VERSION_COMPATIBLE in cfg.flags
    assert FakeBuildTrt.last["runtime"].engine_host_code_allowed is True
    c = rec["compatibility"]
    assert c["hardware_compatibility"] == "ampere_plus" and c["version_compatible"] is True


def test_version_compatible_plans_carry_the_plugins_the_parser_used(bundle, fake):
    fake(device=dict(DEV, integrated=False, platform="linux-x86_64", compute_capability="8.6", dla_cores=0))
    FakeParser.vc_plugins = ["/usr/lib/x86_64-linux-gnu/libnvinfer_vc_plugin.so.10"]
    rec = trt_build.build_engine(bundle, "fp32", version_compat=True, timing_cache=None)
    assert FakeBuildTrt.last["config"].plugins_to_serialize == FakeParser.vc_plugins
    assert rec["produced_by"]["serialized_plugins"] == ["libnvinfer_vc_plugin.so.10"]
    # an ordinary plan serializes none
    rec = trt_build.build_engine(bundle, "fp32", timing_cache=None)
    assert not hasattr(FakeBuildTrt.last["config"], "plugins_to_serialize")
    assert "serialized_plugins" not in rec["produced_by"]


def test_excluding_the_lean_runtime(bundle, fake, monkeypatch):
    fake(device=dict(DEV, integrated=False, platform="linux-x86_64", compute_capability="8.6", dla_cores=0))
    monkeypatch.setattr(cuda, "find_lean_library", lambda: "/opt/trt/libnvinfer_lean.so.10")
    rec = trt_build.build_engine(bundle, "fp32", version_compat=True, exclude_lean_runtime=True, timing_cache=None)
    flags = FakeBuildTrt.last["config"].flags
    assert {FakeBuildTrt.BuilderFlag.VERSION_COMPATIBLE, FakeBuildTrt.BuilderFlag.EXCLUDE_LEAN_RUNTIME} <= flags
    assert rec["compatibility"]["lean_runtime_embedded"] is False
    assert FakeBuildTrt.last["lean_library"] == "/opt/trt/libnvinfer_lean.so.10"  # the check loaded it
    # the rebuild keeps the setting
    rec2 = trt_build.rebuild_artifact(bundle, rec["id"], timing_cache=None)
    assert rec2["compatibility"]["lean_runtime_embedded"] is False
    # without a lean library to check the plan with, nothing is written
    monkeypatch.setattr(cuda, "find_lean_library", lambda: None)
    (bundle / "fp32.plan").unlink()
    write_manifest(bundle, {**load_bundle(bundle, verify=False).manifest,
                            "artifacts": [a for a in load_bundle(bundle, verify=False).manifest["artifacts"]
                                          if a["id"] != "trt-fp32"]})
    with pytest.raises(ExportError, match="no libnvinfer_lean library"):
        trt_build.build_engine(bundle, "fp32", version_compat=True, exclude_lean_runtime=True, timing_cache=None)
    assert not (bundle / "fp32.plan").exists()


def test_an_unknown_hardware_compatibility_name_is_a_clear_error(bundle, fake):
    f = fake("10.9.0.34", device=dict(DEV, integrated=False, platform="linux-x86_64", compute_capability="8.6",
                                      dla_cores=0))
    f.trt.HardwareCompatibilityLevel = types.SimpleNamespace(NONE=0, AMPERE_PLUS=1)  # a TensorRT without the level
    with pytest.raises(ExportError, match="this TensorRT has no hardware compatibility level SAME_COMPUTE_CAPABILITY"):
        trt_build.build_engine(bundle, "fp32", hardware_compat="same_compute_capability", timing_cache=None)


def test_parser_errors_are_all_listed(bundle, fake):
    fake()
    FakeParser.fail_with = ["In node 3 (Foo): UNSUPPORTED_NODE", "In node 4 (Bar): INVALID_NODE"]
    with pytest.raises(ExportError, match=r"\(2 error\(s\)\):\n  - In node 3 .*\n  - In node 4"):
        trt_build.build_engine(bundle, "fp32", timing_cache=None)
    assert [p.name for p in bundle.iterdir() if p.suffix == ".plan"] == []


def test_failed_build_says_why_and_leaves_the_bundle_alone(bundle, fake):
    fake(fail_build=True)
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(ExportError, match="could not find any implementation for node X"):
        trt_build.build_engine(bundle, "fp32", timing_cache=None)
    assert (bundle / "manifest.json").read_bytes() == before
    load_bundle(bundle)


def test_engine_io_must_match_the_manifest(bundle, fake, monkeypatch):
    fake()
    orig = FakeParser.parse_from_file

    def renamed(self, path):
        ok = orig(self, path)
        self.network.outputs = ["scores"]
        return ok

    monkeypatch.setattr(FakeParser, "parse_from_file", renamed)
    with pytest.raises(ExportError, match="differ from the manifest"):
        trt_build.build_engine(bundle, "fp32", timing_cache=None)


def test_calibrator_path_on_trt10_with_a_keyed_cache(bundle, fake, tmp_path):
    f = fake()
    data = np.random.default_rng(0).random((20, 1, 32, 32), dtype=np.float32)
    cdir = tmp_path / "calib"
    cset = trt_build.CalibrationSet(data, batch=8, cache_dir=cdir)
    rec = trt_build.build_engine(bundle, "int8", calibration=cset, batch=(1, 8, 8), timing_cache=None)
    cal = rec["produced_by"]["calibration"]
    assert (cal["batches"], cal["batches_fed"], cal["cache_reused"], cal["samples"]) == (2, 2, False, 20)
    assert rec["source_artifact"] == "fp32" and rec["produced_by"]["build_plan"]["calibrator"] is True
    cfg = FakeBuildTrt.last["config"]
    assert cfg.flags == {FakeBuildTrt.BuilderFlag.INT8} and FakeBuildTrt.last["network_flags"] == 0
    assert cfg.calibration_profile.shapes == {"image": ((8, 1, 32, 32),) * 3}
    assert f.cudart.copies == 2 and f.cudart.mem == {}  # the device buffer was freed
    caches = sorted(p.name for p in cdir.iterdir())
    assert len(caches) == 2 and caches[0].startswith("calib-entropy2-trt10.3.0-")
    # same graph, preprocessing, data and TensorRT: the cache is reused, nothing is fed
    rec2 = trt_build.build_engine(bundle, "int8", calibration=cset, batch=(1, 8, 8), timing_cache=None)
    assert rec2["produced_by"]["calibration"]["cache_reused"] is True
    assert rec2["produced_by"]["calibration"]["batches_fed"] == 0
    # different data: a different key, so calibration runs again
    cset2 = trt_build.CalibrationSet(data[::-1].copy(), batch=8, cache_dir=cdir)
    rec3 = trt_build.build_engine(bundle, "int8", calibration=cset2, batch=(1, 8, 8), timing_cache=None)
    assert rec3["produced_by"]["calibration"]["batches_fed"] == 2
    assert len(list(cdir.iterdir())) == 4


def test_an_error_inside_a_calibrator_callback_fails_the_build(bundle, fake, tmp_path, monkeypatch):
    # TensorRT's wrapper prints such an error and goes on as if the data had ended: the plan
    # would be calibrated on part of the data, silently. The build must fail and say why.
    f = fake()
    data = np.random.default_rng(1).random((24, 1, 32, 32), dtype=np.float32)
    calls = {"n": 0}
    real = f.cudart.cudaMemcpy

    def flaky(*args):
        calls["n"] += 1
        return (700,) if calls["n"] == 2 else real(*args)  # the second batch's copy fails

    monkeypatch.setattr(f.cudart, "cudaMemcpy", flaky)
    f.cudart.cudaGetErrorName = lambda err: (0, b"cudaErrorIllegalAddress")
    cset = trt_build.CalibrationSet(data, batch=8, cache_dir=tmp_path / "c")
    with pytest.raises(ExportError, match=r"INT8 calibration failed inside TensorRT's calibrator callback "
                                          r"\(CudaError: cudaMemcpy failed: CUDA error 700") as exc:
        trt_build.build_engine(bundle, "int8", calibration=cset, batch=(1, 8, 8), timing_cache=None)
    assert isinstance(exc.value.__cause__, cuda.CudaError)
    assert FakeBuildTrt.last.get("swallowed") is None  # the callback kept it; nothing reached TensorRT
    assert not (bundle / "int8.plan").exists() and f.cudart.mem == {}


def test_a_feed_that_stops_early_fails_the_build(bundle, fake, tmp_path):
    fake()
    FakeBuildTrt.last["take_batches"] = 1  # TensorRT asks for one batch of the three and stops
    cset = trt_build.CalibrationSet(np.zeros((24, 1, 32, 32), np.float32), batch=8, cache_dir=tmp_path / "c")
    with pytest.raises(ExportError, match="TensorRT took 1 of the 3 calibration batches and stopped"):
        trt_build.build_engine(bundle, "int8", calibration=cset, batch=(1, 8, 8), timing_cache=None)
    assert not (bundle / "int8.plan").exists()


def test_calibration_input_checks(bundle, fake):
    fake()
    with pytest.raises(trt_build.UsageError, match="float32"):
        trt_build.build_engine(bundle, "int8", calibration=np.zeros((8, 1, 32, 32)))
    with pytest.raises(trt_build.UsageError, match=r"the model takes \(N, 1, 32, 32\)"):
        trt_build.build_engine(bundle, "int8", calibration=np.zeros((8, 1, 16, 16), np.float32))
    with pytest.raises(trt_build.UsageError, match="within the engine's batch range 1..8"):
        trt_build.build_engine(bundle, "int8", calibration=trt_build.CalibrationSet(
            np.zeros((32, 1, 32, 32), np.float32), batch=16))
    with pytest.raises(PolicyError, match="INT8 only"):
        trt_build.build_engine(bundle, "fp32", calibration=np.zeros((8, 1, 32, 32), np.float32))


def test_cli_build_prints_a_summary(bundle, fake, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    fake()
    npy = tmp_path / "calib.npy"
    np.save(npy, np.random.default_rng(1).random((16, 1, 32, 32), dtype=np.float32))
    args = Namespace(bundle=str(bundle), precision="int8", workspace=None, dla_core=None, batch="1,8,8",
                     no_timing_cache=True, calibration=str(npy), calibration_batch=8, json=False)
    assert trt_build.cli_build(args) == 0
    out = capsys.readouterr().out
    assert "built int8.plan" in out and "artifact trt-int8" in out and "on Orin (compute capability 8.7)" in out
    assert "note: implicit INT8 calibration" in out and "validate it against FP32" in out
    args = Namespace(bundle=str(bundle), precision="fp32", batch="2", no_timing_cache=True, json=True)
    assert trt_build.cli_build(args) == 0
    assert json.loads(capsys.readouterr().out)["produced_by"]["batch"] == [2, 2, 2]


def test_rebuild_uses_the_recorded_settings(bundle, fake):
    fake()
    add_graph(bundle, "fp16.onnx", "fp16")
    rec = trt_build.build_engine(bundle, "fp16", dla_core=1, batch=(2, 2, 2), workspace_mb=64, timing_cache=None)
    fake(version="10.4.0.26")  # TensorRT was upgraded: the old plan no longer loads
    decision, reasons = trt_policy.rebuild_decision(rec["compatibility"], dict(DEV, tensorrt_version="10.4.0.26"),
                                                    allow_rebuild=True)
    assert decision == "rebuild" and "10.3.0.30" in reasons[0]
    new = trt_build.rebuild_artifact(bundle, rec["id"], timing_cache=None)
    assert new["id"] == rec["id"] and new["compatibility"]["tensorrt_version"] == "10.4.0.26"
    assert new["compatibility"]["dla_core"] == 1 and new["produced_by"]["batch"] == [2, 2, 2]
    assert FakeBuildTrt.last["config"].pools == {0: 64 << 20}
    with pytest.raises(trt_build.UsageError, match="not a TensorRT plan"):
        trt_build.rebuild_artifact(bundle, "fp16")


def test_rebuilding_a_calibrated_plan_needs_the_data(bundle, fake, tmp_path):
    fake()
    cset = trt_build.CalibrationSet(np.zeros((8, 1, 32, 32), np.float32), cache_dir=tmp_path / "c")
    rec = trt_build.build_engine(bundle, "int8", calibration=cset, timing_cache=None)
    with pytest.raises(ExportError, match="pass the calibration tensors again"):
        trt_build.rebuild_artifact(bundle, rec["id"], timing_cache=None)
    assert trt_build.rebuild_artifact(bundle, rec["id"], calibration=cset, timing_cache=None)["id"] == rec["id"]


# --- on a GPU: real engines of the phantom bundle against ONNX Runtime ------------------------
@pytest.fixture(scope="module")
def trt_builder():
    """The full TensorRT (the builder); GPU hosts with only the lean runtime skip these tests."""
    try:
        return cuda.import_tensorrt("building plans on this GPU")
    except MissingDependency as exc:
        pytest.skip(f"the TensorRT builder is not installed here ({exc})")


@pytest.fixture(scope="module")
def phantom_copy(trt_builder, tmp_path_factory):
    from edgeinfer.bundle import default_bundle_path

    src = default_bundle_path()
    if not (src / "manifest.json").is_file():
        pytest.skip(f"the phantom bundle is not built ({src}); train and export it first")
    dst = tmp_path_factory.mktemp("trt") / "phantom"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def phantom_tensors(phantom_copy, phantom_dir):
    from edgeinfer.intake import Image, Intake, discover

    intake = Intake.for_bundle(load_bundle(phantom_copy))
    xs = [r.tensor for r in map(intake.take, discover([phantom_dir])) if isinstance(r, Image)]
    assert len(xs) >= 8
    return np.stack(xs).astype(np.float32)


def _ort(bundle, precision, x):
    from edgeinfer.backends import RunnerOptions, create_runner

    art = bundle.artifact(precision=precision, format="onnx")
    with create_runner(art, RunnerOptions(device="cpu"), backend="onnxruntime") as r:
        return r.infer({bundle.manifest["inputs"][0]["name"]: x})[bundle.manifest["outputs"][0]["name"]]


def _trt_run(bundle, art_id, *xs, **extra):
    """Each input through one runner in turn: (outputs, the report after the last)."""
    from edgeinfer.backends import RunnerOptions, create_runner

    with create_runner(bundle.artifact(id=art_id), RunnerOptions(device="cuda", extra=extra),
                       backend="tensorrt") as r:
        outs = [r.infer({bundle.manifest["inputs"][0]["name"]: x})[bundle.manifest["outputs"][0]["name"]]
                for x in xs]
        return (outs[0] if len(outs) == 1 else outs), r.report()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("precision, atol", [("fp32", 1e-3), ("fp16", 1e-2), ("int8", None)])
def test_engine_matches_onnxruntime(phantom_copy, phantom_tensors, tmp_path_factory, precision, atol):
    from edgeinfer.triage import image_scores, priority_for

    bundle = load_bundle(phantom_copy)
    if not any(a.precision == precision and a.format == "onnx" for a in bundle.artifacts):
        pytest.skip(f"the phantom bundle has no {precision} ONNX graph yet")
    tc = tmp_path_factory.getbasetemp() / "timing.cache"
    rec = trt_build.build_engine(phantom_copy, precision, batch=(1, 4, 8), timing_cache=tc)
    bundle = load_bundle(phantom_copy)  # verifies the new plan's hash
    x = phantom_tensors
    out, rep = _trt_run(bundle, rec["id"], x)
    assert rep.backend == "tensorrt" and rep.precision == precision and rep.provider.startswith("TensorRT ")
    if atol is not None:
        ref = _ort(bundle, "fp32", x)
        np.testing.assert_allclose(out, ref, atol=atol, rtol=0)
    else:
        # INT8: the engine must give the priorities ONNX Runtime gives for the same Q/DQ graph,
        # except for scores within 0.02 of a priority threshold
        ref = _ort(bundle, "int8", x)
        thresholds = [p["min_score"] for p in bundle.manifest["triage"]["priorities"]]
        s_trt, _ = image_scores(out.astype(np.float64), bundle)
        s_ref, _ = image_scores(ref.astype(np.float64), bundle)
        for a, b in zip(s_trt, s_ref):
            if min(abs(b - t) for t in thresholds) > 0.02:
                assert priority_for(a, bundle) == priority_for(b, bundle), (a, b)


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_graph_timing_and_refusal_on_a_real_gpu(phantom_copy, phantom_tensors):
    rec = trt_build.build_engine(phantom_copy, "fp32", batch=(1, 4, 8), timing_cache=None)
    bundle = load_bundle(phantom_copy)
    x, y = phantom_tensors[:4], phantom_tensors[4:8]
    plain, _ = _trt_run(bundle, rec["id"], x, y)
    # first call: the ordinary path plus the capture; second call: the graph replays on new data
    graphed, rep = _trt_run(bundle, rec["id"], x, y, cuda_graph=True, timing=True)
    np.testing.assert_array_equal(plain[0], graphed[0])
    np.testing.assert_array_equal(plain[1], graphed[1])  # the replay read y, not the captured x
    assert not np.array_equal(graphed[0], graphed[1])
    assert rep.details["cuda_graph"] == "on" and set(rep.details["timings_ms"]) == {"graph_ms"}
    assert rep.details["timings_ms"]["graph_ms"] > 0
    # a record that does not match this GPU: refused before deserialization
    m = bundle.manifest
    for a in m["artifacts"]:
        if a["id"] == rec["id"]:
            a["compatibility"]["compute_capability"] = "5.3"
    write_manifest(phantom_copy, m)
    with pytest.raises(trt_policy.PlanIncompatible, match="built for compute capability 5.3"):
        from edgeinfer.backends.tensorrt import TrtRunner
        from edgeinfer.backends import RunnerOptions

        TrtRunner(load_bundle(phantom_copy).artifact(id=rec["id"]), RunnerOptions(device="cuda")).activate()
