"""The TensorRT build/load policy is pure: every rule is tested here, without a GPU."""
import json

import numpy as np
import pytest

from edgeinfer import trt_policy as tp
from edgeinfer.errors import EdgeInferError, IntegrityError, UsageError
from edgeinfer.trt_policy import PlanIncompatible, PolicyError

SHA = "a" * 64
SHA2 = "b" * 64
ORIN = {"tensorrt_version": "10.3.0.30", "tensorrt_cuda": "12", "cuda_python": "12.6", "gpu_name": "Orin", "compute_capability": "8.7",
        "integrated": True, "dla_cores": 2, "platform": "linux-aarch64"}
RTX = {"tensorrt_version": "10.3.0.30", "tensorrt_cuda": "12", "gpu_name": "NVIDIA GeForce RTX 3090",
       "compute_capability": "8.6", "integrated": False, "dla_cores": 0, "platform": "linux-x86_64"}


def record(**kw):
    base = dict(tensorrt_version="10.3.0.30", tensorrt_cuda="12", gpu_name="Orin", compute_capability="8.7",
                plan_sha256=SHA, platform="linux-aarch64")
    base.update(kw)
    return tp.compatibility_record(**base)


# --- versions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("10.3.0.30", (10, 3, 0, 30)), ("11.4.0.106", (11, 4, 0, 106)), ("10.7.0", (10, 7, 0)),
    ("8.6", (8, 6)), (" 10.13.3.9 ", (10, 13, 3, 9)), ("10.0.1.post1", (10, 0, 1)), ("v10.3.0", (10, 3, 0)),
    ("10.3.0rc1", (10, 3, 0)), ("10.3.0+cuda12", (10, 3, 0)),
])
def test_parse_version_real_strings(text, expected):
    assert tp.parse_version(text) == expected


@pytest.mark.parametrize("bad", ["", "10", "abc", "10.x", "1.2.3.4.5", "10..3", None, 10.3, "10.3.0 30"])
def test_parse_version_refuses_garbage(bad):
    with pytest.raises(PolicyError):
        tp.parse_version(bad)


def test_policy_error_is_a_usage_error_for_the_cli():
    assert issubclass(PolicyError, UsageError) and issubclass(PolicyError, EdgeInferError)
    assert issubclass(PlanIncompatible, IntegrityError)


@pytest.mark.parametrize("cc, expected", [("8.7", (8, 7)), ((8, 6), (8, 6)), ([12, 0], (12, 0)), (" 7.2 ", (7, 2))])
def test_parse_compute_capability(cc, expected):
    assert tp.parse_compute_capability(cc) == expected


@pytest.mark.parametrize("bad", ["87", 8.7, "8", (8,), (8, "7"), (True, 0), None, "sm_87"])
def test_parse_compute_capability_refuses(bad):
    with pytest.raises(PolicyError, match="compute capability"):
        tp.parse_compute_capability(bad)


def test_describe_cc_names_known_families():
    assert tp.describe_cc((8, 7)) == "8.7 (Orin)"
    assert tp.describe_cc((9, 9)) == "9.9"


@pytest.mark.parametrize("level, expected", [(None, "none"), ("none", "none"), ("AMPERE_PLUS", "ampere_plus"),
                                             ("ampere-plus", "ampere_plus"), ("ampere+", "ampere_plus"),
                                             ("SAME_COMPUTE_CAPABILITY", "same_compute_capability"),
                                             ("same_cc", "same_compute_capability")])
def test_hardware_compat_names(level, expected):
    assert tp.normalize_hardware_compat(level) == expected


@pytest.mark.parametrize("bad", ["turing_plus", 1, True])
def test_hardware_compat_refuses_unknown(bad):
    with pytest.raises(PolicyError, match="hardware compatibility"):
        tp.normalize_hardware_compat(bad)


# --- batch and profiles -------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [("1,4,8", (1, 4, 8)), ("8", (8, 8, 8)), (" 1, 1 ,16 ", (1, 1, 16)),
                                            ("2,2,2", (2, 2, 2))])
def test_parse_batch(text, expected):
    assert tp.parse_batch(text) == expected


