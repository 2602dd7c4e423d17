"""Whether the TensorRT policy lets a plan load on this device (``edgeinfer.trt_policy.compat``): pure,
tested here without a GPU."""
import pytest

from edgeinfer import trt_policy as tp
from edgeinfer.trt_policy import PlanIncompatible, PolicyError
from trt_devices import ORIN, RTX

SHA = "a" * 64
SHA2 = "b" * 64


def record(**kw):
    base = dict(tensorrt_version="10.3.0.30", tensorrt_cuda="12", gpu_name="Orin", compute_capability="8.7",
                plan_sha256=SHA, platform="linux-aarch64")
    base.update(kw)
    return tp.compatibility_record(**base)


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


# --- hardware compatibility is not for Jetson ----------------------------------------------------------
def test_hardware_compatible_plans_are_refused_on_an_integrated_gpu():
    r = record(hardware_compatibility="ampere_plus", compute_capability="8.6", gpu_name="RTX")
    # Orin is compute capability 8.7 (>= 8.0), so only the integrated rule can refuse it
    d = tp.check_compatibility(r, ORIN)
    assert len(d) == 1 and "not supported on JetPack / integrated GPUs" in d[0]
    assert tp.rebuild_decision(r, ORIN, allow_rebuild=True)[0] == "refuse"
    assert tp.check_compatibility(r, dict(ORIN, integrated=False)) == []
