"""What a segmentation model's output becomes: masks, components too small to count removed, volumes in mL,
and a priority from the volumes (the bundle's volume policy).

Pure numpy and OpenCV (no SciPy in the runtime): 3-D connected components are each slice's 2-D components
(OpenCV, 8-connected in-plane) joined where they overlap on the next slice (a union-find over their labels),
so a bleed that spans slices is one component.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def masks_from(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(labels, *spatial) probabilities -> boolean masks, each label on its own (sigmoid outputs)."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold {threshold}: must be between 0 and 1")
    return np.asarray(probs) >= threshold


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """3-D connected components of a (slices, rows, cols) boolean mask: (labels int32, 0 = background; count)."""
    import cv2

    mask = np.asarray(mask, bool)
    labels = np.zeros(mask.shape, np.int32)
    parent: list[int] = [0]

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    offset = 0
    for k in range(mask.shape[0]):
        if not mask[k].any():
            continue
        n, lab = cv2.connectedComponents(mask[k].astype(np.uint8), connectivity=8)
        lab = lab.astype(np.int32)
        lab[lab > 0] += offset
        parent.extend(range(offset + 1, offset + n))
        if k > 0:
            both = (lab > 0) & (labels[k - 1] > 0)
            for a, b in set(zip(lab[both].tolist(), labels[k - 1][both].tolist())):
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
        labels[k] = lab
        offset += n - 1
    roots = np.array([find(i) for i in range(len(parent))], np.int32)
    uniq, dense = np.unique(roots, return_inverse=True)
    dense = dense.astype(np.int32)                       # root 0 (background) stays 0: it is the smallest
    return dense[labels], int(len(uniq) - 1)


def remove_small(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """``mask`` without its 3-D components of fewer than ``min_voxels`` voxels."""
    if min_voxels <= 1:
        return np.asarray(mask, bool)
    labels, n = components(mask)
    if n == 0:
        return np.asarray(mask, bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def volume_ml(mask: np.ndarray, voxel_mm: Sequence[float]) -> float:
    """The mask's volume in mL (voxel count times the voxel's size in mm^3, / 1000)."""
    return float(np.count_nonzero(mask)) * float(np.prod(voxel_mm)) / 1000.0


@dataclass(frozen=True)
class VolumePolicy:
    """Priority from volumes: ``rules`` in order, each (priority, label or "*" for any label, min mL); the
    first whose label's volume reaches its minimum wins; else ``otherwise``."""

    rules: tuple[tuple[str, str, float], ...] = (("STAT", "*", 0.5), ("URGENT", "*", 0.1))
    otherwise: str = "ROUTINE"

    def priority(self, volumes: dict[str, float]) -> str:
        for priority, label, min_ml in self.rules:
            values = volumes.values() if label == "*" else [volumes.get(label, 0.0)]
            if any(v >= min_ml for v in values):
                return priority
        return self.otherwise
