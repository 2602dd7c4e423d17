"""What a segmentation model's output becomes: masks, components too small to count removed, volumes in mL,
and a priority from the volumes (the bundle's volume policy).

Pure numpy and OpenCV (no SciPy in the runtime): 3-D connected components are each slice's 2-D components
(OpenCV, 8-connected in-plane) joined where they overlap on the next slice (a union-find over their labels),
so a bleed that spans slices is one component.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from .volume import SeriesRule


class _SliceComponents:
    """The 3-D connected components of a (slices, rows, cols) boolean mask, found slice by slice: each slice's
    2-D components (OpenCV, 8-connected) numbered after the previous slices', joined with the previous slice's
    where they overlap (a union-find), their voxels counted. Holds two slices of labels, never a volume of them
    (for a 300-slice 512 x 512 CT that volume was 315 MB); :meth:`slice_labels` labels a slice again."""

    def __init__(self, mask: np.ndarray):
        import cv2

        self._cv2 = cv2
        self.mask = mask = np.asarray(mask, bool)
        self.busy = [int(k) for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))]
        parent: list[int] = [0]
        sizes: list[int] = [0]
        self._base: dict[int, int] = {}

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        prev = prev_k = None
        for k in self.busy:
            self._base[k] = len(parent) - 1
            n, lab = self._labelled(k)
            parent.extend(range(self._base[k] + 1, self._base[k] + n))
            sizes.extend(np.bincount(lab.ravel(), minlength=self._base[k] + n)[self._base[k] + 1:].tolist())
            if prev_k == k - 1:
                both = (lab > 0) & (prev > 0)
                for a, b in set(zip(lab[both].tolist(), prev[both].tolist())):
                    ra, rb = find(a), find(b)
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
            prev, prev_k = lab, k
        #: each slice component's root (0: background); the voxels of each root's component
        self.roots = np.array([find(i) for i in range(len(parent))], np.int64)
        self.sizes = np.bincount(self.roots, weights=np.asarray(sizes, np.float64), minlength=len(parent))

    def _labelled(self, k: int) -> tuple[int, np.ndarray]:
        n, lab = self._cv2.connectedComponents(self.mask[k].astype(np.uint8), connectivity=8)
        lab = lab.astype(np.int32)
        lab[lab > 0] += self._base[k]
        return n, lab

    def slice_labels(self, k: int) -> np.ndarray:
        """Slice k's components, numbered as :attr:`roots` indexes them (0: background)."""
        return self._labelled(k)[1]


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """3-D connected components of a (slices, rows, cols) boolean mask: (labels int32, 0 = background; count)."""
    sc = _SliceComponents(mask)
    uniq, dense = np.unique(sc.roots, return_inverse=True)
    dense = dense.astype(np.int32)                       # root 0 (background) stays 0: it is the smallest
    labels = np.zeros(sc.mask.shape, np.int32)
    for k in sc.busy:
        labels[k] = dense[sc.slice_labels(k)]
    return labels, int(len(uniq) - 1)


def clean(mask: np.ndarray, min_voxels: int) -> tuple[np.ndarray, int]:
    """(``mask`` without its 3-D components of fewer than ``min_voxels`` voxels, how many components are left):
    :func:`components`' components, with two slices of labels held at a time."""
    sc = _SliceComponents(mask)
    if not sc.busy:
        return sc.mask, 0
    keep = sc.sizes[sc.roots] >= max(1, int(min_voxels))
    keep[0] = False
    out = np.zeros_like(sc.mask)
    for k in sc.busy:
        out[k] = keep[sc.slice_labels(k)]
    return out, int(len(set(sc.roots[keep].tolist())))


def volume_ml(mask: np.ndarray, voxel_mm: Sequence[float]) -> float:
    """The mask's volume in mL (voxel count times the voxel's size in mm^3, / 1000)."""
    return float(np.count_nonzero(mask)) * float(np.prod(voxel_mm)) / 1000.0


