"""Triage for a segmentation bundle: each study's series read as a volume, segmented, measured, ranked by volume.

The same contract as :class:`edgeinfer.triage.TriageEngine` (``run(files) -> Worklist``, every input file exactly
once in the output, a failure makes the study INDETERMINATE, never ROUTINE), so ``edgeinfer triage``, ``validate``
and the node's worker take either, by the bundle's task (:func:`edgeinfer.triage.engine_for`).

Per study, in order:

1. the headers of its files (no pixel data), grouped by series; a file of another modality or body part is
   skipped as not for this model;
2. the series the bundle's rules choose (:func:`edgeinfer.volume.choose_series`); the others are skipped, each
   with the reason it was passed over; no series fits: the study goes to a human read, saying why;
3. the volume at the model's grid (:meth:`SegmentationSpec.read`: slices ordered along the normal, geometry
   checked, HU, in-plane resampling, windows as channels); a geometry the runtime refuses (tilt, mixed
   orientations) or an unreadable slice: a human read, the reason given; a duplicated slice: skipped, one kept;
4. the model over it slice by slice through the sliding window (the bundle's tile, overlap, batch, blending);
5. each label's probabilities back onto the source slices, thresholded, components under the bundle's minimum
   volume removed, the volume in mL from the source voxel size; the priority from the volume policy.

The study record carries what the SEG writer needs (the mask, packed, in the order of the record's images)
and the volumes (``volumes_ml``), so results are built from the record alone, in the node's builder process
as in ``triage --output-dicom``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import dicomio
from .backends import Runner
from .bundle import Bundle
from .errors import EdgeInferError, InputError
from .intake import DEFAULT_IGNORE, NO_STUDY_UID, applicability, ignored
from .segmentation import SegmentationSpec, clean, pack_mask, to_source, volume_ml
from .sliding import sliding_window
from .tasks import task_for
from .volume import _header, choose_series
from .vr import shown_modality, shown_uid
from .worklist import INDETERMINATE, sort_studies

log = logging.getLogger("edgeinfer.volume_triage")


class VolumeTriageEngine:
    """Triage with a segmentation bundle (see the module's text). ``batch_size`` overrides the bundle's
    sliding-window batch; the other keywords of :class:`~edgeinfer.triage.TriageEngine` (intake workers,
    pools, heatmaps) have no meaning for a volume and are accepted and left unused."""

    def __init__(self, bundle: Bundle, runner: Runner, *, batch_size: int | None = None,
                 limits: dicomio.ReadLimits | None = None, ignore: Sequence[str] = DEFAULT_IGNORE, **_unused):
        self.bundle = bundle
        self.runner = runner
        self.spec = SegmentationSpec.from_manifest(bundle.manifest["segmentation"])
        self.task = task_for(bundle)
        self.limits = limits or dicomio.ReadLimits()
        self.ignore = tuple(ignore)
        self.batch_size = max(1, int(batch_size)) if batch_size else self.spec.batch
        self.input_name = bundle.manifest["inputs"][0]["name"]
        self.output_name = bundle.manifest["outputs"][0]["name"]

    # -- public ---------------------------------------------------------------------------------------
    def run(self, files: Sequence[Path], progress: Callable[[int], None] | None = None):
        from .triage import Worklist, _r, model_record, run_summary

        t_start = time.perf_counter()
        skipped: list[dict] = []
        errors: list[dict] = []
        studies: dict[str, dict[str, list]] = {}      # study -> series -> [(path, header)]
        for f in files:
            f = Path(f)
            pattern = ignored(f, self.ignore)
            if pattern:
                skipped.append({"path": str(f), "code": "ignored", "reason": f"name matches {pattern!r}"})
                _tick(progress)
                continue
            try:
                ds = _header(f, self.limits)
            except InputError as exc:
                errors.append({"path": str(f), "code": exc.code, "reason": str(exc)})
                _tick(progress)
                continue
            why = applicability(ds, self.bundle.manifest["applies_to"], self.bundle.name, what_it_is_only=True)
            if why:
                skipped.append({"path": str(f), "code": "not-applicable", "reason": why})
                _tick(progress)
                continue
            study = shown_uid(ds.get("StudyInstanceUID", ""), missing=NO_STUDY_UID)
            series = shown_uid(ds.get("SeriesInstanceUID", ""), missing="(no series UID)")
            studies.setdefault(study, {}).setdefault(series, []).append((f, ds))
        out = []
        for uid in sorted(studies):
            rec, sk, er = self._study(uid, studies[uid])
            out.append(rec)
            skipped += sk
            errors += er
            _tick(progress, sum(len(v) for v in studies[uid].values()))
        report = self.runner.report()   # after the run: a remote runner knows then which server and model ran
        model_rec = model_record(self.bundle, report.as_dict())
        for rec in out:
            rec["model"] = model_rec
        out = sort_studies(out, self.bundle)
        summary = run_summary(self.bundle, files, out, skipped, errors, t_start)
        run = report.as_dict() | {"batch_size": self.batch_size, "activate_ms": _r(self.runner.activate_ms)}
        return Worklist(bundle=self.bundle.summary(), run=run, studies=out, skipped=skipped, errors=errors,
                        summary=summary)

    # -- one study ------------------------------------------------------------------------------------
    def _study(self, uid: str, series: dict[str, list]) -> tuple[dict, list[dict], list[dict]]:
        """(the study record, the files skipped, the files in error) of one study."""
        skipped: list[dict] = []
        modality = shown_modality(next(iter(series.values()))[0][1].get("Modality", ""), missing="")
        rec = {"study_uid": uid, "priority": INDETERMINATE, "score": None, "modality": modality, "images": [],
               "failed_images": []}
        chosen, passed = choose_series({k: [ds for _, ds in v] for k, v in series.items()}, self.spec.series)
        for suid, why in passed.items():
            skipped += [{"path": str(p), "code": "series-passed-over", "reason": f"series passed over: {why}",
                         "study_uid": uid} for p, _ in series[suid]]
        if chosen is None:
            rec["reason"] = ("no series of the study fits the model (" + "; ".join(sorted(set(passed.values())))
                             + ") - needs a human read")
            return rec, skipped, []
        members = series[chosen]
        paths = [p for p, _ in members]
        t0 = time.perf_counter()
        try:
            x, vol = self.spec.read(paths, self.limits, headers=[ds for _, ds in members])
        except InputError as exc:
            rec["failed_images"] = [str(p) for p in paths]
            rec["reason"] = f"the series could not be read as a volume ({exc}) - needs a human read"
            errors = [{"path": str(p), "code": exc.code, "reason": str(exc), "study_uid": uid} for p in paths]
            return rec, skipped, errors
        read_ms = (time.perf_counter() - t0) * 1e3
        plan = vol.plan
        dup = set(plan.duplicates)
        skipped += [{"path": k, "code": "duplicate-slice", "study_uid": uid,
                     "reason": "repeats the position of another slice of the series; one of them is used"} for k in dup]
        kept = [members[i] for i in plan.order]       # in volume order: the record's images and the SEG's frames
        t1 = time.perf_counter()
        try:
            probs = self._infer(x)
        except EdgeInferError as exc:
            log.warning("study %s: inference failed (%s)", uid, exc.__class__.__name__)
            rec["images"] = [self._image(p, ds, None, reason=str(exc)) for p, ds in kept]
            rec["reason"] = f"the model could not be run on the series ({exc.__class__.__name__}) - needs a human read"
            return rec, skipped, []
        infer_ms = (time.perf_counter() - t1) * 1e3
        t2 = time.perf_counter()
        ds0 = kept[0][1]
        src_shape = (int(ds0.Rows), int(ds0.Columns))
        src_voxel = (plan.slice_spacing, *(float(v) for v in ds0.PixelSpacing))
        voxel_ml = float(np.prod(src_voxel)) / 1000.0
        min_voxels = int(np.ceil(self.spec.min_component_ml / voxel_ml)) if self.spec.min_component_ml else 0
        masks, peaks, volumes, n_components = {}, {}, {}, {}
        for li, label in enumerate(self.task.labels):
            mask, peak = to_source(probs[li], vol.positions, plan.positions, src_shape, self.spec.threshold)
            mask, n_components[label] = clean(mask, min_voxels)
            masks[label], peaks[label] = mask, peak
            volumes[label] = round(volume_ml(mask, src_voxel), 3)
        post_ms = (time.perf_counter() - t2) * 1e3
        rec["images"] = [self._image(p, ds, {lab: float(peaks[lab][k]) for lab in self.task.labels})
                         for k, (p, ds) in enumerate(kept)]
        rec["priority"] = self.spec.policy.priority(volumes)
        rec["score"] = round(max(float(pk.max()) for pk in peaks.values()), 6)
        rec["volumes_ml"] = volumes
        stack = np.stack([masks[lab] for lab in self.task.labels])
        rec["segmentation"] = {
            "series_uid": chosen, "slices": len(kept), "voxel_mm": [round(v, 4) for v in src_voxel],
            "model_voxel_mm": [round(v, 4) for v in vol.voxel_mm], "labels": list(self.task.labels),
            "components": n_components, "threshold": self.spec.threshold,
            "min_component_ml": self.spec.min_component_ml, "keep_empty_frames": self.spec.keep_empty_frames,
            "mask": pack_mask(stack)}
        if plan.notes:
            rec["segmentation"]["notes"] = list(plan.notes)
        if passed:
            rec["segmentation"]["passed_over"] = {k: v for k, v in sorted(passed.items())}
        rec["timings_ms"] = {"read": round(read_ms, 3), "preprocess": 0.0, "infer": round(infer_ms, 3),
                             "postprocess": round(post_ms, 3), "total": round(read_ms + infer_ms + post_ms, 3)}
        return rec, skipped, []

    def _infer(self, x: np.ndarray) -> np.ndarray:
        """(channels, slices, rows, cols) -> (labels, slices, rows, cols) probabilities: the 2-D model over each
        slice, through the sliding window (tiles of one slice)."""
        roi = (1, *self.spec.roi)

        def predict(tiles: np.ndarray) -> np.ndarray:
            batch = np.ascontiguousarray(tiles[:, :, 0], np.float32)
            out = self.runner.infer({self.input_name: batch})
            return self.task.check_output(out.get(self.output_name), len(batch))[:, :, None]

        return sliding_window(x, roi, predict, overlap=self.spec.overlap, batch=self.batch_size,
                              blend=self.spec.blend)

    def _image(self, path, ds, peaks: dict | None, reason: str | None = None) -> dict:
        rec = {"path": str(path), "sop_instance_uid": shown_uid(ds.get("SOPInstanceUID", "")),
               "series_uid": shown_uid(ds.get("SeriesInstanceUID", "")),
               "modality": shown_modality(ds.get("Modality", ""), missing="")}
        if peaks is None:
            return rec | {"status": "indeterminate", "score": None, "reason": reason or "not scored"}
        return rec | {"status": "ok", **self.task.image_result(np.array([peaks[lab] for lab in self.task.labels]))}


def _tick(progress, n: int = 1) -> None:
    if progress is not None and n:
        progress(n)
