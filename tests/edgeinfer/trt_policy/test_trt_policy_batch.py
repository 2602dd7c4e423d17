"""The TensorRT policy's batches: optimisation profiles, their DLA limits and INT8 calibration batches
(``edgeinfer.trt_policy.batch``): pure, tested here without a GPU."""
import numpy as np
import pytest

from edgeinfer import trt_policy as tp
from edgeinfer.trt_policy import PolicyError


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
