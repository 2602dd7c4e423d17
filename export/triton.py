"""A bundle as a Triton Inference Server model repository (``edgeinfer export-triton BUNDLE REPO/``).

One model per artifact, named ``<bundle>-<artifact id>``, for the stock server: an ONNX graph on the
``onnxruntime_onnx`` platform (its FP16 or INT8 Q/DQ graph asks ONNX Runtime's TensorRT execution provider
for that precision on a GPU; the FP32 graph runs as it is), a TensorRT plan on ``tensorrt_plan`` (a plan only
loads on the GPU and TensorRT it was built for). ``config.pbtxt`` holds the names, data types and dimensions
from the manifest, ``max_batch_size``, dynamic batching with three priority levels (1 STAT, 2 URGENT and
human reads, 3 ROUTINE: a STAT request overtakes queued ROUTINE ones; ROUTINE requests may be delayed, none
is dropped), and the bundle's identity as parameters (``edgeinfer_bundle_digest``, the artifact's sha256) so
that a client can check what it talks to. Every generated config is parsed with Triton's own model-config
message (``inference.ModelConfig`` from ``tritonclient``) before it is written.

Each model folder is staged and renamed into place: a repository never holds half a model.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from edgeinfer._io import atomic_write, publish_dir, staging_dir
from edgeinfer.bundle import Bundle, sha256_file
from edgeinfer.errors import ExportError

#: the artifact format -> (Triton platform, model file name in the version folder)
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
#: manifest dtype -> Triton data type
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
          "int32": "TYPE_INT32", "int64": "TYPE_INT64"}
#: worklist priority -> Triton request priority (1 is served first)
REQUEST_PRIORITY = {"STAT": 1, "URGENT": 2, "INDETERMINATE": 2, "ROUTINE": 3}
#: how long a queued ROUTINE request may wait before later STAT/URGENT ones are served first (it is delayed,
#: never rejected)
ROUTINE_DELAY_US = 2_000_000
#: ONNX Runtime's TensorRT execution provider precision for an ONNX artifact's precision
_TRT_EP_PRECISION = {"fp16": "FP16", "int8": "INT8"}


@lru_cache(maxsize=1)
def model_config_message():
    """Triton's ``inference.ModelConfig`` message class, from the ``model_config_pb2`` module tritonclient ships.
    Loaded by its file: tritonclient's grpc package, which would import it, insists on its grpc extra, and that
    extra pins a protobuf older than the one ONNX and OpenVINO use here; the message module itself loads."""
    try:
        import tritonclient
    except ImportError:
        raise ExportError("validating Triton configs needs tritonclient: pip install 'tritonclient>=2.50'") from None
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("edgeinfer_triton_model_config_pb2", path)
    if spec is None or not path.is_file():
        raise ExportError(f"tritonclient {getattr(tritonclient, '__version__', '?')} has no {path.name}; "
                          "install tritonclient>=2.50")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ModelConfig


def parse_config(text: str):
    """``config.pbtxt`` text -> Triton's ``ModelConfig`` message; ExportError naming what Triton would refuse."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, model_config_message()())
    except text_format.ParseError as exc:
        raise ExportError(f"the generated config.pbtxt is not a Triton ModelConfig: {exc}") from None


def _dims(shape: Sequence, what: str) -> list[int]:
    if not shape or shape[0] != "batch" or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise ExportError(f"{what}: shape {list(shape)} is not ['batch', fixed sizes...]; Triton's batching needs "
                          "a leading batch axis and fixed other dimensions")
    return list(shape[1:])


def _tensors(kind: str, tensors: Sequence[dict]) -> str:
    """``input [...]`` or ``output [...]`` for the manifest's tensors."""
    items = []
    for t in tensors:
        what = f"{kind} {t['name']}"
        dtype = DTYPES.get(t["dtype"])
        if dtype is None:
            raise ExportError(f"{what}: dtype {t['dtype']!r} has no Triton data type")
        items.append(f'  {{\n    name: "{t["name"]}"\n    data_type: {dtype}\n'
                     f'    dims: [ {", ".join(map(str, _dims(t["shape"], what)))} ]\n  }}')
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def model_name(bundle: Bundle, artifact_id: str) -> str:
    return f"{bundle.name}-{artifact_id}"