@pytest.mark.parametrize("text, match", [
    ("", "MIN,OPT,MAX"), ("1,8", "MIN,OPT,MAX"), ("1,2,3,4", "MIN,OPT,MAX"), ("a,b,c", "MIN,OPT,MAX"),
    ("-1,1,8", "MIN,OPT,MAX"), ("1.5,2,3", "MIN,OPT,MAX"), ("0,1,8", ">= 1"), ("8,4,1", "min <= opt <= max"),
    ("1,9,8", "min <= opt <= max"), ("1,1,5000", "larger than"), (None, "MIN,OPT,MAX"),
])
def test_parse_batch_errors_say_what_is_expected(text, match):
    with pytest.raises(PolicyError, match=match):
        tp.parse_batch(text)


@pytest.mark.parametrize("bad", [(1, 2), [1, 2, 3, 4], "1,2,3", (1.0, 2, 3), (True, 1, 1), (1, None, 2)])
def test_check_batch_refuses(bad):
    with pytest.raises(PolicyError):
        tp.check_batch(bad)


def test_profile_shapes_dynamic_batch_keeps_static_dims():
    shapes = tp.profile_shapes({"image": [-1, 1, 256, 256]}, (1, 4, 8))
    assert shapes == {"image": ((1, 1, 256, 256), (4, 1, 256, 256), (8, 1, 256, 256))}
    # manifest spelling of the dynamic axis, and None
    assert tp.profile_shapes({"x": ["batch", 3, 8]}, (2, 2, 2))["x"] == ((2, 3, 8),) * 3
    assert tp.profile_shapes({"x": (None, 3)}, (1, 2, 3))["x"] == ((1, 3), (2, 3), (3, 3))


def test_profile_shapes_several_inputs():
    s = tp.profile_shapes({"a": [-1, 2], "b": [-1, 5, 5]}, (1, 2, 4))
    assert s["a"][2] == (4, 2) and s["b"][0] == (1, 5, 5)


def test_profile_shapes_static_batch_must_match():
    assert tp.profile_shapes({"x": [4, 3]}, (4, 4, 4)) == {"x": ((4, 3),) * 3}
    with pytest.raises(PolicyError, match="fixed batch of 4.*--batch 4"):
        tp.profile_shapes({"x": [4, 3]}, (1, 1, 8))


@pytest.mark.parametrize("shape, match", [
    ([-1, "h", 256], "dynamic axis 1"), ([-1, 1, -1, 256], "dynamic axis 2"), ([-1, 0, 3], "positive integers"),
    ([], "scalar"), ([0, 3], "batch axis"), ([-1, 2.5], "positive integers"),
])
def test_profile_shapes_refuses(shape, match):
    with pytest.raises(PolicyError, match=match):
        tp.profile_shapes({"image": shape}, (1, 1, 8))


def test_profile_shapes_needs_inputs_and_a_valid_batch():
    with pytest.raises(PolicyError, match="no inputs"):
        tp.profile_shapes({}, (1, 1, 1))
    with pytest.raises(PolicyError, match="min <= opt"):
        tp.profile_shapes({"x": [-1, 3]}, (4, 2, 8))


def test_dla_profile_rules():
    tp.check_dla_profile(tp.profile_shapes({"x": [-1, 1, 64, 64]}, (4, 4, 4)))
    with pytest.raises(PolicyError, match="dynamic dimensions.*--batch 8"):
        tp.check_dla_profile(tp.profile_shapes({"x": [-1, 1, 64, 64]}, (1, 4, 8)))
    with pytest.raises(PolicyError, match="<= 8192"):
        tp.check_dla_profile({"x": ((1, 1, 9000), (1, 1, 9000), (1, 1, 9000))})
    with pytest.raises(PolicyError, match="batch <= 4096"):
        tp.check_dla_profile({"x": ((5000, 1), (5000, 1), (5000, 1))})


