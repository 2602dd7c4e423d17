"""Scores -> a triage worklist. Every input file ends up exactly once in the output.

Fail safe: an image whose analysis failed (decode, preprocess, inference, non-finite
output) makes its study INDETERMINATE, which ranks above ROUTINE and goes to a human
read. A study is never dropped.
"""
from __future__ import annotations

import datetime as _dt
import fnmatch
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from . import __version__, dicomio
from .backends import Runner
from .bundle import Bundle
from .errors import EdgeInferError, InferenceError, InputError, NotApplicable
from .preprocess import PreprocessSpec, preprocess_pixels, select_frame
from .vr import shown_body_part, shown_modality, shown_photometric, shown_uid

log = logging.getLogger("edgeinfer.triage")

INDETERMINATE = "INDETERMINATE"
#: sidecar files that sit next to studies; listed as skipped, never read as DICOM
DEFAULT_IGNORE = ("*.csv", "*.json", "*.txt", "*.md", "*.png", "*.jpg", ".*")


# --- policy (pure) --------------------------------------------------------------------------
def priority_order(bundle: Bundle) -> list[str]:
    """Worklist order: the bundle's priorities, with INDETERMINATE just above the lowest."""
    names = [p["name"] for p in bundle.manifest["triage"]["priorities"]]
    return names[:-1] + [INDETERMINATE] + names[-1:]


def priority_for(score: float | None, bundle: Bundle) -> str:
    if score is None or not np.isfinite(score):
        return INDETERMINATE
    for p in bundle.manifest["triage"]["priorities"]:
        if score >= p["min_score"]:
            return p["name"]
    return bundle.manifest["triage"]["priorities"][-1]["name"]


def applicability(ds, bundle: Bundle) -> str | None:
    """None if the bundle handles this image, else the reason it does not."""
    rules = bundle.manifest["applies_to"]
    raw_modality = ds.get("Modality", "")
    modality = str(raw_modality or "").upper().strip()
    if modality not in rules["modalities"]:
        return (f"modality {shown_modality(raw_modality)} is not handled by {bundle.name} "
                f"(it reads {', '.join(rules['modalities'])})")
    parts = rules.get("body_parts")
    if parts:
        raw_body = ds.get("BodyPartExamined", "")
        body = str(raw_body or "").upper().strip()
        if not body and not rules.get("allow_missing_body_part", True):
            return f"body part is not recorded; {bundle.name} needs one of {', '.join(parts)}"
        if body and body not in parts:
            return (f"body part {shown_body_part(raw_body)} is not handled by {bundle.name} "
                    f"(it reads {', '.join(parts)})")
    photometric = rules.get("photometric")
    raw_pi = ds.get("PhotometricInterpretation", "")
    pi = str(raw_pi or "").upper().strip()
    if photometric and pi not in photometric:
        return (f"photometric interpretation {shown_photometric(raw_pi)} is not handled "
                f"(needs {', '.join(photometric)})")
    return None


