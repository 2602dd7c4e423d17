"""Scores -> a triage worklist. Every input file ends up exactly once in the output.

Fail safe: an image whose analysis failed (decode, preprocess, inference, non-finite
output) makes its study INDETERMINATE, which ranks above ROUTINE and goes to a human
read. A study is never dropped.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import __version__, dicomio
from .backends import Runner
from .bundle import Bundle
from .errors import EdgeInferError, UsageError
from .heatmap import CamOutput, image_heatmaps, spacing_mm
from .intake import DEFAULT_IGNORE, Image, Intake, Pool
from .vr import shown_modality, shown_uid
from .tasks import image_scores as _image_scores
from .tasks import task_for
from .worklist import INDETERMINATE, flagged_priorities, priority_order, sort_studies  # noqa: F401 (re-exported)

log = logging.getLogger("edgeinfer.triage")

#: which studies' images get heatmaps (when the graph outputs a class-activation map)
HEATMAPS = ("flagged", "none")


# --- policy (pure) --------------------------------------------------------------------------


def priority_for(score: float | None, bundle: Bundle) -> str:
    if score is None or not np.isfinite(score):
        return INDETERMINATE
    for p in bundle.manifest["triage"]["priorities"]:
        if score >= p["min_score"]:
            return p["name"]
    return bundle.manifest["triage"]["priorities"][-1]["name"]


def image_scores(probs: np.ndarray, bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """(N, n_labels) probabilities -> (image score, finite mask). Score = max over urgent labels
    (the classification task's rule, :func:`edgeinfer.tasks.image_scores`)."""
    return _image_scores(probs, [bundle.labels.index(lab) for lab in bundle.urgent_labels])


def study_score(scores: Sequence[float], how: str) -> float | None:
    vals = [s for s in scores if s is not None and np.isfinite(s)]
    if not vals:
        return None
    return float(max(vals) if how == "max" else float(np.mean(vals)))


# --- the engine -------------------------------------------------------------------------------
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
                 limits: dicomio.ReadLimits | None = None, ignore: Sequence[str] = DEFAULT_IGNORE,
                 workers: int = 1, processes: bool = False, pool: Pool | None = None, heatmaps: str = "flagged"):
        self.bundle = bundle
        self.runner = runner
        #: ``pool``: an intake pool kept between runs (the node's worker processes); it brings its own
        #: intake, workers and kind, and ``limits``, ``ignore``, ``workers``, ``processes`` are not used
        self.pool = pool
        self.intake = pool.intake if pool is not None else Intake.for_bundle(bundle, limits=limits, ignore=ignore)
        self.batch_size = max(1, int(batch_size))
        #: intake threads (or, with ``processes``, processes) working ahead of inference (0: none)
        self.workers = pool.workers if pool is not None else max(0, int(workers))
        self.processes = pool.processes if pool is not None else bool(processes)
        self.input_name = bundle.manifest["inputs"][0]["name"]
        self.output_name = bundle.manifest["outputs"][0]["name"]
        self.task = task_for(bundle)   # what turns the model's output into each image's result (edgeinfer/tasks.py)
        #: the graph's class-activation map, kept (as the worklist's ``heatmaps``) for the images of flagged
        #: studies (``heatmaps="flagged"``, above the lowest priority) or for none (``"none"``)
        if heatmaps not in HEATMAPS:
            raise UsageError(f"heatmaps {heatmaps!r}: expected one of {', '.join(HEATMAPS)}")
        self.cam = CamOutput.of(bundle) if heatmaps != "none" else None
        self.operating_point = float(bundle.manifest["triage"].get("operating_point", 0.5))
        self.flagged = flagged_priorities(bundle)

    # -- public ---------------------------------------------------------------------------
    def run(self, files: Sequence[Path], progress: Callable[[int], None] | None = None) -> Worklist:
        t_start = time.perf_counter()
        skipped: list[dict] = []
        errors: list[dict] = []
        images: dict[str, list[dict]] = {}     # study uid -> image results
        failed: dict[str, list[str]] = {}      # study uid -> paths of failed images (listed in errors)
        meta: dict[str, dict] = {}             # study uid -> modality etc.
        pending: list[Image] = []

        def flush():
            for res in self._infer(pending):
                images.setdefault(res.pop("_study"), []).append(res)
            pending.clear()

        # the pool prepares the next batch while this thread infers the current one
        for outcome in self.intake.stream(files, workers=self.workers, processes=self.processes,
                                          ahead=max(2 * self.workers, self.batch_size), pool=self.pool):
            if isinstance(outcome, Image):
                meta.setdefault(outcome.study_uid, {"modality": shown_modality(outcome.ds.get("Modality", ""),
                                                                                missing="")})
                pending.append(outcome)
                if len(pending) >= self.batch_size:
                    flush()
            else:
                (skipped if outcome.skipped else errors).append(outcome.record())
                if not outcome.skipped:
                    log.warning("rejected %s: %s", outcome.path, outcome.code)
                    if outcome.study_uid:
                        failed.setdefault(outcome.study_uid, []).append(str(outcome.path))
            if progress:
                progress(1)
        if pending:
            flush()

        report = self.runner.report()   # after the run: a remote runner knows then which server and model ran
        studies = self._studies(images, failed, meta, report.as_dict())
        summary = run_summary(self.bundle, files, studies, skipped, errors, t_start)
        run = report.as_dict() | {"batch_size": self.batch_size, "intake_workers": self.workers,
                                  "intake_processes": self.processes and self.workers > 0,
                                  "activate_ms": _r(self.runner.activate_ms)}
        return Worklist(bundle=self.bundle.summary(), run=run, studies=studies, skipped=skipped,
                        errors=errors, summary=summary)

    # -- steps ----------------------------------------------------------------------------
    def _infer(self, batch: list[Image]) -> list[dict]:
        """Run a batch; on a backend failure retry image by image so no study is lost."""
        x = np.stack([p.tensor for p in batch]).astype(np.float32, copy=False)
        t0 = time.perf_counter()
        try:
            probs, cams = self._run(x)
            per_ms = (time.perf_counter() - t0) * 1e3 / len(batch)
            return [self._result(p, probs[i], per_ms, None, None if cams is None else cams[i])
                    for i, p in enumerate(batch)]
        except EdgeInferError as exc:
            if len(batch) > 1:
                log.warning("batch of %d failed (%s); retrying one image at a time", len(batch), exc.__class__.__name__)
                return [r for p in batch for r in self._infer([p])]
            return [self._result(batch[0], None, (time.perf_counter() - t0) * 1e3, str(exc))]

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The task's checked output, and the CAM (N, labels, h, w) when kept (None if the graph gave a map of
        another shape: scoring goes on without heatmaps, said once in the log)."""
        out = self.runner.infer({self.input_name: x})
        probs = self.task.check_output(out.get(self.output_name), x.shape[0])
        if self.cam is None:
            return probs, None
        cam = out.get(self.cam.name)
        want = (x.shape[0], len(self.cam.labels), *self.cam.grid)
        if cam is None or tuple(cam.shape) != want:
            log.warning("the model's %s output has shape %s, its manifest says %s: no heatmaps",
                        self.cam.name, None if cam is None else tuple(cam.shape), want)
            self.cam = None
            return probs, None
        return probs, np.asarray(cam, np.float32)

    def _result(self, p: Image, probs: np.ndarray | None, infer_ms: float, failure: str | None,
                cam: np.ndarray | None = None) -> dict:
        ds, pre = p.ds, p.prepared
        res = {"_study": p.study_uid, "path": str(p.path),
               "sop_instance_uid": shown_uid(ds.get("SOPInstanceUID", "")),
               "series_uid": shown_uid(ds.get("SeriesInstanceUID", "")),
               "modality": shown_modality(ds.get("Modality", ""), missing=""),
               "window": pre.window, "frame": pre.frame, "inverted": pre.inverted,
               "source_shape": list(pre.source_shape)}
        if p.notes:
            res["notes"] = p.notes
        if probs is not None:
            fields = self.task.image_result(probs)
            failure = fields.pop("reason", None) if fields.get("score") is None else None
            res.update(fields)
            if failure is None:
                res["status"] = "ok"
        if failure:
            res.update(status="indeterminate", score=None, reason=failure)
        elif cam is not None:   # made into heatmaps if the study is flagged (_studies), then dropped
            res["_cam"], res["_spacing"] = cam, spacing_mm(ds)
        t = p.timings_ms
        read_ms = t["read"] + t["decode"]   # the worklist's "read" has always included decoding
        res["timings_ms"] = {"read": _r(read_ms), "preprocess": _r(t["preprocess"]), "infer": _r(infer_ms),
                             "total": _r(read_ms + t["preprocess"] + infer_ms)}
        return res

    def _studies(self, images: dict, failed: dict, meta: dict, model: dict) -> list[dict]:
        how = self.bundle.manifest["triage"].get("study_score", "max")
        order = {name: i for i, name in enumerate(priority_order(self.bundle))}
        model_rec = model_record(self.bundle, model)
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
            flagged = priority in self.flagged
            for r in imgs:
                cam, spacing = r.pop("_cam", None), r.pop("_spacing", None)
                if flagged and cam is not None:
                    maps = image_heatmaps(cam, r.get("label_scores") or {}, self.cam, self.bundle.urgent_labels,
                                          self.operating_point, r["source_shape"], self.intake.spec, spacing)
                    if maps:
                        r["heatmaps"] = maps
            tm = {k: _r(sum(r["timings_ms"][k] for r in imgs)) for k in ("read", "preprocess", "infer", "total")}
            rec = {"study_uid": uid, "priority": priority, "score": score, "modality": meta.get(uid, {}).get("modality", ""),
                   "images": imgs, "failed_images": failed.get(uid, []), "model": model_rec, "timings_ms": tm}
            if reasons:
                rec["reason"] = "; ".join(reasons) + " - needs a human read"
            out.append(rec)
        return sort_studies(out, self.bundle)


def run_summary(bundle: Bundle, files: Sequence, studies: list[dict], skipped: list[dict], errors: list[dict],
                t_start: float) -> dict:
    """A run's ``summary``: files, images scored, studies per priority, skipped, errors, wall time. Raises
    EdgeInferError when the worklist does not account for every file exactly once (a bug, not bad input:
    no worklist that lost a file is emitted)."""
    counts = {p: 0 for p in priority_order(bundle)}
    for s in studies:
        counts[s["priority"]] += 1
    wall_ms = (time.perf_counter() - t_start) * 1e3
    n_img = sum(len(s["images"]) for s in studies)
    accounted = n_img + len(skipped) + len(errors)
    if accounted != len(files):
        raise EdgeInferError(f"internal error: {len(files)} files in, {accounted} accounted for in the worklist")
    return {"files": len(files), "images_scored": n_img, "studies": len(studies), "by_priority": counts,
            "skipped": len(skipped), "errors": len(errors), "wall_ms": round(wall_ms, 1),
            "images_per_s": round(n_img / (wall_ms / 1e3), 2) if wall_ms else None}


def model_record(bundle: Bundle, report: dict) -> dict:
    """What a study record says of the model that scored it (``report``: the runner's report as a dict)."""
    rec = {"bundle": bundle.name, "bundle_version": bundle.version, "precision": report["precision"],
           "sha256": report["sha256"], "backend": report["backend"], "provider": report["provider"]}
    remote = (report.get("details") or {}).get("remote")
    if remote:   # the server that ran it: its URL, Triton's version, the model and the model version that answered
        rec["server"] = {k: remote.get(k) for k in ("url", "server_version", "model", "model_version")}
    return rec


def engine_for(bundle: Bundle, runner: Runner, **kwargs):
    """The triage engine for the bundle's task: :class:`TriageEngine` (an image at a time) or, for a
    segmentation bundle, :class:`edgeinfer.volume_triage.VolumeTriageEngine` (a series at a time); both take
    these keywords and give the same Worklist."""
    if bundle.manifest.get("task") == "segmentation":
        from .volume_triage import VolumeTriageEngine

        return VolumeTriageEngine(bundle, runner, **kwargs)
    return TriageEngine(bundle, runner, **kwargs)


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)


