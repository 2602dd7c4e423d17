"""The INT8 calibration cache of ``edgeinfer build`` is pure: key, name, staleness and the
side-car record are tested here, without a GPU (the calibrator using it: test_trt_build.py)."""
import json

import numpy as np
import pytest

from edgeinfer.trt_policy import PolicyError
from edgeinfer_export import trt_calibration_cache as cc

SHA = "a" * 64
SHA2 = "b" * 64


def stack(n, shape=(1, 4, 4)):
    return np.arange(n * int(np.prod(shape)), dtype=np.float32).reshape((n,) + shape)


def key(**kw):
    base = dict(graph_sha256=SHA, preprocessing_digest=SHA2, method="entropy2", tensorrt_version="10.3.0.30",
                data_digest="c" * 64, batch=8)
    base.update(kw)
    return cc.calibration_cache_key(**base)


def test_cache_key_and_name():
    k = key()
    assert k["tensorrt_version"] == "10.3.0.30" and len(k["digest"]) == 64
    assert cc.calibration_cache_name(k).startswith("calib-entropy2-trt10.3.0-")
    assert cc.calibration_cache_name(k).endswith(".cache")
    assert key()["digest"] == k["digest"]
    for change in (dict(graph_sha256="d" * 64), dict(preprocessing_digest="d" * 64), dict(tensorrt_version="10.3.0.26"),
                   dict(data_digest=None), dict(batch=4)):
        assert key(**change)["digest"] != k["digest"], change
    # a version spelled with fewer parts is the same version
    assert key(tensorrt_version="10.3")["tensorrt_version"] == "10.3.0.0"


@pytest.mark.parametrize("kw, match", [(dict(graph_sha256="abc"), "graph_sha256"),
                                       (dict(preprocessing_digest=None), "preprocessing_digest"),
                                       (dict(method="minmax"), "method"), (dict(tensorrt_version="x"), "version"),
                                       (dict(data_digest="zz"), "data_digest"), (dict(batch=0), "batch")])
def test_cache_key_refuses(kw, match):
    with pytest.raises(PolicyError, match=match):
        key(**kw)


def test_calibration_cache_save_load_and_staleness(tmp_path):
    k = key()
    data = b"TRT-100300-EntropyCalibration2\nimage: 3c010a14\n"
    path = cc.save_calibration_cache(tmp_path / "cc", k, data)
    assert path.name == cc.calibration_cache_name(k) and path.read_bytes() == data
    assert cc.check_calibration_cache(path, k) == []
    assert cc.load_calibration_cache(tmp_path / "cc", k) == (data, [])
    # a different graph, preprocessing or TensorRT: stale, and the reason names the field
    for change, label in ((dict(graph_sha256="d" * 64), "graph sha256 differs"),
                          (dict(preprocessing_digest="d" * 64), "preprocessing differs"),
                          (dict(tensorrt_version="10.7.0"), "TensorRT version differs")):
        problems = cc.check_calibration_cache(path, key(**change))
        assert any(label in p for p in problems), problems
    # a stale key also has a different file name: load finds no cache under its own name
    got, why = cc.load_calibration_cache(tmp_path / "cc", key(tensorrt_version="10.7.0"))
    assert got is None and "no such calibration cache" in why[0]


def test_calibration_cache_without_sidecar_or_header(tmp_path):
    k = key()
    p = tmp_path / cc.calibration_cache_name(k)
    p.write_bytes(b"TRT-x\n")
    assert "no key record" in cc.check_calibration_cache(p, k)[0]
    side = p.with_name(p.name + ".json")
    side.write_text("{not json")
    assert "unreadable" in cc.check_calibration_cache(p, k)[0]
    side.write_text("[1]")
    assert "not a key record" in cc.check_calibration_cache(p, k)[0]
    side.write_text(json.dumps({f: k[f] for f in cc.CACHE_KEY_FIELDS}))
    assert cc.check_calibration_cache(p, k) == []
    p.write_bytes(b"garbage")
    assert "no 'TRT-' header" in cc.check_calibration_cache(p, k)[0]


def test_data_digest_depends_on_values_shape_and_dtype():
    x = stack(2)
    assert cc.data_digest(x) == cc.data_digest(x.copy())
    assert cc.data_digest(x) != cc.data_digest(x.reshape(2, 16))
    assert cc.data_digest(x) != cc.data_digest(x.astype(np.float64))
    y = x.copy()
    y[0, 0, 0, 0] += 1
    assert cc.data_digest(x) != cc.data_digest(y)