# --- build plans --------------------------------------------------------------------------------
def test_trt11_is_strongly_typed_without_precision_flags():
    for prec in ("fp32", "fp16", "int8"):
        p = tp.build_plan("11.4.0.106", prec)
        assert p.strongly_typed and p.graph == prec
        # the creation flag is deprecated and ignored in 11 (and its value moved): not set
        assert p.network_flags == ()
        assert not {"FP16", "INT8"} & set(p.builder_flags)
        assert not p.calibrator and p.clear_builder_flags == ("TF32",)


def test_trt11_refuses_the_calibrator():
    with pytest.raises(PolicyError, match="no INT8 calibrators.*Q/DQ"):
        tp.build_plan("11.0.0.1", "int8", calibrator=True)


@pytest.mark.parametrize("prec", ["fp16", "int8"])
def test_trt10_builds_strongly_typed_from_the_typed_graph(prec):
    p = tp.build_plan("10.3.0.30", prec)
    assert p.graph == prec and p.network_flags == ("STRONGLY_TYPED",) and p.builder_flags == ()
    assert p.strongly_typed and not p.calibrator and p.warnings == ()


def test_trt10_without_strongly_typed_uses_the_precision_flag():
    p = tp.build_plan("10.3.0.30", "fp16", strongly_typed_available=False)
    assert p.graph == "fp16" and p.network_flags == () and p.builder_flags == ("FP16",) and not p.strongly_typed
    q = tp.build_plan("10.3.0.30", "int8", strongly_typed_available=False)
    assert q.graph == "int8" and q.builder_flags == ("INT8",)  # explicit quantization, weakly typed
    r = tp.build_plan("10.3.0.30", "fp32", strongly_typed_available=False)
    assert r.network_flags == () and r.builder_flags == ()


def test_weak_typing_warns_from_10_12():
    p = tp.build_plan("10.12.0.36", "fp16", strongly_typed_available=False)
    assert any("deprecated since TensorRT 10.12" in w for w in p.warnings)
    assert not tp.build_plan("10.11.0", "fp16", strongly_typed_available=False).warnings


def test_trt10_fp32():
    p = tp.build_plan("10.7.0.23", "fp32")
    assert p.graph == "fp32" and p.network_flags == ("STRONGLY_TYPED",) and p.builder_flags == ()


def test_trt10_calibrator_only_when_asked():
    p = tp.build_plan("10.3.0.30", "int8", calibrator=True)
    assert p.calibrator and p.graph == "fp32" and p.builder_flags == ("INT8",) and p.network_flags == ()
    assert any("deprecated since TensorRT 10.1" in w for w in p.warnings)
    with pytest.raises(PolicyError, match="INT8 only"):
        tp.build_plan("10.3.0.30", "fp16", calibrator=True)


def test_graph_precision_mismatch_is_explained():
    with pytest.raises(PolicyError, match="ask for the calibrator explicitly"):
        tp.build_plan("10.3.0.30", "int8", graph_precision="fp32")
    with pytest.raises(PolicyError, match="produce the fp16 ONNX graph first"):
        tp.build_plan("11.4.0.106", "fp16", graph_precision="fp32")
    with pytest.raises(PolicyError, match="built from the fp32 graph"):
        tp.build_plan("10.3.0.30", "fp32", graph_precision="fp16")
    assert tp.build_plan("10.3.0.30", "int8", graph_precision="fp32", calibrator=True).graph == "fp32"
    assert tp.build_plan("10.3.0.30", "int8", graph_precision="int8").graph == "int8"


@pytest.mark.parametrize("ver", ["8.6.1.6", "9.3.0", "7.1.3.0"])
def test_old_tensorrt_is_refused_with_a_reason(ver):
    with pytest.raises(PolicyError, match="TensorRT 10 or newer"):
        tp.build_plan(ver, "fp16")


def test_bad_arguments():
    with pytest.raises(PolicyError, match="precision 'bf16'"):
        tp.build_plan("10.3.0", "bf16")
    with pytest.raises(PolicyError, match="DLA core"):
        tp.build_plan("10.3.0", "fp16", dla_core=-1)
    with pytest.raises(PolicyError, match="DLA core"):
        tp.build_plan("10.3.0", "fp16", dla_core=True)
    with pytest.raises(PolicyError, match="version_compat"):
        tp.build_plan("10.3.0", "fp16", version_compat="yes")


