"""What nodes and Triton servers agree on (edgeinfer/triton.py): pure, no server."""
from __future__ import annotations

import pytest

from edgeinfer import triton as policy
from edgeinfer.bundle import load_bundle
from edgeinfer.errors import UsageError


@pytest.mark.parametrize("url, expected", [
    ("http://gpu-host:8000", ("http", "gpu-host:8000")),
    ("grpc://10.0.0.5", ("grpc", "10.0.0.5:8001")),
    ("gpu-host:9000", ("http", "gpu-host:9000")),
    ("http://[::1]:8000/", ("http", "[::1]:8000")),
])
def test_a_server_url_gives_the_protocol_and_address(url, expected):
    assert policy.parse_url(url) == expected


@pytest.mark.parametrize("url", ["ftp://host:21", "http://host:8000/v2/models", "http://:8000", "http://host:99999", ""])
def test_a_url_that_is_no_triton_server_is_refused_with_the_forms_that_work(url):
    with pytest.raises(UsageError, match="expected http://HOST:PORT or grpc://HOST:PORT|port"):
        policy.parse_url(url)


def test_the_served_identity_must_be_this_bundles_digest_and_artifact():
    bundle = load_bundle("phantom-cxr")
    fp32, int8 = bundle.artifact(precision="fp32"), bundle.artifact(precision="int8")
    served = policy.identity(bundle, fp32)
    assert list(served) == list(policy.IDENTITY_KEYS) and served["edgeinfer_bundle_digest"] == bundle.digest
    assert policy.identity_problem(served, bundle, fp32) is None
    other = served | {"edgeinfer_bundle_digest": "0" * 64, "edgeinfer_bundle_version": "9.9"}
    why = policy.identity_problem(other, bundle, fp32)
    assert "bundle digest 0000000000000000…" in why and bundle.digest[:16] in why and "9.9" in why
    assert "model sha256" in policy.identity_problem(served, bundle, int8)
    assert "does not say which bundle" in policy.identity_problem({}, bundle, fp32)


def test_tensors_keep_their_dims_without_the_batch_axis_and_batches_are_bounded():
    assert policy.dims(["batch", 1, 256, 256], "image") == [1, 256, 256]
    with pytest.raises(UsageError, match="leading batch axis"):
        policy.dims([1, 256, 256], "image")
    with pytest.raises(UsageError, match="leading batch axis"):
        policy.dims(["batch", "h", 256], "image")
    assert policy.preferred_batch_sizes(8) == [1, 2, 4, 8] and policy.preferred_batch_sizes(12) == [1, 2, 4, 8, 12]
    with pytest.raises(UsageError, match="max-batch 0"):
        policy.check_max_batch(0)
    # a STAT request is served before URGENT and human reads, which go before ROUTINE (the default)
    p = policy.REQUEST_PRIORITY
    assert p["STAT"] < p["URGENT"] == p["INDETERMINATE"] < p["ROUTINE"] == policy.DEFAULT_PRIORITY == policy.PRIORITY_LEVELS


def test_instances_share_the_box_s_cpus_unless_threads_are_asked():
    assert policy.INSTANCES >= 2           # one instance stalls Triton's priority scheduler 0.5 s at a time
    assert policy.instance_threads(None, 2, 2) == 1 and policy.instance_threads(None, 2, 16) == 8
    assert policy.instance_threads(None, 4, 2) == 1                     # never none
    assert policy.instance_threads(3, 2, 2) == 3                        # asked: as asked
