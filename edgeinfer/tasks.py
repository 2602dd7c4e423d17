"""Model tasks: what happens between the runner and the worklist for each kind of model, by the manifest's
``task``. The shape of MONAI Deploy's ``InferenceOperator``: the intake pre-processes (the bundle's
preprocessing spec, one implementation), the runner predicts, and the task post-processes: it checks the
model's output and turns each image's output into its result fields.

``classification``: outputs (N, labels) probabilities; an image's score is the maximum over the bundle's urgent
labels. ``segmentation``: outputs (N, labels, rows, cols) probability maps of 2-D slices (the sliding window's
tiles); a slice's row is its maximum per label, scored like a classification row, and the study's priority
comes from the volumes of its masks (:class:`edgeinfer.segmentation.VolumePolicy`, run by
:mod:`edgeinfer.volume_triage`).
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


class Segmentation(Classification):
    """(N, labels, rows, cols) probability maps, one per tile of the bundle's sliding window; ``image_result``
    takes a slice's maximum per label (what the study's images list)."""

    name = "segmentation"

    def __init__(self, bundle: "Bundle"):
        super().__init__(bundle)
        self.roi = tuple(int(v) for v in bundle.manifest["segmentation"]["sliding_window"]["roi"])

    def check_output(self, out, n: int) -> np.ndarray:
        expected = (n, len(self.labels), *self.roi)
        if out is None or tuple(out.shape) != expected:
            raise InferenceError(f"model output has shape {None if out is None else tuple(out.shape)}, "
                                 f"expected {expected}")
        out = np.asarray(out, dtype=np.float32)
        if not np.isfinite(out).all():
            raise InferenceError("the model's probability map holds NaN or infinite values")
        return out


def image_scores(probs: np.ndarray, urgent: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(N, n_labels) probabilities -> (image score, finite mask). Score = max over the ``urgent`` label indices."""
    finite = np.isfinite(probs).all(axis=1)
    scores = np.where(finite, probs[:, urgent].max(axis=1, initial=-np.inf), np.nan)
    return scores, finite


#: the tasks this edgeinfer runs, by the manifest's ``task``
TASKS: dict[str, type] = {"classification": Classification, "segmentation": Segmentation}


def task_for(bundle: "Bundle") -> Task:
    """The task of ``bundle`` (its manifest's ``task``); UsageError naming the ones this edgeinfer runs."""
    name = bundle.manifest.get("task", "classification")
    if name not in TASKS:
        raise UsageError(f"bundle {bundle.name}: task {name!r} is not one this edgeinfer runs "
                         f"({', '.join(sorted(TASKS))}); use an edgeinfer that supports it")
    return TASKS[name](bundle)
