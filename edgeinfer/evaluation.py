"""Accuracy figures for triage scores (numpy only; the runtime has no scikit-learn)."""
from __future__ import annotations

import numpy as np


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half). NaN if one class is absent."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in shape")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def sens_spec(scores, labels, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity of ``score >= threshold``."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    pred = s >= threshold
    sens = float((pred & y).sum() / y.sum()) if y.any() else float("nan")
    spec = float((~pred & ~y).sum() / (~y).sum()) if (~y).any() else float("nan")
    return sens, spec


def evaluate(scores, labels, threshold: float) -> dict:
    sens, spec = sens_spec(scores, labels, threshold)
    y = np.asarray(labels).astype(bool)
    return {"n": int(len(y)), "positives": int(y.sum()), "auc": roc_auc(scores, labels),
            "sensitivity": sens, "specificity": spec, "threshold": float(threshold)}


def dice(a, b) -> float:
    """Dice overlap of two boolean masks of one shape (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def segmentation_truth(labels_path) -> dict[str, dict]:
    """A CT phantom set's ``labels.csv`` (``edgeinfer phantom --kind ct-head``) -> study -> {volume_ml, mask path,
    finding}; LabelsError when it lacks the columns."""
    import csv
    from pathlib import Path

    from .errors import LabelsError

    out = {}
    try:
        with open(labels_path, newline="") as f:
            reader = csv.DictReader(f)
            need = {"study_uid", "volume_ml", "mask"}
            if not reader.fieldnames or not need <= set(reader.fieldnames):
                raise LabelsError(f"{labels_path}: a segmentation evaluation needs columns {sorted(need)}; "
                                  f"found {reader.fieldnames}")
            for row in reader:
                out[row["study_uid"]] = {"volume_ml": float(row["volume_ml"]), "finding": row.get("finding", ""),
                                         "mask": Path(labels_path).parent / row["mask"]}
    except (OSError, ValueError) as exc:
        raise LabelsError(f"cannot read labels file {labels_path}: {exc}") from exc
    return out


def evaluate_segmentation(studies: list[dict], truth: dict[str, dict], flagged, *, min_ml: float = 1.0) -> dict:
    """Each segmented study against its true mask and volume: Dice (studies with a bleed), volume error,
    sensitivity (a bleed of at least ``min_ml`` ranked in a ``flagged`` priority) and specificity (a study
    without one ranked below them). Masks are compared slice for slice when the study record's mask has
    the true mask's shape (same slices); otherwise only the volume is."""
    from .segmentation import unpack_mask

    rows = []
    for s in studies:
        t = truth.get(s["study_uid"])
        if t is None:
            continue
        seg = s.get("segmentation") or {}
        predicted = float(sum((s.get("volumes_ml") or {}).values())) if s.get("volumes_ml") else None
        row = {"study_uid": s["study_uid"], "true_ml": t["volume_ml"], "predicted_ml": predicted,
               "priority": s["priority"], "flagged": s["priority"] in flagged, "dice": None}
        if seg.get("mask") and t["mask"].exists():
            mask = unpack_mask(seg["mask"]).any(axis=0)
            true = np.load(t["mask"]).astype(bool)
            if mask.shape == true.shape:
                row["dice"] = dice(mask, true)
        rows.append(row)
    bleeds = [r for r in rows if r["true_ml"] > 0]
    dices = [r["dice"] for r in bleeds if r["dice"] is not None]
    errors = [abs(r["predicted_ml"] - r["true_ml"]) / r["true_ml"] for r in bleeds if r["predicted_ml"] is not None]
    big = [r for r in bleeds if r["true_ml"] >= min_ml]
    normal = [r for r in rows if r["true_ml"] == 0]
    return {
        "n": len(rows), "with_bleed": len(bleeds), "mean_dice": round(float(np.mean(dices)), 4) if dices else None,
        "median_dice": round(float(np.median(dices)), 4) if dices else None,
        "median_volume_error": round(float(np.median(errors)), 4) if errors else None,
        f"sensitivity_ge_{min_ml:g}ml": round(sum(r["flagged"] for r in big) / len(big), 4) if big else None,
        "bleeds_ge_min": len(big),
        "specificity": round(sum(not r["flagged"] for r in normal) / len(normal), 4) if normal else None,
        "missed": sorted((round(r["true_ml"], 3) for r in bleeds if not r["flagged"])),
        "studies": rows,
    }
