"""Model tasks: what happens between the runner and the worklist for each kind of model, by the manifest's
``task``. The shape of MONAI Deploy's ``InferenceOperator``: the intake pre-processes (the bundle's
preprocessing spec, one implementation), the runner predicts, and the task post-processes: it checks the
model's output and turns each image's output into its result fields.

``classification`` (now): outputs (N, labels) probabilities; an image's score is the maximum over the
bundle's urgent labels. ``segmentation`` comes with its issue: one class here and one entry in
:data:`TASKS`, and triage, the node's worker and its outbox stay as they are.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from .errors import InferenceError, UsageError

if TYPE_CHECKING:
    from .bundle import Bundle


class Task(Protocol):
    """One model task. ``check_output``: the model's output for ``n`` images, checked (InferenceError saying what
    was expected) and as float64. ``image_result``: one image's row of that output -> its result fields:
    ``score`` (0..1, or None when the output is not usable), ``label_scores`` and anything else the task adds;
    a ``reason`` when the score is None."""

    name: str

    def check_output(self, out, n: int) -> np.ndarray: ...

    def image_result(self, row: np.ndarray) -> dict: ...


class Classification:
    """(N, labels) probabilities; the image score is the maximum over the urgent labels."""

    name = "classification"

    def __init__(self, bundle: "Bundle"):
        self.labels = list(bundle.labels)
        self.urgent = [self.labels.index(lab) for lab in bundle.urgent_labels]

    def check_output(self, out, n: int) -> np.ndarray:
        expected = (n, len(self.labels))
        if out is None or out.ndim != 2 or out.shape != expected:
            raise InferenceError(f"model output has shape {None if out is None else tuple(out.shape)}, "
                                 f"expected {expected}")
        return np.asarray(out, dtype=np.float64)

    def image_result(self, row: np.ndarray) -> dict:
        scores, finite = image_scores(row[None], self.urgent)
        res = {"label_scores": {lab: (float(v) if np.isfinite(v) else None) for lab, v in zip(self.labels, row)}}
        if finite[0] and 0.0 <= scores[0] <= 1.0:
            return res | {"score": float(scores[0])}
        return res | {"score": None, "reason": "model output is not a finite probability"}


def image_scores(probs: np.ndarray, urgent: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(N, n_labels) probabilities -> (image score, finite mask). Score = max over the ``urgent`` label indices."""
    finite = np.isfinite(probs).all(axis=1)
    scores = np.where(finite, probs[:, urgent].max(axis=1, initial=-np.inf), np.nan)
    return scores, finite


#: the tasks this edgeinfer runs, by the manifest's ``task``
TASKS: dict[str, type] = {"classification": Classification}


def task_for(bundle: "Bundle") -> Task:
    """The task of ``bundle`` (its manifest's ``task``); UsageError naming the ones this edgeinfer runs."""
    name = bundle.manifest.get("task", "classification")
    if name not in TASKS:
        raise UsageError(f"bundle {bundle.name}: task {name!r} is not one this edgeinfer runs "
                         f"({', '.join(sorted(TASKS))}); use an edgeinfer that supports it")
    return TASKS[name](bundle)