def model_config(bundle: Bundle, artifact, *, max_batch: int = 8) -> str:
    """The ``config.pbtxt`` of one artifact (checked against Triton's ModelConfig)."""
    if artifact.format not in PLATFORMS:
        raise ExportError(f"artifact {artifact.id!r}: format {artifact.format!r} has no Triton platform "
                          f"({', '.join(PLATFORMS)})")
    if not 1 <= int(max_batch) <= 1024:
        raise ExportError(f"--max-batch {max_batch}: from 1 to 1024")
    platform, filename = PLATFORMS[artifact.format]
    m = bundle.manifest
    text = [f'name: "{model_name(bundle, artifact.id)}"\n', f'platform: "{platform}"\n',
            f'max_batch_size: {int(max_batch)}\n', f'default_model_filename: "{filename}"\n']
    text += [_tensors("input", m["inputs"]), _tensors("output", m["outputs"])]
    preferred = sorted({b for b in (1, 2, 4, 8, 16, 32) if b <= int(max_batch)} | {int(max_batch)})
    text.append("dynamic_batching {\n"
                f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
                "  max_queue_delay_microseconds: 2000\n"
                "  priority_levels: 3\n"
                f"  default_priority_level: {REQUEST_PRIORITY['ROUTINE']}\n"
                f"  priority_queue_policy {{\n    key: {REQUEST_PRIORITY['ROUTINE']}\n    value {{\n"
                f"      timeout_action: DELAY\n      default_timeout_microseconds: {ROUTINE_DELAY_US}\n"
                "      allow_timeout_override: true\n    }\n  }\n}\n")
    ep = _TRT_EP_PRECISION.get(artifact.precision) if artifact.format == "onnx" else None
    if ep:
        text.append("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n      {\n"
                    '        name: "tensorrt"\n'
                    f'        parameters {{ key: "precision_mode" value: "{ep}" }}\n'
                    '        parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n'
                    "      }\n    ]\n  }\n}\n")
    for key, value in (("edgeinfer_bundle", bundle.name), ("edgeinfer_bundle_version", bundle.version),
                       ("edgeinfer_bundle_digest", bundle.digest), ("edgeinfer_artifact", artifact.id),
                       ("edgeinfer_precision", artifact.precision), ("edgeinfer_artifact_sha256", artifact.sha256)):
        text.append(f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n')
    out = "".join(text)
    parse_config(out)
    return out


def write_repository(bundle: Bundle, repo: str | os.PathLike, *, artifacts: Sequence[str] | None = None,
                     max_batch: int = 8, overwrite: bool = False) -> list[Path]:
    """One model folder per artifact (``artifacts``: these ids; default every ONNX graph and TensorRT plan) under
    ``repo``: ``config.pbtxt`` and ``1/model.onnx`` (or ``model.plan``), each copied and checked against the
    manifest's sha256. An existing model folder is refused unless ``overwrite``. Returns the model folders."""
    wanted = [a for a in bundle.artifacts if a.format in PLATFORMS and (artifacts is None or a.id in artifacts)]
    if artifacts is not None:
        unknown = sorted(set(artifacts) - {a.id for a in bundle.artifacts})
        if unknown:
            raise ExportError(f"bundle {bundle.name} has no artifact {unknown}; it has {[a.id for a in bundle.artifacts]}")
    if not wanted:
        raise ExportError(f"bundle {bundle.name}: no ONNX graph or TensorRT plan to serve")
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    made = []
    for a in wanted:
        target = repo / model_name(bundle, a.id)
        if target.exists() and not overwrite:
            raise ExportError(f"{target} exists; pass --overwrite to replace it")
        config = model_config(bundle, a, max_batch=max_batch)
        staged = staging_dir(target, "triton")
        try:
            os.chmod(staged, 0o755)
            (staged / "1").mkdir()
            dst = staged / "1" / PLATFORMS[a.format][1]
            shutil.copyfile(bundle.path / a.record["file"], dst)
            if sha256_file(dst) != a.sha256:
                raise ExportError(f"artifact {a.id}: the copy's sha256 differs from the manifest's; the bundle "
                                  "changed while it was being exported")
            atomic_write(staged / "config.pbtxt", config.encode())
            publish_dir(staged, target, replace=overwrite)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        made.append(target)
    return made
