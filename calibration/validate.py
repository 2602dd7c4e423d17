"""Validate every precision in a bundle against FP32 on the same studies, and record the verdicts.

Each precision runs through the runtime itself: the backend registry picks a runner for the
artifact (:func:`edgeinfer.backends.create_runner`) and :class:`edgeinfer.triage.TriageEngine`
reads, preprocesses, scores and prioritises the studies exactly as ``edgeinfer triage`` would.
The worklists are then compared study by study with FP32's:

``agreement``
    fraction of studies whose priority equals FP32's (INDETERMINATE counts like any priority);
``max_abs_score_diff``, ``p99_abs_score_diff``, ``mean_abs_score_diff``
    over studies both precisions scored;
``auc``, ``sensitivity``, ``specificity``
    against reference labels (``--labels``), at the bundle's ``triage.operating_point``;
``per_stratum``
    the same figures per (modality, manufacturer, photometric interpretation, body part);
``pointing_game``, ``heatmap_agreement``
    a bundle with heatmaps: the share of flagged urgent images whose heatmap peaks on the finding
    (``finding_box`` in the labels file, dilated by ``margin_mm``), and the Pearson r of the maps and the
    distance between their peaks against FP32's on the same images;
``passed``, ``reasons``
    the accuracy gate (:func:`edgeinfer.gate.evaluate_gate`).

:func:`record_validation` writes the verdicts into the manifest (atomically): each artifact's
``validation`` field, and a top-level ``validation`` record with the data description, the
date, the gate thresholds and ``runtime_precisions`` (precisions a backend applies at run
time to another artifact's graph, e.g. ``openvino:bf16``).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Mapping, Sequence

import numpy as np

from edgeinfer import __version__ as edgeinfer_version
from edgeinfer.backends import RunnerOptions, create_runner
from edgeinfer.bundle import Artifact, Bundle, load_bundle, sha256_file, write_manifest
from edgeinfer.errors import BackendError
from edgeinfer.gate import GateConfig, evaluate_gate, runtime_precision_key
from edgeinfer.evaluation import evaluate
from edgeinfer.heatmap import CamOutput
from edgeinfer.preprocess import PREPROCESS_IMPL
from edgeinfer.intake import discover
from edgeinfer.triage import INDETERMINATE, engine_for, image_scores, priority_for, priority_order, study_score
from edgeinfer.worklist import flagged_priorities

from . import CalibrationError
from .dataset import Scan, Stages, scan, stage

#: keys every precision's entry in the validate JSON has (None when not measured)
REQUIRED_KEYS = ("auc", "sensitivity", "specificity", "agreement", "max_abs_score_diff", "passed")
#: how far outside the finding's box a heatmap's peak may fall and still point at it (the pointing game)
POINTING_MARGIN_MM = 10.0


@dataclass(frozen=True)
class StudyOutcome:
    score: float | None
    priority: str


@dataclass(frozen=True)
class RuntimeTarget:
    """A precision a backend applies at run time to an artifact's graph (no artifact of its own)."""

    backend: str
    precision: str
    artifact: str = "fp32"

    @property
    def key(self) -> str:
        return runtime_precision_key(self.backend, self.precision)

    @classmethod
    def parse(cls, text: str) -> "RuntimeTarget":
        """``"openvino:bf16"`` or ``"openvino:bf16@fp32"`` (artifact id after @)."""
        spec, _, artifact = text.partition("@")
        backend, sep, precision = spec.partition(":")
        if not sep or not backend or not precision:
            raise CalibrationError(f"runtime precision {text!r}: expected BACKEND:PRECISION, e.g. openvino:bf16")
        return cls(backend, precision, artifact or "fp32")


