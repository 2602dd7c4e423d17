"""Sliding-window inference over a volume (or an image) larger than the model's input: tiles of the model's
size, overlapping, run in batches, their outputs blended back (MONAI's ``sliding_window_inference``, in
numpy, so the runtime needs no torch).

Tiles start every ``roi * (1 - overlap)`` along each axis and the last one ends at the border, so every
voxel is covered; an axis shorter than the tile is padded (with ``pad_value``, tile by tile) and the output
cropped back.
Each tile's output is weighted (``gaussian``: highest at the tile's centre, so tile borders, where the
network sees least context, count least; ``constant``: a plain mean) and the sum divided by the summed
weights. Memory: the output and one weight map at the input's size, plus one batch of tiles.
"""
from __future__ import annotations

from itertools import product
from typing import Callable, Sequence

import numpy as np

from .errors import InferenceError

BLENDS = ("gaussian", "constant")


def tile_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Where tiles of ``roi`` start along an axis of ``size`` so that they cover it (the last ends at the end)."""
    if roi <= 0 or not 0 <= overlap < 1:
        raise ValueError(f"tile {roi} with overlap {overlap}: the tile must be positive, the overlap in [0, 1)")
    if size <= roi:
        return [0]
    stride = max(1, int(roi * (1 - overlap)))
    starts = list(range(0, size - roi, stride))
    return starts + [size - roi]


def blend_weights(roi: Sequence[int], blend: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """The weight of each position of a tile's output (``roi`` shape, float32, all > 0)."""
    if blend not in BLENDS:
        raise ValueError(f"blend {blend!r}: one of {', '.join(BLENDS)}")
    if blend == "constant":
        return np.ones(tuple(roi), np.float32)
    w = np.ones((), np.float64)
    for n in roi:
        x = np.arange(n) - (n - 1) / 2
        g = np.exp(-0.5 * (x / max(sigma_scale * n, 1e-6)) ** 2)
        w = np.multiply.outer(w, g)
    w = w / w.max()
    return np.maximum(w, 1e-3).astype(np.float32)    # edges still count a little: a lone tile keeps its border


def sliding_window(inputs: np.ndarray, roi: Sequence[int], predict: Callable[[np.ndarray], np.ndarray], *,
                   overlap: float = 0.25, batch: int = 4, blend: str = "gaussian", pad_value: float = 0.0,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """``inputs`` (channels, *spatial) -> the blended output (labels, *spatial), float32. ``predict`` takes a
    batch of tiles (n, channels, *roi) and returns (n, labels, *roi). InferenceError when it returns another
    shape. ``progress(n)`` after each batch of n tiles. A tile that reaches past the input (an axis shorter
    than the tile) is padded on its own: the input is never copied whole."""
    spatial = tuple(inputs.shape[1:])
    roi = tuple(int(r) for r in roi)
    if len(roi) != len(spatial):
        raise ValueError(f"tile {roi} has {len(roi)} axes, the input {len(spatial)} spatial ones")
    padded = tuple(max(s, r) for s, r in zip(spatial, roi))
    starts = [tile_starts(s, r, overlap) for s, r in zip(padded, roi)]
    corners = list(product(*starts))
    weight = blend_weights(roi, blend)
    out = None
    total = np.zeros(spatial, np.float32)
    step = max(1, int(batch))

    def parts(corner):
        """(the region of the input the tile covers, the same region within the tile)"""
        ends = [min(c + r, s) for c, r, s in zip(corner, roi, spatial)]
        return (tuple(slice(c, e) for c, e in zip(corner, ends)), tuple(slice(0, e - c) for c, e in zip(corner, ends)))

    for b in range(0, len(corners), step):
        group = corners[b:b + step]
        tiles = np.full((len(group), inputs.shape[0], *roi), pad_value, np.float32)
        for t, corner in enumerate(group):
            region, inner = parts(corner)
            tiles[(t, slice(None), *inner)] = inputs[(slice(None), *region)]
        y = np.asarray(predict(tiles))
        if y.ndim != len(roi) + 2 or y.shape[0] != len(group) or tuple(y.shape[2:]) != roi:
            raise InferenceError(f"the model returned {tuple(y.shape)} for {len(group)} tile(s) of {roi}; "
                                 f"expected ({len(group)}, labels, {', '.join(map(str, roi))})")
        if out is None:
            out = np.zeros((y.shape[1], *spatial), np.float32)
        for corner, tile in zip(group, y):
            region, inner = parts(corner)
            w = weight[inner]
            out[(slice(None), *region)] += tile[(slice(None), *inner)] * w
            total[region] += w
        if progress is not None:
            progress(len(group))
    out /= total
    return out
