"""The INT8 calibration cache of ``edgeinfer build`` (TensorRT 10.x implicit calibration).

A TensorRT calibration cache is only valid for the graph, preprocessing, calibration data,
batch and TensorRT version it was made with. Each cache is written next to a ``.json``
side-car holding that key; a cache whose side-car is missing or differs in any field is
stale and never reused. The cache name (``calib-entropy2-trt10.3.0-<16 hex>.cache``) says
the method and TensorRT version.

Build side only: the runtime deserializes finished plans and never calibrates. The
calibrator in :mod:`edgeinfer_export.trt_build` reads and writes caches through
:func:`load_calibration_cache` and :func:`save_calibration_cache`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from edgeinfer._io import atomic_write
from edgeinfer.errors import PolicyError
from edgeinfer.trt_policy import CALIBRATION_METHODS, check_int, parse_version


def data_digest(x: Any) -> str:
    """sha256 over a calibration stack's dtype, shape and bytes (it keys the cache)."""
    import numpy as np

    a = np.ascontiguousarray(x)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


CACHE_KEY_FIELDS = ("graph_sha256", "preprocessing_digest", "method", "tensorrt_version", "data_digest", "batch")


def calibration_cache_key(*, graph_sha256: str, preprocessing_digest: str, method: str, tensorrt_version: str,
                          data_digest: str | None = None, batch: int | None = None) -> dict:
    """What a calibration cache depends on. A cache whose key differs is stale and never reused.

    TensorRT's own docs leave it to the application: "the network should also be
    recalibrated if its structure changes, or the input data set changes".
    """
    for name, value in (("graph_sha256", graph_sha256), ("preprocessing_digest", preprocessing_digest)):
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
            raise PolicyError(f"{name} must be a lowercase hex sha256, not {value!r}")
    if method not in CALIBRATION_METHODS:
        raise PolicyError(f"calibration method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    v = parse_version(tensorrt_version) + (0, 0, 0)  # 2 to 4 parts; the key spells all 4: "10.3" is "10.3.0.0"
    if data_digest is not None and not re.fullmatch(r"[0-9a-f]{64}", str(data_digest)):
        raise PolicyError(f"data_digest must be a lowercase hex sha256, not {data_digest!r}")
    if batch is not None:
        check_int(batch, "calibration batch", minimum=1)
    key = {"graph_sha256": graph_sha256, "preprocessing_digest": preprocessing_digest, "method": method,
           "tensorrt_version": ".".join(map(str, v[:4])), "data_digest": data_digest, "batch": batch}
    key["digest"] = hashlib.sha256(json.dumps({k: key[k] for k in CACHE_KEY_FIELDS},
                                              sort_keys=True).encode()).hexdigest()
    return key


def calibration_cache_name(key: Mapping[str, Any]) -> str:
    """``calib-entropy2-trt10.3.0-<16 hex>.cache``: the name says the method and TensorRT version."""
    ver = ".".join(key["tensorrt_version"].split(".")[:3])
    return f"calib-{key['method']}-trt{ver}-{key['digest'][:16]}.cache"


def check_calibration_cache(path: str | os.PathLike, key: Mapping[str, Any]) -> list[str]:
    """Why the cache at ``path`` must not be reused for ``key`` (empty list: reusable).

    The cache carries a ``.json`` sidecar with the key it was made for; a cache without
    one, or with any differing field, is stale.
    """
    path = Path(path)
    if not path.is_file():
        return [f"{path.name}: no such calibration cache"]
    side = path.with_name(path.name + ".json")
    if not side.is_file():
        return [f"{path.name}: no key record ({side.name}); its origin is unknown, so it is not reused"]
    try:
        made_for = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"{side.name}: unreadable ({exc.__class__.__name__})"]
    if not isinstance(made_for, dict):
        return [f"{side.name}: not a key record"]
    problems = []
    labels = {"graph_sha256": "graph sha256", "preprocessing_digest": "preprocessing",
              "method": "method", "tensorrt_version": "TensorRT version", "data_digest": "calibration data",
              "batch": "calibration batch"}
    for k in CACHE_KEY_FIELDS:
        a, b = made_for.get(k), key.get(k)
        if a != b:
            def fmt(x):
                return f"{x[:12]}…" if isinstance(x, str) and len(x) == 64 else repr(x)
            problems.append(f"{labels[k]} differs: the cache was made for {fmt(a)}, this build has {fmt(b)}")
    try:
        head = path.read_bytes()[:64]
    except OSError as exc:
        problems.append(f"{path.name}: unreadable ({exc})")
    else:
        if not head.startswith(b"TRT-"):
            problems.append(f"{path.name}: not a TensorRT calibration cache (no 'TRT-' header)")
    return problems


def save_calibration_cache(directory: str | os.PathLike, key: Mapping[str, Any], data: bytes) -> Path:
    """Write the cache and its key sidecar under ``directory``; returns the cache path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / calibration_cache_name(key)
    atomic_write(path.with_name(path.name + ".json"),
                  (json.dumps({k: key.get(k) for k in CACHE_KEY_FIELDS + ("digest",)}, indent=2) + "\n").encode())
    atomic_write(path, bytes(data))
    return path


def load_calibration_cache(directory: str | os.PathLike, key: Mapping[str, Any]) -> tuple[bytes | None, list[str]]:
    """(cache bytes or None, why it was not used)."""
    path = Path(directory) / calibration_cache_name(key)
    problems = check_calibration_cache(path, key)
    if problems:
        return None, problems
    return path.read_bytes(), []


__all__ = ["CACHE_KEY_FIELDS", "data_digest", "calibration_cache_key", "calibration_cache_name",
           "check_calibration_cache", "save_calibration_cache", "load_calibration_cache"]