def to_source(probs: np.ndarray, model_positions, source_positions, source_shape: tuple[int, int],
              threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One label's probabilities on the model's grid (slices at ``model_positions`` mm along the normal, rows,
    cols) -> (the mask on the source grid: one slice per source position at ``source_shape``, boolean; each
    source slice's highest probability). Linear between the two model slices around a source slice, then
    resized in-plane (OpenCV, bilinear, pixel centres aligned as when the volume was read), then thresholded:
    one slice at a time, so the source-sized probabilities are never held."""
    import cv2

    probs = np.asarray(probs, np.float32)
    zm = np.asarray(model_positions, np.float64)
    rows, cols = int(source_shape[0]), int(source_shape[1])
    mask = np.zeros((len(source_positions), rows, cols), bool)
    peak = np.zeros(len(source_positions), np.float32)
    for j, z in enumerate(source_positions):
        k = int(np.clip(np.searchsorted(zm, z), 1, len(zm) - 1)) if len(zm) > 1 else 0
        if len(zm) == 1 or abs(zm[k] - z) < 1e-6:
            p = probs[k]
        elif abs(zm[k - 1] - z) < 1e-6:
            p = probs[k - 1]
        else:
            w = float(np.clip((z - zm[k - 1]) / (zm[k] - zm[k - 1]), 0, 1))
            p = (1 - w) * probs[k - 1] + w * probs[k]
        if p.shape != (rows, cols):
            p = cv2.resize(p, (cols, rows), interpolation=cv2.INTER_LINEAR)
        mask[j] = p >= threshold
        peak[j] = float(p.max())
    return mask, peak


def pack_mask(mask: np.ndarray) -> dict:
    """A boolean mask as JSON: its shape and its bits, deflated, in base64 (a bleed's mask over a 300-slice CT
    is a few kB): what a study record carries so that a SEG can be built from the record alone."""
    import base64
    import zlib

    mask = np.asarray(mask, bool)
    return {"shape": list(mask.shape), "encoding": "packbits-zlib-base64",
            "data": base64.b64encode(zlib.compress(np.packbits(mask, axis=None).tobytes(), 6)).decode("ascii")}


def unpack_mask(packed: dict) -> np.ndarray:
    """:func:`pack_mask` undone; ValueError when the record is not one."""
    import base64
    import zlib

    try:
        shape = tuple(int(v) for v in packed["shape"])
        if packed.get("encoding") != "packbits-zlib-base64":
            raise ValueError(f"unknown mask encoding {packed.get('encoding')!r}")
        bits = np.frombuffer(zlib.decompress(base64.b64decode(packed["data"])), np.uint8)
        n = int(np.prod(shape))
        if bits.size * 8 < n:
            raise ValueError(f"the mask holds {bits.size * 8} bits, its shape {shape} needs {n}")
        return np.unpackbits(bits, count=n).astype(bool).reshape(shape)
    except (KeyError, TypeError, zlib.error, ValueError) as exc:
        raise ValueError(f"not a packed mask ({exc})") from None


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


# --- the bundle's segmentation spec -------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentationSpec:
    """What a segmentation bundle's manifest (schema v2, its ``segmentation`` block) asks of the runtime: which
    series, the HU windows that become the input channels, the pixel size (and optionally the slice spacing)
    the model works at, the sliding window, the postprocessing and the volume policy. One reading of the
    manifest, used by training (``export/train_ct.py``), triage, validate and the node alike."""

    series: SeriesRule
    windows: tuple[tuple[float, float], ...]
    pixel_mm: float
    slice_mm: float | None
    roi: tuple[int, int]
    overlap: float = 0.25
    batch: int = 8
    blend: str = "gaussian"
    threshold: float = 0.5
    min_component_ml: float = 0.0
    policy: VolumePolicy = VolumePolicy()
    keep_empty_frames: bool = True

    @classmethod
    def from_manifest(cls, block: dict) -> "SegmentationSpec":
        from .volume import SeriesRule

        s = block.get("series", {})
        rule = SeriesRule(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in s.items()})
        sw, post, pol = block.get("sliding_window", {}), block.get("postprocessing", {}), block.get("volume_policy")
        policy = VolumePolicy() if pol is None else VolumePolicy(
            tuple((r["priority"], r.get("label", "*"), float(r["min_ml"])) for r in pol["rules"]),
            pol.get("otherwise", "ROUTINE"))
        return cls(rule, tuple((float(w["center"]), float(w["width"])) for w in block["windows"]),
                   float(block["pixel_mm"]), None if block.get("slice_mm") is None else float(block["slice_mm"]),
                   tuple(int(v) for v in sw["roi"]), float(sw.get("overlap", 0.25)), int(sw.get("batch", 8)),
                   str(sw.get("blend", "gaussian")), float(post.get("threshold", 0.5)),
                   float(post.get("min_component_ml", 0.0)), policy,
                   bool(block.get("seg", {}).get("keep_empty_frames", True)))

    def read(self, paths, limits=None, headers=None):
        """The series in ``paths`` at the model's grid: ``(inputs (channels, slices, rows, cols), Volume)``, the
        windows made slice by slice as the series is read (``Volume.values`` is the inputs). ``headers``: the
        files' headers, when the caller has them (each file is then parsed once more, not twice)."""
        from .volume import read_volume, windows

        vol = read_volume(paths, limits, pixel_mm=self.pixel_mm, slice_mm=self.slice_mm, headers=headers,
                          transform=lambda values: windows(values, self.windows))
        return vol.values, vol