def test_dla_on_jetpack6():
    p = tp.build_plan("10.3.0.30", "fp16", dla_core=0, batch=(4, 4, 4), device=ORIN)
    assert p.dla_core == 0 and "GPU_FALLBACK" in p.builder_flags and "FP16" in p.builder_flags
    assert not p.strongly_typed and p.network_flags == ()
    q = tp.build_plan("10.3.0.30", "int8", dla_core=1)
    assert set(q.builder_flags) == {"GPU_FALLBACK", "INT8"} and q.graph == "int8"
    c = tp.build_plan("10.3.0.30", "int8", dla_core=0, calibrator=True)
    assert set(c.builder_flags) == {"GPU_FALLBACK", "INT8"} and c.graph == "fp32"


def test_dla_rules():
    with pytest.raises(PolicyError, match="FP16 and INT8 only"):
        tp.build_plan("10.3.0.30", "fp32", dla_core=0)
    with pytest.raises(PolicyError, match="dynamic dimensions.*--batch 8"):
        tp.build_plan("10.3.0.30", "fp16", dla_core=0, batch=(1, 4, 8))
    with pytest.raises(PolicyError, match="larger than 4096"):
        tp.build_plan("10.3.0.30", "fp16", dla_core=0, batch=(4097,) * 3)
    with pytest.raises(PolicyError, match="2 DLA core"):
        tp.build_plan("10.3.0.30", "fp16", dla_core=2, device=ORIN)
    with pytest.raises(PolicyError, match="0 DLA core"):
        tp.build_plan("10.3.0.30", "fp16", dla_core=0, device=RTX)
    with pytest.raises(PolicyError, match="cannot be combined with DLA"):
        tp.build_plan("10.3.0.30", "fp16", dla_core=0, hardware_compat="ampere_plus")


@pytest.mark.parametrize("ver, ok", [("10.0.1.6", True), ("10.7.0.23", True), ("10.8.0.43", False),
                                     ("10.13.3.9", False), ("11.0.0.1", False), ("11.4.0.106", False),
                                     ("11.4.1.5", True), ("11.5.0", True)])
def test_dla_tensorrt_versions(ver, ok):
    if ok:
        p = tp.build_plan(ver, "fp16", dla_core=0)
        assert "GPU_FALLBACK" in p.builder_flags
        if ver.startswith("11"):
            assert p.strongly_typed and "FP16" not in p.builder_flags
    else:
        with pytest.raises(PolicyError, match="no DLA support"):
            tp.build_plan(ver, "fp16", dla_core=0)


def test_hardware_and_version_compatibility():
    p = tp.build_plan("10.3.0.30", "fp16", hardware_compat="AMPERE_PLUS", version_compat=True, device=RTX)
    assert p.hardware_compatibility == "ampere_plus" and p.version_compatible
    assert "VERSION_COMPATIBLE" in p.builder_flags and p.parser_flags == ("NATIVE_INSTANCENORM",)
    assert any("lean runtime" in w for w in p.warnings) and any("slower" in w for w in p.warnings)
    assert tp.build_plan("10.3.0.30", "fp16").parser_flags == ()


def test_hardware_compat_rules():
    with pytest.raises(PolicyError, match="JetPack"):
        tp.build_plan("10.3.0.30", "fp16", hardware_compat="ampere_plus", device=ORIN)
    turing = dict(RTX, compute_capability="7.5")
    with pytest.raises(PolicyError, match=">= 8.0.*7.5 \\(Turing\\)"):
        tp.build_plan("10.3.0.30", "fp16", hardware_compat="ampere_plus", device=turing)
    assert tp.build_plan("10.9.0.34", "fp16", hardware_compat="same_compute_capability",
                         device=turing).hardware_compatibility == "same_compute_capability"
    with pytest.raises(PolicyError, match="needs TensorRT >= 10.9"):
        tp.build_plan("10.3.0.30", "fp16", hardware_compat="same_compute_capability")
    with pytest.raises(PolicyError, match=">= 7.5"):
        tp.build_plan("10.9.0", "fp16", hardware_compat="same_compute_capability",
                      device=dict(RTX, compute_capability="7.0"))


