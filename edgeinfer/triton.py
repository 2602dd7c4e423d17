"""What the nodes and a Triton Inference Server agree on, in one place (pure: no tritonclient, no server).

The model repository for the stock server (``edgeinfer export-triton``), the PyTriton host
(``edgeinfer triton-host``) and the ``triton`` backend (``--backend triton --triton-url URL``) all take the
model's name, its tensors, its batching and priority policy and its identity parameters from here:

- a bundle artifact is served as the model ``<bundle>-<artifact id>`` (``phantom-cxr-int8``);
- tensors are the manifest's, with the leading ``batch`` axis left to Triton's ``max_batch_size``;
- dynamic batching has three priority levels: 1 for STAT, 2 for URGENT and human reads, 3 for ROUTINE (the
  default). A STAT request overtakes queued ROUTINE ones; a ROUTINE request that waited 2 s is delayed
  behind later ones, never rejected;
- two model instances (:data:`INSTANCES`): the priority scheduler stalls 0.5 s at a time with one;
- the model's parameters carry the bundle's identity (name, version, digest, artifact, precision, sha256);
  a client refuses a model whose digest or artifact differs from its own bundle's (:func:`identity_problem`).
"""
from __future__ import annotations

from typing import Mapping, Sequence
from urllib.parse import urlsplit

from .errors import UsageError

#: manifest dtype -> Triton data type (config.pbtxt)
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
          "int32": "TYPE_INT32", "int64": "TYPE_INT64"}
#: worklist priority -> Triton request priority (1 is served first)
REQUEST_PRIORITY = {"STAT": 1, "URGENT": 2, "INDETERMINATE": 2, "ROUTINE": 3}
PRIORITY_LEVELS = 3
DEFAULT_PRIORITY = REQUEST_PRIORITY["ROUTINE"]
#: how long a queued ROUTINE request may wait before later STAT/URGENT ones are served first (it is delayed,
#: never rejected)
ROUTINE_DELAY_US = 2_000_000
#: how long the dynamic batcher holds a request for others to join its batch
QUEUE_DELAY_US = 2_000
#: model instances by default. With priority levels on, Triton's dynamic batcher does not prefetch: it hands a
#: batch on only while an instance is parked waiting for one, and an instance that parks just after a request
#: arrived does not wake it, so the request waits for the batcher's 500 ms poll. With one instance that cost a
#: 0.5 s stall in every 60 to 200 requests on a 2-core box (68 in 90 s at 4 clients); with two, one is nearly
#: always parked: none in 60 s at 16 clients (docs/triton.md, "Two model instances")
INSTANCES = 2
#: the model's parameters that say which bundle and artifact it is
IDENTITY_KEYS = ("edgeinfer_bundle", "edgeinfer_bundle_version", "edgeinfer_bundle_digest", "edgeinfer_artifact",
                 "edgeinfer_precision", "edgeinfer_artifact_sha256")
#: URL schemes of the two protocols (KServe v2 over HTTP/REST and gRPC) and their default ports
SCHEMES = {"http": 8000, "grpc": 8001}


