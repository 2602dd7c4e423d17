"""The one list of precisions."""
from edgeinfer import autoselect, gate, trt_policy
from edgeinfer.backends import RUNTIME_PRECISIONS
from edgeinfer.bench import PRECISIONS as BENCH_PRECISIONS
from edgeinfer.precision import ALL, GRAPH, RUNTIME, Precision, rank


def test_graph_and_runtime_precisions():
    assert GRAPH == ("fp32", "fp16", "int8") and RUNTIME == ("bf16",) and set(ALL) == set(GRAPH) | set(RUNTIME)
    assert Precision("bf16").graph is Precision.FP32 and Precision("int8").graph is Precision.INT8


def test_most_precise_first():
    assert sorted(ALL, key=rank) == ["fp32", "fp16", "bf16", "int8"]
    assert rank("fp64") > rank("int8")


def test_every_module_uses_the_one_list():
    assert RUNTIME_PRECISIONS == RUNTIME and trt_policy.PRECISIONS == GRAPH and BENCH_PRECISIONS == ALL
    assert set(autoselect.PRECISIONS) == set(ALL) and gate.REFERENCE_PRECISION == "fp32"
    assert all(autoselect.PRECISION_RANK[p] == rank(p) for p in ALL)
