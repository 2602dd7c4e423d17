"""``edgeinfer calibrate``: add FP16 and INT8 artifacts and a calibration record to a bundle.

Never leaves a half-written bundle: everything is built in a staging folder next to the
target (same file system), the new manifest is validated and the staged bundle is loaded and
hash-checked, and only then is the staging folder renamed into place. Calibrating in place
swaps the old bundle out by rename and deletes it afterwards; on failure the original is
untouched (or renamed back).

What changes in the manifest:

* artifacts ``fp16`` and ``int8`` (``source_artifact: "fp32"``), each with ``produced_by``:
  tool, versions (edgeinfer, onnxruntime, onnx), converter or quantizer, method, samples,
  the preprocessing spec's digest, and for INT8 the form and the nodes kept in FP32;
* a ``calibration`` record: the calibration set's manifest (files, sha256, strata, spec
  digest), method, samples, seed, and the INT8 gate check / mixed-precision search;
* artifacts built from a previous ``fp16``/``int8`` (e.g. TensorRT plans) are removed, since
  their source changed, and the validation verdicts of ``fp16``/``int8`` are dropped: the new
  graphs must be validated again before the runtime will use them.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from edgeinfer import __version__ as edgeinfer_version
from edgeinfer._io import publish_dir, staging_dir
from edgeinfer.bundle import MANIFEST, artifact_record, load_bundle, upsert_artifact, write_manifest
from edgeinfer.gate import GateConfig
from edgeinfer.preprocess import PreprocessSpec

from . import CalibrationError
from .dataset import CalibrationSet, Stages, build_calibration_set, stage
from .quantize import Fp16Config, Fp16Result, Int8Config, Int8Result, convert_fp16, quantize_int8, versions

log = logging.getLogger("edgeinfer.calibration")

FP16_FILE, INT8_FILE = "model.fp16.onnx", "model.int8.onnx"
DERIVED_IDS = ("fp16", "int8")


@dataclass(frozen=True)
class FallbackConfig:
    """Check the INT8 graph against the gate while calibrating; keep layers in FP32 if it fails."""

    gate: GateConfig = GateConfig()
    #: held-out studies to check on (default: the calibration images themselves)
    check_data: str | None = None
    #: reference labels for check_data (AUC and sensitivity in the gate)
    labels: str | None = None
    check_samples: int = 200
    #: at most this many nodes kept in FP32 (None: as many as needed, all but one)
    max_kept: int | None = None


@dataclass
class CalibrateResult:
    bundle_dir: Path
    calibration: dict
    fp16: Fp16Result | None = None
    int8: Int8Result | None = None
    int8_check: dict | None = None
    removed: list[str] = field(default_factory=list)
    cache_hit: bool = False

    @property
    def int8_passed(self) -> bool | None:
        return None if self.int8_check is None else bool(self.int8_check.get("passed"))

    def summary(self) -> dict:
        d = {"bundle": str(self.bundle_dir), "method": self.calibration.get("method"),
             "samples": self.calibration.get("samples"), "tensor_cache_hit": self.cache_hit,
             "artifacts": {}, "removed_artifacts": self.removed}
        if self.fp16:
            d["artifacts"]["fp16"] = {"file": FP16_FILE, "max_abs_diff_vs_fp32_on_calibration": self.fp16.max_abs_diff,
                                      "kept_fp32_ops": self.fp16.kept_fp32_ops}
        if self.int8:
            d["artifacts"]["int8"] = {"file": INT8_FILE, "quant_form": self.int8.form.quant_form,
                                      "max_abs_diff_vs_fp32": self.int8.max_abs_diff,
                                      "kept_fp32": self.int8.kept_fp32}
        if self.int8_check is not None:
            d["int8_gate_check"] = {k: self.int8_check.get(k) for k in ("passed", "check_data", "n_studies", "kept_fp32")}
            d["int8_gate_check"]["reasons"] = self.int8_check.get("final", {}).get("reasons", [])
        return d


# --- staging -------------------------------------------------------------------------------------
def _staging_dir(target: Path) -> Path:
    return staging_dir(target, "calibrating")


def _publish(staged: Path, target: Path, *, replace: bool) -> None:
    """Rename ``staged`` to ``target``; an existing ``target`` (only if ``replace``) is swapped out."""
    try:
        publish_dir(staged, target, replace=replace)
    except FileExistsError:
        raise CalibrationError(f"{target} already exists; choose another --out or pass --overwrite") from None


def _check_set(bundle, cs: CalibrationSet, fb: FallbackConfig, seed: int, cache_dir, stages):
    from edgeinfer.triage import read_study_labels

    from .mixed import CheckSet

    labels = read_study_labels(fb.labels) if fb.labels else None
    if fb.check_data:
        held = build_calibration_set(fb.check_data, bundle, samples=fb.check_samples, seed=seed + 1,
                                     cache_dir=cache_dir, stages=stages)
        return CheckSet.from_calibration_set(held, labels, description=f"check set {fb.check_data}")
    return CheckSet.from_calibration_set(cs, labels, description="calibration images (no held-out check set given)")


def calibrate_bundle(bundle_path: str | os.PathLike, data: str | os.PathLike, *, out: str | os.PathLike | None = None,
                     overwrite: bool = False, samples: int = 200, seed: int = 0,
                     int8: Int8Config | None = Int8Config(), fp16: Fp16Config | None = Fp16Config(),
                     fallback: FallbackConfig | None = FallbackConfig(), cache_dir: str | os.PathLike | None = None,
                     use_cache: bool = True, stages: Stages | None = None) -> CalibrateResult:
    """Build the FP16 and INT8 artifacts of the bundle at ``bundle_path`` from the studies in ``data``.

    ``out``: write a new bundle there instead of updating ``bundle_path`` in place.
    ``int8`` / ``fp16``: None skips that artifact. ``fallback``: None skips the INT8 gate
    check and the mixed-precision search.
    """
    if int8 is None and fp16 is None:
        raise CalibrationError("nothing to do: both the FP16 and the INT8 artifact were switched off")
    src = Path(bundle_path)
    bundle = load_bundle(src)
    target = Path(out) if out is not None else bundle.path
    if out is not None and target.exists() and not overwrite:
        raise CalibrationError(f"{target} already exists; choose another --out or pass --overwrite")
    if out is not None and target.resolve() == bundle.path:
        target, out = bundle.path, None
    ref = bundle.artifact(precision="fp32", format="onnx")
    input_name = bundle.manifest["inputs"][0]["name"]
    spec = PreprocessSpec.from_manifest(bundle.manifest["preprocessing"])
    if bundle.manifest.get("task") == "segmentation" and fallback is not None:
        # the mixed-precision search scores studies as a classifier does; a segmentation bundle's INT8 graph
        # is judged by `edgeinfer validate` (Dice and volumes against FP32) instead
        log.warning("bundle %s segments: no mixed-precision search; validate the INT8 graph with "
                    "`edgeinfer validate` (the segmentation gate)", bundle.name)
        fallback = None

    cs = build_calibration_set(data, bundle, samples=samples, seed=seed, cache_dir=cache_dir, use_cache=use_cache,
                               stages=stages)
    n = len(cs.samples)
    check = cs.tensors[: min(n, 32)]
    staged = _staging_dir(target)
    try:
        os.chmod(staged, stat.S_IMODE(bundle.path.stat().st_mode))
        for name in {MANIFEST} | {a["file"] for a in bundle.manifest["artifacts"]}:
            shutil.copy2(bundle.path / name, staged / name)
        manifest = bundle.manifest
        rebuilt = {i for i, cfg in (("fp16", fp16), ("int8", int8)) if cfg is not None}
        # artifacts built (directly or not) from the graphs we are about to replace are stale: drop them
        stale = set(rebuilt)
        while True:
            more = {a["id"] for a in manifest["artifacts"] if a.get("source_artifact") in stale} - stale
            if not more:
                break
            stale |= more
        removed = sorted(stale - rebuilt)
        for a in manifest["artifacts"]:
            if a["id"] in removed or (a["id"] in rebuilt and a["file"] not in (FP16_FILE, INT8_FILE)):
                (staged / a["file"]).unlink(missing_ok=True)
        manifest = {**manifest, "artifacts": [a for a in manifest["artifacts"] if a["id"] not in removed]}
        common = {"tool": "edgeinfer calibrate", "edgeinfer": edgeinfer_version, **versions(),
                  "samples": n, "spec_digest": spec.digest(), "calibration_set": cs.manifest["tensor_cache"]["key"][:16],
                  "date": _dt.date.today().isoformat()}
        result = CalibrateResult(target, {}, removed=removed, cache_hit=cs.from_cache)

        if fp16 is not None:
            with stage(stages, "FP16 graph", 1) as advance:
                result.fp16 = convert_fp16(staged / ref.record["file"], staged / FP16_FILE, fp16, check_inputs=check)
                if advance:
                    advance(1)
            manifest = upsert_artifact(manifest, artifact_record(
                staged, FP16_FILE, id="fp16", precision="fp16", format="onnx", source_artifact=ref.id,
                produced_by={**common, "method": "fp16-cast", **result.fp16.produced_by(fp16)}))

        if int8 is not None:
            if fallback is None:
                with stage(stages, f"INT8 calibration ({int8.method.value}, {n} images)", n) as advance:
                    reader = cs.reader(input_name, int8.batch_size, progress=advance)
                    result.int8 = quantize_int8(staged / ref.record["file"], staged / INT8_FILE, reader, int8,
                                                samples=n, check_inputs=check)
            else:
                from .mixed import quantize_with_fallback

                checkset = _check_set(bundle, cs, fallback, seed, cache_dir, stages)
                mixed = quantize_with_fallback(staged / ref.record["file"], staged / INT8_FILE,
                                               cs.reader(input_name, int8.batch_size), checkset, bundle, config=int8,
                                               gate=fallback.gate, max_kept=fallback.max_kept, samples=n,
                                               stages=stages)
                result.int8 = mixed.int8
                result.int8_check = mixed.report()
                if not mixed.passed:
                    log.warning("the INT8 graph fails the gate on %s even with %d node(s) kept in FP32: %s",
                                checkset.description, len(mixed.kept_fp32), "; ".join(mixed.final.reasons))
            pb = {**common, **result.int8.produced_by(int8)}
            if result.int8_check is not None:
                pb["gate_check"] = {k: result.int8_check[k] for k in ("check_data", "n_studies", "passed")}
                pb["gate_check"]["gate"] = fallback.gate.as_dict()
            manifest = upsert_artifact(manifest, artifact_record(
                staged, INT8_FILE, id="int8", precision="int8", format="onnx", source_artifact=ref.id, produced_by=pb))

        record = {"tool": "edgeinfer calibrate", "edgeinfer": edgeinfer_version, "date": common["date"],
                  "method": int8.method.value if int8 is not None else None, "samples": n, "seed": seed,
                  "source_artifact": ref.id, "source_sha256": ref.sha256,
                  "artifacts": {a["id"]: a["sha256"] for a in manifest["artifacts"] if a["id"] in rebuilt},
                  "set": {**cs.manifest, "method": int8.method.value if int8 is not None else None}}
        if int8 is not None and int8.method.value == "percentile":
            record["percentile"] = int8.percentile
        if result.int8_check is not None:
            record["int8_gate_check"] = result.int8_check
        manifest["calibration"] = record
        result.calibration = record
        validation = manifest.get("validation")
        if isinstance(validation, dict) and validation.get("precisions"):
            manifest["validation"] = {**validation, "precisions": {
                k: v for k, v in validation["precisions"].items() if k not in stale}}
        write_manifest(staged, manifest)
        load_bundle(staged)  # the staged bundle must load and verify before it replaces anything
        _publish(staged, target, replace=out is None or overwrite)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return result


__all__ = ["FallbackConfig", "CalibrateResult", "calibrate_bundle", "FP16_FILE", "INT8_FILE"]