def test_build_plan_as_dict_is_json():
    d = tp.build_plan("10.3.0.30", "int8", dla_core=0).as_dict()
    assert json.loads(json.dumps(d))["builder_flags"] == ["GPU_FALLBACK", "INT8"]


# --- compatibility records and checks -------------------------------------------------------------
def test_record_roundtrip_and_validation():
    r = record(dla_core=0, hardware_compatibility="AMPERE_PLUS")
    assert r["compute_capability"] == "8.7" and r["hardware_compatibility"] == "ampere_plus"
    assert set(r) == set(tp.RECORD_FIELDS)
    assert tp.record_problems(r) == []
    with pytest.raises(PolicyError, match="plan_sha256"):
        record(plan_sha256="XYZ")
    with pytest.raises(PolicyError, match="dla_core"):
        record(dla_core=-2)
    with pytest.raises(PolicyError, match="version_compatible"):
        record(version_compatible="no")
    with pytest.raises(PolicyError, match="compute capability"):
        record(compute_capability="87")


def test_record_problems_lists_everything():
    probs = tp.record_problems({"tensorrt_version": "x", "cuda_version": 12, "hardware_compatibility": "all"})
    text = "\n".join(probs)
    for needle in ("'gpu_name'", "'compute_capability'", "'plan_sha256'", "cannot read version", "cuda_version",
                   "hardware compatibility"):
        assert needle in text
    assert tp.record_problems(["not", "a", "dict"]) == ["the compatibility record is list, not an object"]


def test_same_device_loads():
    assert tp.check_compatibility(record(), ORIN) == []
    assert tp.check_compatibility(record(), ORIN, plan_sha256=SHA) == []
    assert tp.rebuild_decision(record(), ORIN, allow_rebuild=False) == ("load", [])


def test_tensorrt_version_difference_is_stated_exactly():
    diffs = tp.check_compatibility(record(tensorrt_version="10.3.0"), dict(ORIN, tensorrt_version="10.7.0"))
    assert diffs == ["built with TensorRT 10.3.0, this device has 10.7.0 (plans are not portable across "
                     "TensorRT versions unless built version-compatible)"]
    # the build number matters too
    assert tp.check_compatibility(record(tensorrt_version="10.3.0.26"), ORIN)


def test_version_compatible_plans():
    vc = record(tensorrt_version="10.3.0.30", version_compatible=True)
    assert tp.check_compatibility(vc, dict(ORIN, tensorrt_version="10.7.0.23")) == []
    assert tp.check_compatibility(vc, dict(ORIN, tensorrt_version="11.4.0.106")) == []  # 10 -> 11 supported
    older = tp.check_compatibility(record(tensorrt_version="10.7.0", version_compatible=True), ORIN)
    assert len(older) == 1 and "older 10.3.0.30" in older[0]
    eight = tp.check_compatibility(record(tensorrt_version="8.6.1", version_compatible=True),
                                   dict(ORIN, tensorrt_version="11.4.0"))
    assert len(eight) == 1 and "8 -> 10 and 10 -> 11" in eight[0]
    w = tp.compatibility_warnings(vc, dict(ORIN, tensorrt_version="10.7.0.23"))
    assert any("lean runtime" in x for x in w)


def test_compute_capability_rules():
    diffs = tp.check_compatibility(record(), dict(ORIN, compute_capability="8.6", gpu_name="RTX"))
    assert diffs == ["built for compute capability 8.7 (Orin), this GPU is 8.6 (Ampere) (plans are not portable "
                     "across GPU architectures unless built hardware-compatible)"]
    amp = record(hardware_compatibility="ampere_plus", compute_capability="8.6", platform="linux-x86_64")
    dev = dict(RTX, compute_capability="8.9")
    assert tp.check_compatibility(amp, dev) == []
    assert tp.check_compatibility(amp, dict(RTX, compute_capability="12.0")) == []
    d = tp.check_compatibility(amp, dict(RTX, compute_capability="7.5"))
    assert len(d) == 1 and "compute capability >= 8.0" in d[0] and "7.5 (Turing)" in d[0]
    same = record(hardware_compatibility="same_compute_capability", compute_capability="8.6", platform=None)
    assert tp.check_compatibility(same, RTX) == []
    assert "same_compute_capability" in tp.check_compatibility(same, dict(RTX, compute_capability="8.9"))[0]


