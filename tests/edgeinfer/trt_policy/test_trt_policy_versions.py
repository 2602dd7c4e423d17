"""The TensorRT policy reads versions, compute capabilities and hardware-compatibility levels
(``edgeinfer.trt_policy.versions``): pure, tested here without a GPU."""
import pytest

from edgeinfer import trt_policy as tp
from edgeinfer.errors import EdgeInferError, IntegrityError, UsageError
from edgeinfer.trt_policy import PlanIncompatible, PolicyError


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
