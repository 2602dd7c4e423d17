"""PyTorch -> ONNX -> model bundle, verified against PyTorch before it is written.

Takes any ``nn.Module``: a factory ``package.module:function`` plus a state_dict file, a
TorchScript file, or a ``torch.export`` (.pt2) file. The graph uses opset >= 17, named
inputs and outputs and a dynamic batch axis, passes ``onnx.checker``, and its outputs
are compared with PyTorch's on random and real inputs; export fails above tolerance.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeinfer import __version__ as edgeinfer_version
from edgeinfer._io import publish_dir, staging_dir
from edgeinfer.bundle import MANIFEST, SCHEMA_VERSION, artifact_record, load_bundle, validate_manifest, write_manifest
from edgeinfer.errors import ExportError

from .cam import CAM_OUTPUT, cam_output_entry

DEFAULT_OPSET = 17


@dataclass
class ExportReport:
    bundle_dir: Path
    max_abs_diff: float
    checked: dict
    opset: int
    onnx_bytes: int
    cam: dict | None = None     # the class-activation map output's manifest entry, if there is one


def _torch():
    from edgeinfer._lazy import lazy_import

    return lazy_import("torch", extra="export", purpose="edgeinfer export")


def load_module(*, factory: str | None = None, weights: str | Path | None = None,
                torchscript: str | Path | None = None, exported: str | Path | None = None):
    """Build the user's model from exactly one of the three sources, in eval mode."""
    torch = _torch()
    given = [x for x in (factory, torchscript, exported) if x]
    if len(given) != 1:
        raise ExportError("give exactly one model source: --factory MODULE:FUNCTION (with --weights), "
                          "--torchscript FILE, or --exported FILE (torch.export .pt2).")
    if factory:
        mod_name, _, fn_name = factory.partition(":")
        if not fn_name:
            raise ExportError(f"--factory {factory!r}: expected 'package.module:function'.")
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as exc:
            raise ExportError(f"--factory {factory!r}: cannot import it ({exc}). Is the package on PYTHONPATH?") from exc
        model = fn()
        if not isinstance(model, torch.nn.Module):
            raise ExportError(f"--factory {factory!r} returned {type(model).__name__}, not a torch.nn.Module.")
        if weights:
            try:
                state = torch.load(str(weights), map_location="cpu", weights_only=True)
            except Exception as exc:
                raise ExportError(f"--weights {weights}: not a loadable state_dict ({exc}).") from exc
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ExportError(f"--weights {weights} do not fit the model from {factory}: {exc}") from exc
    elif torchscript:
        try:
            model = torch.jit.load(str(torchscript), map_location="cpu")
        except Exception as exc:
            raise ExportError(f"--torchscript {torchscript}: not a TorchScript file ({exc}).") from exc
    else:
        try:
            model = torch.export.load(str(exported)).module()
        except Exception as exc:
            raise ExportError(f"--exported {exported}: not a torch.export program ({exc}).") from exc
    if hasattr(model, "eval"):
        model.eval()
    return model


def to_onnx(model, sample: np.ndarray, path: Path, *, input_name: str, output_name: str | Sequence[str],
            opset: int = DEFAULT_OPSET) -> None:
    """Export with the TorchScript-based exporter: BatchNorm folded, a dynamic batch axis on every output
    (``output_name``: one name, or one per output of a model returning a tuple)."""
    torch = _torch()
    import onnx

    if opset < 17:
        raise ExportError(f"opset {opset} asked; edgeinfer needs opset >= 17 (LayerNormalization, TensorRT 10).")
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
    names = [output_name] if isinstance(output_name, str) else list(output_name)
    try:
        with torch.no_grad():
            torch.onnx.export(model, (x,), str(path), opset_version=opset, input_names=[input_name],
                              output_names=names, do_constant_folding=True, dynamo=False,
                              dynamic_axes={input_name: {0: "batch"}, **{n: {0: "batch"} for n in names}})
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {exc.__class__.__name__}: {exc}") from exc
    m = onnx.load(str(path))
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported graph fails onnx.checker: {exc}") from exc