def test_gpu_model_difference_is_a_warning_not_a_refusal():
    r = record(gpu_name="NVIDIA GeForce RTX 3080", compute_capability="8.6", platform="linux-x86_64")
    assert tp.check_compatibility(r, RTX) == []
    assert any("performance may differ" in w for w in tp.compatibility_warnings(r, RTX))
    same = record(gpu_name="A", compute_capability="8.6", hardware_compatibility="same_compute_capability",
                  platform="linux-x86_64")
    assert tp.compatibility_warnings(same, RTX) == []


def test_platform_cuda_and_sha_differences():
    d = tp.check_compatibility(record(), dict(ORIN, platform="linux-x86_64"))
    assert d == ["built on linux-aarch64, this device is linux-x86_64 (serialized engines are not portable across "
                 "platforms)"]
    d = tp.check_compatibility(record(tensorrt_cuda="12"), dict(ORIN, tensorrt_cuda="13"))
    assert d == ["built with a TensorRT for CUDA 12, this device's TensorRT is built for CUDA 13 (the cu12 and cu13 "
                 "packages are different builds)"]
    d = tp.check_compatibility(record(), ORIN, plan_sha256=SHA2)
    assert len(d) == 1 and d[0].startswith("the plan's sha256 is bbbbbbbb")


def test_dla_record_needs_the_dla_core():
    r = record(dla_core=1)
    assert tp.check_compatibility(r, ORIN) == []
    assert tp.check_compatibility(r, dict(ORIN, dla_cores=1)) == ["built for DLA core 1, this device has 1 DLA core(s)"]
    assert tp.check_compatibility(r, dict(ORIN, dla_cores=0)) == ["built for DLA core 1, this device has no DLA"]


def test_every_difference_is_listed_at_once():
    dev = {"tensorrt_version": "10.7.0", "tensorrt_cuda": "13", "compute_capability": "7.2", "dla_cores": 0,
           "platform": "linux-x86_64"}
    diffs = tp.check_compatibility(record(dla_core=0), dev, plan_sha256=SHA2)
    assert len(diffs) == 6, diffs


def test_device_without_tensorrt_or_gpu():
    d = tp.check_compatibility(record(), {})
    assert "this device has no TensorRT (install the 'trt' extra)" in d and "this device reports no CUDA GPU" in d
    assert "unreadable" in tp.check_compatibility(record(), dict(ORIN, tensorrt_version="??"))[0]
    assert any("needs 10 or newer" in x for x in tp.check_compatibility(record(), dict(ORIN, tensorrt_version="8.6.1")))


def test_malformed_record_is_never_loaded():
    d = tp.check_compatibility({"tensorrt_version": "10.3.0"}, ORIN)
    assert d and all("will not be loaded" in x for x in d)
    assert tp.compatibility_warnings({}, ORIN) == []


def test_rebuild_decision():
    newer = dict(ORIN, tensorrt_version="10.7.0.23")
    decision, reasons = tp.rebuild_decision(record(), newer, allow_rebuild=True)
    assert decision == "rebuild" and "10.3.0.30" in reasons[0]
    assert tp.rebuild_decision(record(), newer, allow_rebuild=False)[0] == "refuse"
    # a rebuild on this device cannot give back a DLA plan it has no DLA for, nor run without a GPU
    assert tp.rebuild_decision(record(dla_core=0), dict(newer, dla_cores=0), allow_rebuild=True)[0] == "refuse"
    assert tp.rebuild_decision(record(), {}, allow_rebuild=True)[0] == "refuse"
    assert tp.rebuild_decision({"junk": 1}, ORIN, allow_rebuild=True)[0] == "rebuild"


def test_incompatible_error_lists_differences():
    err = tp.incompatible_error("trt-fp16", ["a differs", "b differs"])
    assert isinstance(err, PlanIncompatible) and err.differences == ["a differs", "b differs"]
    assert "  - a differs\n  - b differs" in str(err) and "executable code" in str(err)
    assert "Rebuild" not in str(tp.incompatible_error("x", ["d"], allow_rebuild_hint=False))


