"""edgeinfer.bench.plan: the --backend / --precision lists, the backends from the registry, and the
planned matrix, where every case that cannot run has its reason."""
from __future__ import annotations

import importlib.util

import pytest

from edgeinfer import bench
from edgeinfer.backends import registered
from edgeinfer.bundle import load_bundle
from edgeinfer.errors import UsageError


def _has_openvino() -> bool:
    return importlib.util.find_spec("openvino") is not None


def test_parse_lists():
    assert bench.parse_list("all", bench.PRECISIONS, "precision") == list(bench.PRECISIONS)
    assert bench.parse_list("int8,fp32", bench.PRECISIONS, "precision") == ["fp32", "int8"]
    assert bench.parse_list("ort,trt", bench.BACKENDS, "backend", {"ort": "onnxruntime", "trt": "tensorrt"}) == \
        ["onnxruntime", "tensorrt"]
    with pytest.raises(UsageError, match="fp64"):
        bench.parse_list("fp64", bench.PRECISIONS, "precision")
    assert bench.parse_batches("4,1,4") == [1, 4]
    for bad in ("0", "x", "1,1000"):
        with pytest.raises(UsageError):
            bench.parse_batches(bad)


def test_backends_are_the_registrys_local_ones_in_report_order():
    assert set(bench.BACKENDS) == {name for name, cls in registered().items() if not cls.remote}
    assert bench.BACKENDS[:3] == ("onnxruntime", "openvino", "tensorrt")
    from edgeinfer.bench import BACKENDS  # the module attribute works with from-imports too

    assert BACKENDS == bench.backend_names()


def test_a_backend_bench_has_no_rule_for_is_listed_with_a_reason(bench_bundle, monkeypatch):
    """--backend all is every registered backend; one bench does not know gets a row, never a guess."""
    from edgeinfer import backends
    from edgeinfer.backends import Backend

    class Fake(Backend):
        name = "zz-fake"

        @classmethod
        def available(cls):
            return True, ""

        @classmethod
        def accepts(cls, artifact, options):
            return True, ""

        @classmethod
        def create(cls, artifact, options):
            raise AssertionError("bench must not run a backend it has no artifact rule for")

    monkeypatch.setitem(backends._REGISTRY, Fake.name, Fake)
    assert bench.BACKENDS[:3] == ("onnxruntime", "openvino", "tensorrt") and bench.BACKENDS[-1] == "zz-fake"
    cases = bench.plan_cases(load_bundle(bench_bundle), ["zz-fake"], ["fp32"])
    assert cases[0].artifact is None and "does not know which artifact" in cases[0].reason


def test_plan_gives_every_impossible_case_a_reason(bench_bundle):
    b = load_bundle(bench_bundle)
    cases = {(c.backend, c.precision): c for c in bench.plan_cases(b, bench.BACKENDS, bench.PRECISIONS)}
    assert len(cases) == len(bench.BACKENDS) * len(bench.PRECISIONS)
    assert cases[("onnxruntime", "fp32")].reason is None and cases[("onnxruntime", "int8")].reason is None
    assert "no fp16 ONNX artifact" in cases[("onnxruntime", "fp16")].reason
    assert "BF16" in cases[("onnxruntime", "bf16")].reason
    for p in bench.PRECISIONS:
        assert cases[("tensorrt", p)].reason  # no TensorRT plan in this bundle, whatever the machine
    if _has_openvino():
        ov = cases[("openvino", "bf16")]
        assert ov.reason is None and ov.hint == "bf16" and ov.artifact.id == "fp32"