# --- evaluation against known labels (phantoms, or a site's reference reads) ----------------------
def read_study_labels(path: str | os.PathLike) -> dict[str, bool]:
    """A CSV with ``study_uid`` and ``label`` (urgent|normal, or 1|0) columns -> study -> urgent.

    A study is urgent if any of its rows is. ``labels.csv`` from ``edgeinfer phantom`` fits.
    """
    import csv

    from .errors import LabelsError

    out: dict[str, bool] = {}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"study_uid", "label"} <= set(reader.fieldnames):
                raise LabelsError(f"{path}: needs columns study_uid and label; found {reader.fieldnames}")
            for row in reader:
                urgent = str(row["label"]).strip().lower() in ("urgent", "1", "true", "positive")
                out[row["study_uid"]] = out.get(row["study_uid"], False) or urgent
    except OSError as exc:
        raise LabelsError(f"cannot read labels file {path}: {exc}") from exc
    return out


def evaluate_worklist(studies: list[dict], labels: dict[str, bool], operating_point: float) -> dict:
    """AUC, sensitivity and specificity of the worklist's study scores against ``labels``."""
    from .evaluation import evaluate

    scored = [(s["score"], labels[s["study_uid"]]) for s in studies
              if s["study_uid"] in labels and s["score"] is not None]
    unscored = sum(1 for s in studies if s["study_uid"] in labels and s["score"] is None)
    if not scored:
        return {"n": 0, "note": "no labelled study was scored"}
    result = evaluate([x for x, _ in scored], [y for _, y in scored], operating_point)
    result["indeterminate_labelled"] = unscored
    result["unlabelled"] = sum(1 for s in studies if s["study_uid"] not in labels)
    return result