# --- calibration ---------------------------------------------------------------------------------
def stack(n, shape=(1, 4, 4)):
    return np.arange(n * int(np.prod(shape)), dtype=np.float32).reshape((n,) + shape)


def test_calibration_batches_drop_pad_error():
    x = stack(10)
    b = tp.calibration_batches(x, 4)
    assert [a.shape[0] for a in b] == [4, 4] and np.array_equal(b[1], x[4:8]) and b[0].flags.c_contiguous
    p = tp.calibration_batches(x, 4, last="pad")
    assert [a.shape[0] for a in p] == [4, 4, 4]
    assert np.array_equal(p[2], x[[8, 9, 0, 1]])  # every sample seen; the pad wraps to the start
    assert len(tp.calibration_batches(x, 5, last="error")) == 2
    with pytest.raises(PolicyError, match="2 left over"):
        tp.calibration_batches(x, 4, last="error")
    assert len(tp.calibration_batches(x, 10)) == 1


def test_calibration_batches_small_sets():
    x = stack(3)
    with pytest.raises(PolicyError, match="fewer than one batch of 8"):
        tp.calibration_batches(x, 8)
    p = tp.calibration_batches(x, 8, last="pad")
    assert len(p) == 1 and np.array_equal(p[0], x[[0, 1, 2, 0, 1, 2, 0, 1]])


@pytest.mark.parametrize("x, batch, last, match", [
    (np.zeros((0, 2), np.float32), 1, "drop", "empty"),
    (np.zeros(5, np.float32), 1, "drop", "sample axis"),
    ([[1.0]], 1, "drop", "numpy array"),
    (np.zeros((4, 2), np.float32), 0, "drop", ">= 1"),
    (np.zeros((4, 2), np.float32), 2, "keep", "last-batch policy"),
    (np.array([[np.nan, 1.0]], np.float32), 1, "drop", "NaN"),
])
def test_calibration_batches_refuses(x, batch, last, match):
    with pytest.raises(PolicyError, match=match):
        tp.calibration_batches(x, batch, last=last)


# --- which CUDA: the TensorRT build's, never cuda-python's ----------------------------------------
def test_cuda_python_version_is_information_only():
    # cuda-bindings links its CUDA runtime statically: 13.5 bindings next to a cu12 TensorRT is
    # a working machine, and an old record's cuda_version (cuda-python's) decides nothing
    old = record(cuda_version="12.9", tensorrt_cuda=None)
    assert tp.check_compatibility(old, dict(ORIN, cuda_python="13.5")) == []
    assert tp.check_compatibility(record(), dict(ORIN, cuda_python="13.5")) == []
    # a cu12 -> cu13 TensorRT swap is caught even when cuda-python stayed the same
    d = tp.check_compatibility(record(tensorrt_cuda="12"), dict(ORIN, tensorrt_cuda="13", cuda_python="12.9"))
    assert len(d) == 1 and "CUDA 12" in d[0] and "CUDA 13" in d[0]
    # unknown on the device (JetPack's Debian packages): loaded, with a warning that it was not checked
    assert tp.check_compatibility(record(), dict(ORIN, tensorrt_cuda=None)) == []
    assert any("could not be checked" in w for w in tp.compatibility_warnings(record(), dict(ORIN, tensorrt_cuda=None)))
    assert "tensorrt_cuda" in tp.RECORD_FIELDS


# --- the lean and dispatch runtimes ---------------------------------------------------------------
LEAN = dict(RTX, tensorrt_runtime="tensorrt_lean", tensorrt_cuda="13", tensorrt_version="11.4.0.106",
            compute_capability="9.0", gpu_name="NVIDIA H100 80GB HBM3")


def rtx_record(**kw):
    base = dict(tensorrt_version="11.4.0.106", tensorrt_cuda="13", gpu_name="NVIDIA H100 80GB HBM3",
                compute_capability="9.0", plan_sha256=SHA, platform="linux-x86_64")
    base.update(kw)
    return tp.compatibility_record(**base)