def instance_threads(threads: int | None, instances: int, cpus: int) -> int:
    """Inference threads of each model instance: ``threads`` when asked, else the box's ``cpus`` shared between the
    instances (two instances of all the cores each would fight over them)."""
    return int(threads) if threads else max(1, int(cpus) // max(1, int(instances)))


def model_name(bundle_name: str, artifact_id: str) -> str:
    return f"{bundle_name}-{artifact_id}"


def dims(shape: Sequence, what: str) -> list[int]:
    """A manifest shape ``["batch", d1, d2...]`` -> Triton's dims ``[d1, d2...]``; UsageError otherwise."""
    if not shape or shape[0] != "batch" or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise UsageError(f"{what}: shape {list(shape)} is not ['batch', fixed sizes...]; Triton's batching needs "
                         "a leading batch axis and fixed other dimensions")
    return list(shape[1:])


def tensors(kind: str, specs: Sequence[dict]) -> list[tuple[str, str, list[int]]]:
    """The manifest's ``inputs`` or ``outputs`` (``kind``) as (name, manifest dtype, Triton dims); UsageError for a
    dtype Triton has no type for, or a shape without its batch axis."""
    out = []
    for t in specs:
        what = f"{kind} {t['name']}"
        if t["dtype"] not in DTYPES:
            raise UsageError(f"{what}: dtype {t['dtype']!r} has no Triton data type")
        out.append((t["name"], t["dtype"], dims(t["shape"], what)))
    return out


def preferred_batch_sizes(max_batch: int) -> list[int]:
    return sorted({b for b in (1, 2, 4, 8, 16, 32) if b <= int(max_batch)} | {int(max_batch)})


def check_max_batch(max_batch: int) -> int:
    if not 1 <= int(max_batch) <= 1024:
        raise UsageError(f"--max-batch {max_batch}: from 1 to 1024")
    return int(max_batch)


def identity(bundle, artifact) -> dict[str, str]:
    """The model parameters that name ``bundle``'s ``artifact`` (string values, in :data:`IDENTITY_KEYS` order)."""
    values = (bundle.name, bundle.version, bundle.digest, artifact.id, artifact.precision, artifact.sha256)
    return {k: str(v) for k, v in zip(IDENTITY_KEYS, values)}


def identity_problem(served: Mapping[str, str], bundle, artifact) -> str | None:
    """Why the served model is not ``bundle``'s ``artifact`` (None if it is): a differing digest or artifact
    sha256 is named with both values' first characters."""
    want = identity(bundle, artifact)
    missing = [k for k in ("edgeinfer_bundle_digest", "edgeinfer_artifact_sha256") if not served.get(k)]
    if missing:
        return (f"the server's model does not say which bundle it is (no {', '.join(missing)} parameter): it was "
                "not made by edgeinfer export-triton or triton-host")
    for key, what in (("edgeinfer_bundle_digest", "bundle digest"), ("edgeinfer_artifact_sha256", "model sha256")):
        if served[key] != want[key]:
            return (f"the server's model has {what} {served[key][:16]}…, this node's bundle {want[key][:16]}… "
                    f"(server: {served.get('edgeinfer_bundle', '?')} {served.get('edgeinfer_bundle_version', '?')}; "
                    f"here: {bundle.name} {bundle.version})")
    return None


def backend_choice(backend: str | None, url: str | None, *, url_name: str = "--triton-url",
                   backend_name: str = "--backend") -> tuple[str | None, dict]:
    """(backend, runner settings) from a backend setting and a Triton URL, named as the caller's user types them
    (flags, or the node's settings): a URL means the triton backend and is refused beside another named one;
    ``triton`` needs a URL; ``auto`` (or None) is None, the automatic choice."""
    backend = None if backend in (None, "auto") else backend
    if url:
        if backend not in (None, "triton"):
            raise UsageError(f"{url_name} sends inference to a Triton server; {backend_name} {backend} runs it here: "
                             "give one of them")
        parse_url(url, url_name)
        return "triton", {"triton_url": url}
    if backend == "triton":
        raise UsageError(f"{backend_name} triton needs {url_name} (the Triton server, e.g. http://HOST:8000)")
    return backend, {}


def parse_url(url: str, what: str = "--triton-url") -> tuple[str, str]:
    """``http://host:8000`` or ``grpc://host:8001`` (a bare ``host:port`` is HTTP) -> (protocol, ``host:port``);
    ``what``: the setting's name in a refusal."""
    text = (url or "").strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"{what} {url!r}: {exc}; expected http://HOST:PORT or grpc://HOST:PORT") from None
    if parts.scheme not in SCHEMES or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise UsageError(f"{what} {url!r}: expected http://HOST:PORT or grpc://HOST:PORT "
                         f"(Triton's defaults: HTTP {SCHEMES['http']}, gRPC {SCHEMES['grpc']})")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return parts.scheme, f"{host}:{port or SCHEMES[parts.scheme]}"
