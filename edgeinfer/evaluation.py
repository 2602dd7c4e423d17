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