@pytest.mark.parametrize("runtime", ["tensorrt_lean", "tensorrt_dispatch"])
def test_lean_and_dispatch_runtimes_refuse_ordinary_plans(runtime):
    dev = dict(LEAN, tensorrt_runtime=runtime)
    d = tp.check_compatibility(rtx_record(), dev)
    assert len(d) == 1 and "runs version-compatible plans only" in d[0] and runtime in d[0]
    # never offered for a rebuild: this device has no builder
    assert tp.rebuild_decision(rtx_record(), dev, allow_rebuild=True)[0] == "refuse"
    assert tp.check_compatibility(rtx_record(version_compatible=True), dev) == []
    # the full runtime takes both
    assert tp.check_compatibility(rtx_record(), dict(LEAN, tensorrt_runtime="tensorrt")) == []


def test_a_plan_without_its_lean_runtime_needs_the_exact_version():
    excluded = rtx_record(version_compatible=True, lean_runtime_embedded=False)
    assert tp.lean_runtime_embedded(excluded) is False
    assert tp.check_compatibility(excluded, LEAN) == []
    d = tp.check_compatibility(excluded, dict(LEAN, tensorrt_version="11.4.1.2"))
    assert len(d) == 1 and "exact TensorRT version" in d[0]
    # an embedded one runs on the newer runtime
    assert tp.check_compatibility(rtx_record(version_compatible=True), dict(LEAN, tensorrt_version="11.4.1.2")) == []
    # the dispatch runtime runs only the lean runtime a plan carries
    d = tp.check_compatibility(excluded, dict(LEAN, tensorrt_runtime="tensorrt_dispatch"))
    assert len(d) == 1 and "dispatch runtime" in d[0]


def test_lean_runtime_field_in_records():
    assert rtx_record()["lean_runtime_embedded"] is None
    assert rtx_record(version_compatible=True)["lean_runtime_embedded"] is True  # the default when built
    with pytest.raises(tp.PolicyError, match="not version-compatible"):
        rtx_record(lean_runtime_embedded=False)
    bad = dict(rtx_record(version_compatible=True), lean_runtime_embedded="no")
    assert any("lean_runtime_embedded" in p for p in tp.record_problems(bad))
    # records written before the field existed: version-compatible plans then always embedded it
    old = {k: v for k, v in rtx_record(version_compatible=True).items() if k != "lean_runtime_embedded"}
    assert tp.lean_runtime_embedded(old) is True and tp.check_compatibility(old, LEAN) == []


def test_exclude_lean_runtime_build_plan():
    p = tp.build_plan("10.9.0.34", "fp16", version_compat=True, exclude_lean_runtime=True)
    assert "VERSION_COMPATIBLE" in p.builder_flags and "EXCLUDE_LEAN_RUNTIME" in p.builder_flags
    assert p.lean_runtime_embedded is False and any("10.9.0.34 exactly" in w for w in p.warnings)
    p = tp.build_plan("10.9.0.34", "fp16", version_compat=True)
    assert "EXCLUDE_LEAN_RUNTIME" not in p.builder_flags and p.lean_runtime_embedded is True
    assert tp.build_plan("10.9.0.34", "fp16").lean_runtime_embedded is None
    with pytest.raises(tp.PolicyError, match="version-compatible plans only"):
        tp.build_plan("10.9.0.34", "fp16", exclude_lean_runtime=True)


# --- hardware compatibility is not for Jetson ----------------------------------------------------------
def test_hardware_compatible_plans_are_refused_on_an_integrated_gpu():
    r = record(hardware_compatibility="ampere_plus", compute_capability="8.6", gpu_name="RTX")
    # Orin is compute capability 8.7 (>= 8.0), so only the integrated rule can refuse it
    d = tp.check_compatibility(r, ORIN)
    assert len(d) == 1 and "not supported on JetPack / integrated GPUs" in d[0]
    assert tp.rebuild_decision(r, ORIN, allow_rebuild=True)[0] == "refuse"
    assert tp.check_compatibility(r, dict(ORIN, integrated=False)) == []