def image_scores(probs: np.ndarray, bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """(N, n_labels) probabilities -> (image score, finite mask). Score = max over urgent labels."""
    idx = [bundle.labels.index(lab) for lab in bundle.urgent_labels]
    finite = np.isfinite(probs).all(axis=1)
    scores = np.where(finite, probs[:, idx].max(axis=1, initial=-np.inf), np.nan)
    return scores, finite


def study_score(scores: Sequence[float], how: str) -> float | None:
    vals = [s for s in scores if s is not None and np.isfinite(s)]
    if not vals:
        return None
    return float(max(vals) if how == "max" else float(np.mean(vals)))


# --- file discovery ---------------------------------------------------------------------------
def discover(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Every entry under the given files/folders, sorted, each once.

    Not only the regular files: every entry the reader must account for is listed too (a
    folder that cannot be listed, a FIFO, socket or device, a link to a folder, a dangling
    link), so the reader rejects it with a reason instead of it vanishing from the run.
    Links to folders are not followed inside a folder (no loops, no escaping the tree).
    """
    seen: set[str] = set()
    out: list[Path] = []
    for item in inputs:
        top = Path(item)
        found: list[Path] = []
        if top.is_dir():
            stack = [top]
            while stack:
                folder = stack.pop()
                try:
                    with os.scandir(folder) as it:
                        entries = list(it)
                except OSError:
                    found.append(folder)  # unreadable: the reader says why
                    continue
                for entry in entries:
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_dir = False
                    (stack if is_dir else found).append(Path(entry.path))
            found.sort()
        else:
            found = [top]
        for f in found:
            key = os.path.abspath(f)
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


# --- the engine -------------------------------------------------------------------------------
@dataclass
class _Pending:
    path: Path
    ds: object
    tensor: np.ndarray
    info: dict
    read_ms: float
    pre_ms: float


@dataclass
class Worklist:
    bundle: dict
    run: dict
    studies: list[dict]
    skipped: list[dict]
    errors: list[dict]
    summary: dict
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def as_dict(self) -> dict:
        return {"edgeinfer": __version__, "created": self.created, "bundle": self.bundle, "run": self.run,
                "studies": self.studies, "skipped": self.skipped, "errors": self.errors, "summary": self.summary}

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 0


class TriageEngine:
    def __init__(self, bundle: Bundle, runner: Runner, *, batch_size: int = 8,
                 limits: dicomio.ReadLimits | None = None, ignore: Sequence[str] = DEFAULT_IGNORE):
        self.bundle = bundle
        self.runner = runner
        self.spec = PreprocessSpec.from_manifest(bundle.manifest["preprocessing"])
        self.batch_size = max(1, int(batch_size))
        self.limits = limits or dicomio.ReadLimits()
        self.ignore = tuple(ignore)
        self.input_name = bundle.manifest["inputs"][0]["name"]
        self.output_name = bundle.manifest["outputs"][0]["name"]

    # -- public ---------------------------------------------------------------------------
    def run(self, files: Sequence[Path], progress: Callable[[int], None] | None = None) -> Worklist:
        t_start = time.perf_counter()
        report = self.runner.report()
        skipped: list[dict] = []
        errors: list[dict] = []
        images: dict[str, list[dict]] = {}     # study uid -> image results
        failed: dict[str, list[str]] = {}      # study uid -> paths of failed images (listed in errors)
        meta: dict[str, dict] = {}             # study uid -> modality etc.
        pending: list[_Pending] = []

        def flush():
            for res in self._infer(pending):
                images.setdefault(res.pop("_study"), []).append(res)
            pending.clear()

        for f in files:
            outcome = self._read_one(f)
            if isinstance(outcome, _Pending):
                uid = self._study_uid(outcome.ds)
                meta.setdefault(uid, {"modality": shown_modality(outcome.ds.get("Modality", ""), missing="")})
                pending.append(outcome)
                if len(pending) >= self.batch_size:
                    flush()
            else:
                kind, rec, uid = outcome
                (skipped if kind == "skip" else errors).append(rec)
                if kind == "error" and uid:
                    failed.setdefault(uid, []).append(rec["path"])
            if progress:
                progress(1)
        if pending:
            flush()

        studies = self._studies(images, failed, meta, report.as_dict())
        counts = {p: 0 for p in priority_order(self.bundle)}
        for s in studies:
            counts[s["priority"]] += 1
        wall_ms = (time.perf_counter() - t_start) * 1e3
        n_img = sum(len(s["images"]) for s in studies)
        summary = {"files": len(files), "images_scored": n_img, "studies": len(studies), "by_priority": counts,
                   "skipped": len(skipped), "errors": len(errors), "wall_ms": round(wall_ms, 1),
                   "images_per_s": round(n_img / (wall_ms / 1e3), 2) if wall_ms else None}
        accounted = n_img + len(skipped) + len(errors)
        if accounted != len(files):  # a bug, not bad input: refuse to emit a worklist that lost a file
            raise EdgeInferError(f"internal error: {len(files)} files in, {accounted} accounted for in the worklist")
        run = report.as_dict() | {"batch_size": self.batch_size, "activate_ms": _r(self.runner.activate_ms)}
        return Worklist(bundle=self.bundle.summary(), run=run, studies=studies, skipped=skipped,
                        errors=errors, summary=summary)

    # -- steps ----------------------------------------------------------------------------
    def _read_one(self, path: Path):
        rel = str(path)
        for pat in self.ignore:
            if fnmatch.fnmatch(path.name, pat):
                return "skip", {"path": rel, "code": "ignored", "reason": f"ignored (name matches {pat})"}, None
        t0 = time.perf_counter()
        ds = None
        try:
            ds = dicomio.read_dataset(path, self.limits)
            why = applicability(ds, self.bundle)
            if why:
                raise NotApplicable(why)
            frame = select_frame(dicomio.number_of_frames(ds), self.spec)
            stored = dicomio.decode_frame(ds, frame, self.limits)
            t1 = time.perf_counter()
            prepared = preprocess_pixels(stored, ds, self.spec, frame=frame)
            t2 = time.perf_counter()
        except NotApplicable as exc:
            return "skip", {"path": rel, "code": exc.code, "reason": exc.reason}, None
        except InputError as exc:
            uid = exc.study_uid or (self._study_uid(ds) if ds is not None else None)
            rec = {"path": rel, "code": exc.code, "reason": str(exc)}
            if uid:
                rec["study_uid"] = uid
            log.warning("rejected %s: %s", rel, exc.code)
            return "error", rec, uid
        info = {"window": prepared.window, "frame": prepared.frame, "inverted": prepared.inverted,
                "source_shape": list(prepared.source_shape)}
        notes = dicomio.pixel_notes(ds, self.limits) + list(prepared.notes)
        if notes:
            info["notes"] = notes
        return _Pending(path, ds, prepared.tensor, info, read_ms=(t1 - t0) * 1e3,
                        pre_ms=(t2 - t1) * 1e3)

    def _infer(self, batch: list[_Pending]) -> list[dict]:
        """Run a batch; on a backend failure retry image by image so no study is lost."""
        x = np.stack([p.tensor for p in batch]).astype(np.float32, copy=False)
        t0 = time.perf_counter()
        try:
            probs = self._run(x)
            per_ms = (time.perf_counter() - t0) * 1e3 / len(batch)
            return [self._result(p, probs[i], per_ms, None) for i, p in enumerate(batch)]
        except EdgeInferError as exc:
            if len(batch) > 1:
                log.warning("batch of %d failed (%s); retrying one image at a time", len(batch), exc.__class__.__name__)
                return [r for p in batch for r in self._infer([p])]
            return [self._result(batch[0], None, (time.perf_counter() - t0) * 1e3, str(exc))]

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.runner.infer({self.input_name: x}).get(self.output_name)
        n_labels = len(self.bundle.labels)
        if out is None or out.ndim != 2 or out.shape != (x.shape[0], n_labels):
            shape = None if out is None else tuple(out.shape)
            raise InferenceError(f"model output has shape {shape}, expected {(x.shape[0], n_labels)}")
        return np.asarray(out, dtype=np.float64)

    def _result(self, p: _Pending, probs: np.ndarray | None, infer_ms: float, failure: str | None) -> dict:
        ds = p.ds
        res = {"_study": self._study_uid(ds), "path": str(p.path),
               "sop_instance_uid": shown_uid(ds.get("SOPInstanceUID", "")),
               "series_uid": shown_uid(ds.get("SeriesInstanceUID", "")),
               "modality": shown_modality(ds.get("Modality", ""), missing=""), **p.info}
        if probs is not None:
            score, finite = image_scores(probs[None], self.bundle)
            res["label_scores"] = {lab: (float(v) if np.isfinite(v) else None) for lab, v in zip(self.bundle.labels, probs)}
            if finite[0] and 0.0 <= score[0] <= 1.0:
                res.update(status="ok", score=float(score[0]))
            else:
                failure = "model output is not a finite probability"
        if failure:
            res.update(status="indeterminate", score=None, reason=failure)
        res["timings_ms"] = {"read": _r(p.read_ms), "preprocess": _r(p.pre_ms), "infer": _r(infer_ms),
                             "total": _r(p.read_ms + p.pre_ms + infer_ms)}
        return res

    def _studies(self, images: dict, failed: dict, meta: dict, model: dict) -> list[dict]:
        how = self.bundle.manifest["triage"].get("study_score", "max")
        order = {name: i for i, name in enumerate(priority_order(self.bundle))}
        model_rec = {"bundle": self.bundle.name, "bundle_version": self.bundle.version,
                     "precision": model["precision"], "sha256": model["sha256"],
                     "backend": model["backend"], "provider": model["provider"]}
        out = []
        for uid in sorted(set(images) | set(failed)):
            imgs = sorted(images.get(uid, []), key=lambda r: r["path"])
            score = study_score([r.get("score") for r in imgs], how)
            priority = priority_for(score, self.bundle)
            reasons = []
            n_bad = sum(r["status"] != "ok" for r in imgs) + len(failed.get(uid, []))
            if n_bad:
                reasons.append(f"{n_bad} image(s) could not be analysed")
                if order[priority] > order[INDETERMINATE]:   # never let a failure end up ROUTINE
                    priority = INDETERMINATE
            tm = {k: _r(sum(r["timings_ms"][k] for r in imgs)) for k in ("read", "preprocess", "infer", "total")}
            rec = {"study_uid": uid, "priority": priority, "score": score, "modality": meta.get(uid, {}).get("modality", ""),
                   "images": imgs, "failed_images": failed.get(uid, []), "model": model_rec, "timings_ms": tm}
            if reasons:
                rec["reason"] = "; ".join(reasons) + " - needs a human read"
            out.append(rec)
        out.sort(key=lambda s: (order[s["priority"]], -(s["score"] if s["score"] is not None else -1.0), s["study_uid"]))
        return out

    @staticmethod
    def _study_uid(ds) -> str:
        # the reader refused malformed UIDs already; shown_uid keeps that promise here too
        return shown_uid(ds.get("StudyInstanceUID", ""), missing="(no StudyInstanceUID)")


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)


# --- evaluation against known labels (phantoms, or a site's reference reads) ----------------------
def read_study_labels(path: str | os.PathLike) -> dict[str, bool]:
    """A CSV with ``study_uid`` and ``label`` (urgent|normal, or 1|0) columns -> study -> urgent.

    A study is urgent if any of its rows is. ``labels.csv`` from ``edgeinfer phantom`` fits.
    """
    import csv

    from .errors import UsageError

    out: dict[str, bool] = {}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"study_uid", "label"} <= set(reader.fieldnames):
                raise UsageError(f"{path}: needs columns study_uid and label; found {reader.fieldnames}")
            for row in reader:
                urgent = str(row["label"]).strip().lower() in ("urgent", "1", "true", "positive")
                out[row["study_uid"]] = out.get(row["study_uid"], False) or urgent
    except OSError as exc:
        raise UsageError(f"cannot read labels file {path}: {exc}") from exc
    return out


def evaluate_worklist(studies: list[dict], labels: dict[str, bool], operating_point: float) -> dict:
    """AUC, sensitivity and specificity of the worklist's study scores against ``labels``."""
    from .metrics import evaluate

    scored = [(s["score"], labels[s["study_uid"]]) for s in studies
              if s["study_uid"] in labels and s["score"] is not None]
    unscored = sum(1 for s in studies if s["study_uid"] in labels and s["score"] is None)
    if not scored:
        return {"n": 0, "note": "no labelled study was scored"}
    result = evaluate([x for x, _ in scored], [y for _, y in scored], operating_point)
    result["indeterminate_labelled"] = unscored
    result["unlabelled"] = sum(1 for s in studies if s["study_uid"] not in labels)
    return result
