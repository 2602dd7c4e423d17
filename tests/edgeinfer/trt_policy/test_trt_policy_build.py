"""What the TensorRT policy builds (``edgeinfer.trt_policy.build``): pure, tested here without a GPU."""
import json

import pytest

from edgeinfer import trt_policy as tp
from edgeinfer.trt_policy import PolicyError
from trt_devices import ORIN, RTX


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


# --- version-compatible plans without their lean runtime ---------------------------------------
def test_exclude_lean_runtime_build_plan():
    p = tp.build_plan("10.9.0.34", "fp16", version_compat=True, exclude_lean_runtime=True)
    assert "VERSION_COMPATIBLE" in p.builder_flags and "EXCLUDE_LEAN_RUNTIME" in p.builder_flags
    assert p.lean_runtime_embedded is False and any("10.9.0.34 exactly" in w for w in p.warnings)
    p = tp.build_plan("10.9.0.34", "fp16", version_compat=True)
    assert "EXCLUDE_LEAN_RUNTIME" not in p.builder_flags and p.lean_runtime_embedded is True
    assert tp.build_plan("10.9.0.34", "fp16").lean_runtime_embedded is None
    with pytest.raises(tp.PolicyError, match="version-compatible plans only"):
        tp.build_plan("10.9.0.34", "fp16", exclude_lean_runtime=True)