def _outputs(model, x) -> list[np.ndarray]:
    torch = _torch()
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    return [t.detach().numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def compare_with_torch(model, onnx_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest |ORT - PyTorch| per named input set, over every output; an output other than the first (a
    class-activation map, whose values are not probabilities) is compared relative to its largest |value|
    when that is above 1."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    diffs = {}
    for label, x in inputs.items():
        refs, gots = _outputs(model, x), sess.run(None, {in_name: x})
        if len(gots) != len(refs):
            raise ExportError(f"{label}: the ONNX graph has {len(gots)} output(s), PyTorch gave {len(refs)}.")
        worst = 0.0
        for k, (ref, got) in enumerate(zip(refs, gots)):
            if got.shape != ref.shape:
                raise ExportError(f"{label}: ONNX output {k} has shape {got.shape}, PyTorch's {ref.shape}.")
            d = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
            worst = max(worst, d / max(1.0, float(np.max(np.abs(ref)))) if k else d)
        diffs[label] = worst
    return diffs


def _graph_with_cam(model, sample: np.ndarray, tolerance: float):
    """``(module to export, CAM head)``: ``model`` returning (probabilities, CAM) when :mod:`export.cam`
    knows its head, checked to give the very probabilities ``model`` gives; else ``(model, None)``."""
    from .cam import find_cam_head, with_cam

    head = find_cam_head(model)
    if head is None:
        return model, None
    graph = with_cam(model, head)
    (ref,), (probs, _) = _outputs(model, sample), _outputs(graph, sample)
    worst = float(np.max(np.abs(ref.astype(np.float64) - probs)))
    if not worst <= tolerance:
        raise ExportError(f"the model's head looks like '{head.kind}' but computing its class-activation map "
                          f"changes its output by {worst:.3g} (> {tolerance:g}); export it with --no-cam")
    return graph, head


def export_bundle(model, config: dict, out_dir: str | Path, *, real_inputs: np.ndarray | None = None,
                  opset: int = DEFAULT_OPSET, tolerance: float = 1e-4, source: dict | None = None,
                  overwrite: bool = False, seed: int = 0, cam: bool = True) -> ExportReport:
    """Export ``model`` into a new bundle at ``out_dir``.

    ``config`` is a manifest without ``inputs``, ``outputs`` and ``artifacts`` (see
    export/configs/phantom-cxr.json). ``real_inputs`` (N, C, H, W) are preprocessed real
    images used for the comparison with PyTorch, next to random ones. With ``cam`` (default), a
    classifier whose head :mod:`export.cam` recognises gets its class-activation map as a second output.
    """
    out_dir = Path(out_dir)
    pp = config["preprocessing"]
    c, (h, w) = int(pp.get("channels", 1)), pp["target_size"]
    in_name, out_name = config.get("input_name", "image"), config.get("output_name", "probs")
    rng = np.random.default_rng(seed)
    checks = {"random_b1": rng.standard_normal((1, c, h, w)).astype(np.float32),
              "random_b3": rng.standard_normal((3, c, h, w)).astype(np.float32)}
    if real_inputs is not None and len(real_inputs):
        checks["real"] = np.ascontiguousarray(real_inputs, dtype=np.float32)

    if out_dir.exists():
        if not overwrite:
            raise ExportError(f"{out_dir} already exists; pass --overwrite to replace it.")
    with tempfile.TemporaryDirectory(prefix="edgeinfer-export-") as tmp:
        stage = Path(tmp) / "bundle"
        stage.mkdir()
        onnx_path = stage / "model.onnx"
        graph, head = (_graph_with_cam(model, checks["random_b3"], tolerance) if cam and config.get("task") ==
                       "classification" else (model, None))
        names = [out_name] + ([CAM_OUTPUT] if head else [])
        to_onnx(graph, checks["random_b1"], onnx_path, input_name=in_name, output_name=names, opset=opset)
        diffs = compare_with_torch(graph, onnx_path, checks)
        worst = max(diffs.values())
        if not np.isfinite(worst) or worst > tolerance:
            raise ExportError(f"ONNX Runtime and PyTorch disagree: max |diff| {worst:.3g} > tolerance {tolerance:g} "
                              f"({', '.join(f'{k}: {v:.3g}' for k, v in diffs.items())}).")
        import onnx
        import torch

        n_out = len(config["labels"])
        manifest = {k: v for k, v in config.items() if k not in ("input_name", "output_name")}
        # a segmentation model gives a probability map per label at its input's size
        out_shape = ["batch", n_out, h, w] if config.get("task") == "segmentation" else ["batch", n_out]
        manifest.update({
            "schema_version": SCHEMA_VERSION,
            "inputs": [{"name": in_name, "shape": ["batch", c, h, w], "dtype": "float32", "layout": "NCHW"}],
            "outputs": [{"name": out_name, "shape": out_shape, "dtype": "float32", "labels": config["labels"]}],
        })
        if head is not None:
            grid = _outputs(graph, checks["random_b1"])[1].shape[2:]
            manifest["outputs"].append(cam_output_entry(config["labels"], grid, (h, w), head.kind))
        manifest["artifacts"] = [artifact_record(
            stage, "model.onnx", id="fp32", precision="fp32", format="onnx",
            produced_by={"tool": "edgeinfer export", "edgeinfer": edgeinfer_version, "torch": torch.__version__,
                         "onnx": onnx.__version__, "opset": opset, "exporter": "torch.onnx (TorchScript)",
                         "source": source or {}, "max_abs_diff_vs_torch": worst, "checked": {k: list(v.shape) for k, v in checks.items()},
                         "tolerance": tolerance, "date": _dt.date.today().isoformat()})]
        validate_manifest(manifest)
        write_manifest(stage, manifest)
        load_bundle(stage)  # the bundle must load before it replaces anything
        staged = staging_dir(out_dir, "exporting")
        try:
            os.chmod(staged, 0o755)  # mkdtemp makes it private; the service user reads bundles
            shutil.copytree(stage, staged, dirs_exist_ok=True)
            publish_dir(staged, out_dir, replace=True)  # old bundle or new one, never half of each
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    cam_entry = next((o for o in manifest["outputs"] if o.get("role")), None)
    return ExportReport(out_dir, worst, diffs, opset, (out_dir / "model.onnx").stat().st_size, cam_entry)


def load_config(path: str | Path) -> dict:
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"--config {path}: cannot read it as JSON ({exc}).") from exc
    missing = [k for k in ("name", "version", "task", "labels", "triage", "applies_to", "preprocessing") if k not in cfg]
    if missing:
        raise ExportError(f"--config {path}: missing keys {missing}.")
    return cfg


def real_inputs_from_dicom(paths: Sequence[str | Path], config: dict, limit: int = 8) -> np.ndarray | None:
    """Preprocess up to ``limit`` DICOM files with the bundle's own spec (for the comparison)."""
    from edgeinfer.errors import InputError
    from edgeinfer.intake import Intake
    from edgeinfer.preprocess import PreprocessSpec

    intake = Intake(PreprocessSpec.from_manifest(config["preprocessing"]))
    out = []
    for p in paths:
        try:
            out.append(intake.read(p).tensor)
        except InputError:
            continue
        if len(out) >= limit:
            break
    return np.stack(out) if out else None


def describe_report(r: ExportReport) -> dict[str, Any]:
    return {"bundle": str(r.bundle_dir), "opset": r.opset, "onnx_bytes": r.onnx_bytes,
            "max_abs_diff_vs_torch": r.max_abs_diff, "checked": r.checked,
            "cam": None if r.cam is None else f"{r.cam['name']} {r.cam['shape']} ({r.cam['geometry']['head']})"}


__all__ = ["load_module", "to_onnx", "compare_with_torch", "export_bundle", "load_config",
           "real_inputs_from_dicom", "ExportReport", "MANIFEST"]