# --- comparison (pure) -----------------------------------------------------------------------------
def _finite(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def outcomes_from_worklist(studies: Sequence[Mapping]) -> dict[str, StudyOutcome]:
    return {s["study_uid"]: StudyOutcome(_finite(s.get("score")), s["priority"]) for s in studies}


def outcomes_from_probs(probs: np.ndarray, study_uids: Sequence[str], bundle: Bundle) -> dict[str, StudyOutcome]:
    """Model outputs for preprocessed images -> per-study outcome, with the runtime's scoring functions.

    Same rules as :class:`~edgeinfer.triage.TriageEngine`: image score = max over urgent labels,
    a non-finite or out-of-range output makes the image fail, the study score aggregates the
    images' scores, and a study with a failed image is never ranked below INDETERMINATE.
    """
    scores, finite = image_scores(np.asarray(probs, dtype=np.float64), bundle)
    how = bundle.manifest["triage"].get("study_score", "max")
    order = {name: i for i, name in enumerate(priority_order(bundle))}
    per: dict[str, list[float | None]] = {}
    for uid, s, ok in zip(study_uids, scores, finite):
        per.setdefault(uid, []).append(float(s) if ok and 0.0 <= s <= 1.0 else None)
    out = {}
    for uid, vals in per.items():
        score = study_score(vals, how)
        priority = priority_for(score, bundle)
        if any(v is None for v in vals) and order[priority] > order[INDETERMINATE]:
            priority = INDETERMINATE
        out[uid] = StudyOutcome(score, priority)
    return out


def _label_metrics(outcomes: Mapping[str, StudyOutcome], uids: Sequence[str], labels: Mapping[str, bool] | None,
                   operating_point: float) -> dict:
    if not labels:
        return {"auc": None, "sensitivity": None, "specificity": None, "n_labelled": 0}
    pairs = [(outcomes[u].score, labels[u]) for u in uids if u in labels and u in outcomes
             and outcomes[u].score is not None]
    if not pairs:
        return {"auc": None, "sensitivity": None, "specificity": None, "n_labelled": 0}
    ev = evaluate([s for s, _ in pairs], [y for _, y in pairs], operating_point)
    return {"auc": _finite(ev["auc"]), "sensitivity": _finite(ev["sensitivity"]),
            "specificity": _finite(ev["specificity"]), "n_labelled": ev["n"], "positives": ev["positives"]}


def compare_outcomes(ref: Mapping[str, StudyOutcome], got: Mapping[str, StudyOutcome], *,
                     labels: Mapping[str, bool] | None = None, operating_point: float = 0.5,
                     uids: Sequence[str] | None = None) -> dict:
    """One precision's figures against FP32 over ``uids`` (default: every study either one saw).

    A study missing from one side counts as a disagreement. Labels, when given, give AUC,
    sensitivity and specificity of *this* precision's scores.
    """
    uids = sorted(set(ref) | set(got)) if uids is None else list(uids)
    n = len(uids)
    same = sum(1 for u in uids if u in ref and u in got and ref[u].priority == got[u].priority)
    diffs = np.array([abs(got[u].score - ref[u].score) for u in uids
                      if u in ref and u in got and ref[u].score is not None and got[u].score is not None])
    m = {"n_studies": n, "agreement": (same / n) if n else None,
         "max_abs_score_diff": float(diffs.max()) if diffs.size else None,
         "p99_abs_score_diff": float(np.quantile(diffs, 0.99)) if diffs.size else None,
         "mean_abs_score_diff": float(diffs.mean()) if diffs.size else None,
         "n_scored_both": int(diffs.size),
         "disagreements": n - same,
         "indeterminate": sum(1 for u in uids if u in got and got[u].priority == INDETERMINATE)}
    m.update(_label_metrics(got, uids, labels, operating_point))
    return m


# --- heatmaps (pure) ----------------------------------------------------------------------------------
def read_finding_boxes(path: str | os.PathLike) -> dict[str, tuple[str, tuple[float, float, float, float]]]:
    """``labels.csv``'s finding locations: SOP Instance UID -> (finding, (top, left, bottom, right) in stored
    pixels). Rows without a ``finding_box`` (normal images, or a labels file without the column) are left out."""
    import csv

    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            parts = (row.get("finding_box") or "").split()
            if len(parts) == 4 and row.get("sop_instance_uid"):
                out[row["sop_instance_uid"]] = (row.get("finding") or "", tuple(float(v) for v in parts))
    return out


def pointing_game(studies: Sequence[Mapping], labels: Mapping[str, bool], boxes: Mapping, flagged: Collection[str],
                  margin_mm: float) -> dict:
    """Share of the images with a known finding, in urgent studies this precision flags, whose heatmap peaks
    inside the finding's box dilated by ``margin_mm`` (the map of the finding's own label, else the image's
    first). Images of those studies without a heatmap (scored below the operating point) are counted apart."""
    hits = n = without = 0
    for s in studies:
        if not labels.get(s["study_uid"]) or s["priority"] not in flagged:
            continue
        for img in s["images"]:
            known = boxes.get(img.get("sop_instance_uid", ""))
            if known is None:
                continue
            maps = img.get("heatmaps") or []
            if not maps:
                without += 1
                continue
            finding, (top, left, bottom, right) = known
            m = next((h for h in maps if h["label"] == finding), maps[0])
            sp = m.get("spacing_mm") or [0.0, 0.0]
            dr, dc = (margin_mm / sp[0], margin_mm / sp[1]) if sp[0] and sp[1] else (0.0, 0.0)
            r, c = m["peak_rc"]
            hits += bool(top - dr <= r < bottom + dr and left - dc <= c < right + dc)
            n += 1
    return {"score": hits / n if n else None, "hits": hits, "n": n, "margin_mm": margin_mm,
            "flagged_images_without_heatmap": without}


def heatmap_agreement(ref: Sequence[Mapping], got: Sequence[Mapping]) -> dict:
    """This precision's heatmaps against FP32's on the images and labels both have one: Pearson r of the grids
    (mean, min) and the distance between the peaks in mm (median, max)."""
    from edgeinfer.heatmap import peak_distance_mm, pearson

    def maps(studies):
        return {(img.get("sop_instance_uid", img["path"]), h["label"]): h
                for s in studies for img in s["images"] for h in img.get("heatmaps") or []}

    a, b = maps(ref), maps(got)
    both = sorted(set(a) & set(b))
    rs = [r for k in both if (r := pearson(a[k]["grid"], b[k]["grid"])) is not None]
    dist = [d for k in both if (d := peak_distance_mm(a[k]["peak_rc"], b[k]["peak_rc"], a[k].get("spacing_mm")))
            is not None]
    return {"n": len(both), "only_fp32": len(set(a) - set(b)), "only_this": len(set(b) - set(a)),
            "r_mean": float(np.mean(rs)) if rs else None, "r_min": float(np.min(rs)) if rs else None,
            "peak_distance_mm_median": float(np.median(dist)) if dist else None,
            "peak_distance_mm_max": float(np.max(dist)) if dist else None}


def segmentation_agreement(ref: Sequence[Mapping], got: Sequence[Mapping], gate: GateConfig) -> dict:
    """Each study's masks and volumes against FP32's: the mean and lowest Dice over the studies where either
    found something, and the share of studies whose volume (all labels) is within
    max(``gate.max_volume_rel_diff``, ``gate.max_volume_abs_diff_ml``) of FP32's."""
    from edgeinfer.evaluation import dice
    from edgeinfer.segmentation import unpack_mask

    by_uid = {s["study_uid"]: s for s in got}
    dices, within, worst = [], [], None
    for r in ref:
        g = by_uid.get(r["study_uid"])
        if g is None or not r.get("segmentation") or not g.get("segmentation"):
            continue
        a, b = unpack_mask(r["segmentation"]["mask"]), unpack_mask(g["segmentation"]["mask"])
        if a.shape == b.shape and (a.any() or b.any()):
            dices.append(dice(a, b))
        va, vb = sum(r.get("volumes_ml", {}).values()), sum(g.get("volumes_ml", {}).values())
        allowed = max(gate.max_volume_rel_diff * va, gate.max_volume_abs_diff_ml)
        within.append(abs(vb - va) <= allowed + 1e-9)
        if worst is None or abs(vb - va) - allowed > worst[0]:
            worst = (abs(vb - va) - allowed, {"study_uid": r["study_uid"], "ml": round(vb, 3), "fp32_ml": round(va, 3)})
    return {"n_studies": len(within), "n_with_masks": len(dices),
            "mean_dice_vs_fp32": round(float(np.mean(dices)), 5) if dices else None,
            "min_dice_vs_fp32": round(float(np.min(dices)), 5) if dices else None,
            "volume_within_tolerance": round(sum(within) / len(within), 5) if within else None,
            "worst_volume_diff": worst[1] if worst else None}


def compare_by_stratum(ref, got, strata: Mapping[str, str], **kw) -> dict[str, dict]:
    groups: dict[str, list[str]] = {}
    for u in sorted(set(ref) | set(got)):
        groups.setdefault(strata.get(u, "(unknown)"), []).append(u)
    return {label: compare_outcomes(ref, got, uids=uids, **kw) for label, uids in sorted(groups.items())}


# --- running the bundle ------------------------------------------------------------------------------
@dataclass
class ValidationReport:
    bundle: dict
    date: str
    data: dict
    gate: GateConfig
    precisions: dict[str, dict] = field(default_factory=dict)          # artifact id -> entry
    runtime_precisions: dict[str, dict] = field(default_factory=dict)  # "backend:precision" -> entry

    @property
    def passed(self) -> bool:
        entries = list(self.precisions.values()) + list(self.runtime_precisions.values())
        return all(e.get("passed") is True for e in entries)

    def as_dict(self) -> dict:
        return {"edgeinfer": edgeinfer_version, "bundle": self.bundle, "date": self.date, "data": self.data,
                "gate": self.gate.as_dict(), "passed": self.passed,
                "precisions": self.precisions, "runtime_precisions": self.runtime_precisions}


def _study_strata(scan_result: Scan) -> dict[str, str]:
    first: dict[str, tuple[str, str]] = {}
    for c in scan_result.candidates:
        if c.study_uid not in first or c.relpath < first[c.study_uid][0]:
            first[c.study_uid] = (c.relpath, c.stratum.label)
    return {u: label for u, (_, label) in first.items()}


def _run(bundle: Bundle, artifact: Artifact, files: list[Path], options: RunnerOptions, backend: str | None,
         batch_size: int, stages: Stages | None, what: str):
    with create_runner(artifact, options, backend=backend) as runner:
        engine = engine_for(bundle, runner, batch_size=batch_size)
        with stage(stages, f"validate {what}", len(files)) as advance:
            wl = engine.run(files, progress=advance)
    return wl


def _data_description(data: str | os.PathLike, scan_result: Scan, labels_path, labels) -> dict:
    strata: dict[str, int] = {}
    for label in _study_strata(scan_result).values():
        strata[label] = strata.get(label, 0) + 1
    d = {"path": str(data), "files": scan_result.n_files, "images": len(scan_result.candidates),
         "studies": len({c.study_uid for c in scan_result.candidates}), "fingerprint": scan_result.fingerprint(),
         "strata": dict(sorted(strata.items())), "labels": None}
    if labels_path:
        d["labels"] = {"file": Path(labels_path).name, "sha256": sha256_file(Path(labels_path)),
                       "studies": len(labels), "urgent": sum(1 for v in labels.values() if v)}
    return d


def _entry(metrics: dict, per_stratum: dict, fp32_metrics: dict, gate: GateConfig, artifact: Artifact,
           run: dict, rejected: int, reference: bool = False) -> dict:
    if reference:
        verdict = {"passed": True, "reasons": [], "checked": [], "notes": ["reference precision"]}
    else:
        verdict = evaluate_gate(fp32_metrics, metrics, gate).as_dict()
    e = {key: metrics.get(key) for key in REQUIRED_KEYS if key != "passed"}
    e.update({k: v for k, v in metrics.items() if k not in e})
    e.update(verdict)
    e.update({"artifact": artifact.id, "precision": run.get("precision", artifact.precision),
              "format": artifact.format, "artifact_sha256": artifact.sha256,
              "ran_on": {k: run.get(k) for k in ("backend", "provider", "device", "precision")},
              "rejected_files": rejected, "per_stratum": per_stratum})
    if reference:
        e["reference"] = True
    return e


def validate_bundle(bundle: Bundle, data: str | os.PathLike, *, labels_path: str | os.PathLike | None = None,
                    gate: GateConfig | None = None, artifacts: Sequence[str] | None = None,
                    runtime: Sequence[RuntimeTarget] = (), device: str = "cpu", threads: int | None = None,
                    batch_size: int = 8, backend: str | None = None, stages: Stages | None = None,
                    pointing_margin_mm: float = POINTING_MARGIN_MM) -> ValidationReport:
    """Run FP32 and every other artifact (or the ``artifacts`` ids) on ``data``; compare; gate.

    ``backend``: run the artifacts on this backend (default: the registry's first that can).
    FP32 always runs on ONNX Runtime's CPU provider: the reference must not depend on the device.

    An artifact no backend can run here (a TensorRT plan on a machine without a GPU) is
    listed with ``skipped`` and ``passed: None``; it is not recorded as validated.

    A bundle whose graph outputs a class-activation map also gets, per precision, ``pointing_game`` (with
    finding boxes in the labels file) and ``heatmap_agreement`` with FP32, which the gate checks.
    """
    from edgeinfer.triage import read_study_labels

    gate = gate or GateConfig()
    if not Path(data).exists():
        raise CalibrationError(f"no such folder: {data}")
    labels = read_study_labels(labels_path) if labels_path else None
    op = float(bundle.manifest["triage"]["operating_point"])
    with stage(stages, "reading headers", len(discover([data]))) as advance:
        scan_result = scan(data, bundle, progress=advance)
    if not scan_result.candidates:
        raise CalibrationError(f"no image under {data} that bundle {bundle.name} applies to "
                               f"({scan_result.n_files} files: {scan_result.skipped_summary()})")
    strata = _study_strata(scan_result)
    files = sorted({c.path for c in scan_result.candidates})
    options = RunnerOptions(device=device, threads=threads)

    ref_art = bundle.artifact(precision="fp32", format="onnx")
    wanted = [a for a in bundle.artifacts if a.id != ref_art.id and (artifacts is None or a.id in artifacts)]
    if artifacts is not None:
        unknown = sorted(set(artifacts) - {a.id for a in bundle.artifacts} - {ref_art.id})
        if unknown:
            raise CalibrationError(f"bundle {bundle.name} has no artifact {unknown}; it has "
                                   f"{[a.id for a in bundle.artifacts]}")
    wl_ref = _run(bundle, ref_art, files, RunnerOptions(threads=threads), "onnxruntime", batch_size, stages,
                  ref_art.id)
    ref = outcomes_from_worklist(wl_ref.studies)
    kw = {"labels": labels, "operating_point": op}
    has_maps = CamOutput.of(bundle) is not None
    boxes = read_finding_boxes(labels_path) if labels_path and has_maps else {}
    flagged = flagged_priorities(bundle)

    segmenting = bundle.manifest.get("task") == "segmentation"
    truth = None
    if segmenting and labels_path:
        from edgeinfer.evaluation import segmentation_truth
        truth = segmentation_truth(labels_path)

    def with_heatmaps(metrics: dict, studies) -> dict:
        if segmenting:
            metrics["segmentation"] = segmentation_agreement(wl_ref.studies, studies, gate)
            if truth is not None:
                from edgeinfer.evaluation import evaluate_segmentation
                ev = evaluate_segmentation(studies, truth, flagged)
                metrics["segmentation"]["truth"] = {k: v for k, v in ev.items() if k != "studies"}
        if has_maps:
            metrics["heatmap_agreement"] = heatmap_agreement(wl_ref.studies, studies)
            metrics["pointing_game"] = (pointing_game(studies, labels, boxes, flagged, pointing_margin_mm)
                                        if boxes else None)
        return metrics

    ref_metrics = with_heatmaps(compare_outcomes(ref, ref, **kw), wl_ref.studies)
    report = ValidationReport(bundle=bundle.summary(),
                              date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                              data=_data_description(data, scan_result, labels_path, labels), gate=gate)
    report.precisions[ref_art.id] = _entry(ref_metrics, compare_by_stratum(ref, ref, strata, **kw), ref_metrics, gate,
                                           ref_art, wl_ref.run, len(wl_ref.errors), reference=True)

    def one(artifact: Artifact, opts: RunnerOptions, backend: str | None, what: str) -> dict:
        try:
            wl = _run(bundle, artifact, files, opts, backend, batch_size, stages, what)
        except BackendError as exc:  # no backend here (a TensorRT plan without a GPU), or it cannot load
            return {**{k: None for k in REQUIRED_KEYS}, "artifact": artifact.id, "precision": artifact.precision,
                    "format": artifact.format, "artifact_sha256": artifact.sha256,
                    "skipped": f"{exc.__class__.__name__}: {exc}", "reasons": ["could not run here"]}
        got = outcomes_from_worklist(wl.studies)
        metrics = with_heatmaps(compare_outcomes(ref, got, **kw), wl.studies)
        return _entry(metrics, compare_by_stratum(ref, got, strata, **kw), ref_metrics, gate, artifact, wl.run,
                      len(wl.errors))

    for a in wanted:
        report.precisions[a.id] = one(a, options, backend, a.id)
    for t in runtime:
        base = bundle.artifact(id=t.artifact)
        opts = RunnerOptions(device=device, threads=threads, precision_hint=t.precision)
        entry = one(base, opts, t.backend, t.key)
        entry.update({"backend": t.backend, "precision": t.precision})
        report.runtime_precisions[t.key] = entry
    return report


# --- the manifest ------------------------------------------------------------------------------------
_SUMMARY_KEYS = ("passed", "reasons", "auc", "sensitivity", "specificity", "agreement", "max_abs_score_diff",
                 "p99_abs_score_diff", "n_studies", "n_labelled", "pointing_game", "heatmap_agreement", "segmentation")


def _artifact_validation(entry: dict, report: ValidationReport, data_id: str) -> dict:
    keep = {k: v for k, v in entry.items() if k not in ("artifact", "format")}
    keep.update({"date": report.date, "data": data_id, "gate": report.gate.as_dict(), "tool": "edgeinfer validate",
                 "edgeinfer": edgeinfer_version, "preprocessing_impl": PREPROCESS_IMPL})
    return keep


def record_validation(bundle_path: str | os.PathLike, report: ValidationReport) -> Path:
    """Write ``report`` into the bundle's manifest (atomically); the artifacts must be the ones validated."""
    bundle = load_bundle(bundle_path)  # verifies every hash again
    m = bundle.manifest
    data_id = hashlib.sha256(report.data["fingerprint"].encode()).hexdigest()[:16]
    by_id = {a["id"]: a for a in m["artifacts"]}
    for ident, entry in report.precisions.items():
        rec = by_id.get(ident)
        if rec is None or entry.get("skipped"):
            continue
        if rec["sha256"] != entry["artifact_sha256"]:
            raise CalibrationError(f"artifact {ident} changed while it was being validated; validate again")
        rec["validation"] = _artifact_validation(entry, report, data_id)
    old = m.get("validation") or {}
    runtime = {k: v for k, v in (old.get("runtime_precisions") or {}).items()
               if by_id.get(v.get("artifact", ""), {}).get("sha256") == v.get("artifact_sha256")}
    for key, entry in report.runtime_precisions.items():
        if not entry.get("skipped"):
            runtime[key] = _artifact_validation(entry, report, data_id)
    m["validation"] = {
        "tool": "edgeinfer validate", "edgeinfer": edgeinfer_version, "preprocessing_impl": PREPROCESS_IMPL,
        "date": report.date, "data_id": data_id,
        "data": report.data, "gate": report.gate.as_dict(),
        "precisions": {i: {k: e.get(k) for k in _SUMMARY_KEYS} | ({"skipped": e["skipped"]} if e.get("skipped") else {})
                       for i, e in report.precisions.items()},
        "runtime_precisions": runtime,
    }
    return write_manifest(bundle.path, m)


__all__ = ["REQUIRED_KEYS", "StudyOutcome", "RuntimeTarget", "outcomes_from_worklist", "outcomes_from_probs",
           "compare_outcomes", "compare_by_stratum", "ValidationReport", "validate_bundle", "record_validation"]
