"""A bundle as a Triton Inference Server model repository (``edgeinfer export-triton BUNDLE REPO/``); the
names, batching, priorities and identity parameters come from :mod:`edgeinfer.triton`.

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

from edgeinfer import triton as policy
from edgeinfer._io import atomic_write, publish_dir, staging_dir
from edgeinfer.bundle import Bundle, sha256_file
from edgeinfer.errors import ExportError, UsageError

#: the artifact format -> (Triton platform, model file name in the version folder)
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
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


def _tensors(kind: str, tensors: Sequence[dict]) -> str:
    """``input [...]`` or ``output [...]`` for the manifest's tensors."""
    items = [f'  {{\n    name: "{name}"\n    data_type: {policy.DTYPES[dtype]}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'
             for name, dtype, dims in policy.tensors(kind, tensors)]
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def model_name(bundle: Bundle, artifact_id: str) -> str:
    return policy.model_name(bundle.name, artifact_id)


def model_config(bundle: Bundle, artifact, *, max_batch: int = 8) -> str:
    """The ``config.pbtxt`` of one artifact (checked against Triton's ModelConfig)."""
    try:
        return _model_config(bundle, artifact, max_batch)
    except UsageError as exc:   # the shared policy's refusals, said as what export-triton cannot write
        raise ExportError(str(exc)) from None


def _model_config(bundle: Bundle, artifact, max_batch: int) -> str:
    if artifact.format not in PLATFORMS:
        raise ExportError(f"artifact {artifact.id!r}: format {artifact.format!r} has no Triton platform "
                          f"({', '.join(PLATFORMS)})")
    max_batch = policy.check_max_batch(max_batch)
    platform, filename = PLATFORMS[artifact.format]
    m = bundle.manifest
    text = [f'name: "{model_name(bundle, artifact.id)}"\n', f'platform: "{platform}"\n',
            f'max_batch_size: {int(max_batch)}\n', f'default_model_filename: "{filename}"\n']
    text += [_tensors("input", m["inputs"]), _tensors("output", m["outputs"])]
    preferred = policy.preferred_batch_sizes(max_batch)
    text.append("dynamic_batching {\n"
                f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
                f"  max_queue_delay_microseconds: {policy.QUEUE_DELAY_US}\n"
                f"  priority_levels: {policy.PRIORITY_LEVELS}\n"
                f"  default_priority_level: {policy.DEFAULT_PRIORITY}\n"
                f"  priority_queue_policy {{\n    key: {policy.DEFAULT_PRIORITY}\n    value {{\n"
                f"      timeout_action: DELAY\n      default_timeout_microseconds: {policy.ROUTINE_DELAY_US}\n"
                "      allow_timeout_override: true\n    }\n  }\n}\n")
    text.append(f"instance_group [ {{ count: {policy.INSTANCES} }} ]\n")    # see policy.INSTANCES
    ep = _TRT_EP_PRECISION.get(artifact.precision) if artifact.format == "onnx" else None
    if ep:
        text.append("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n      {\n"
                    '        name: "tensorrt"\n'
                    f'        parameters {{ key: "precision_mode" value: "{ep}" }}\n'
                    '        parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n'
                    "      }\n    ]\n  }\n}\n")
    for key, value in policy.identity(bundle, artifact).items():
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
