"""The sizes of stage 4 (resize): the target (letterboxed with ``keep_aspect``), the size the stored
values are box-averaged to before windowing (:data:`REDUCE_FACTOR`), how many times a large image
is halved first (:data:`BLOCK_MARGIN`), and how small a JPEG 2000 frame may be decoded
(:data:`DECODE_MARGIN`)."""
from __future__ import annotations

import cv2
import numpy as np

from .spec import PreprocessSpec

#: The fast path box-averages the stored image to this many times the target size (per axis)
#: before windowing; the last step is then an exact REDUCE_FACTOR x REDUCE_FACTOR average.
REDUCE_FACTOR = 2
#: Before that, the image is halved (2 x 2 block means, OpenCV's vectorised path, a quarter of the cost
#: of the general one at full resolution) while at least this many blocks remain for every pixel of
#: the intermediate image on each axis (:func:`_halvings`).
BLOCK_MARGIN = 2
#: A JPEG 2000 frame may be decoded at reduced resolution, but at no less than this many times the size
#: the stored values are averaged to (:func:`decode_size`): a wavelet low-pass is not a block mean, and
#: the area average after it must be wide enough to hide the difference.
DECODE_MARGIN = 2

_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
           "nearest": cv2.INTER_NEAREST}


def _fitted(shape: tuple[int, ...], spec: PreprocessSpec) -> tuple[int, int]:
    """(height, width) the image is resized to: the target, or with ``keep_aspect`` the largest
    size of the image's aspect ratio that fits in it."""
    th, tw = spec.target_size
    if not spec.keep_aspect:
        return th, tw
    h, w = shape[:2]
    scale = min(th / h, tw / w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def content_box(shape: tuple[int, ...], spec: PreprocessSpec) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the part of the model's input that an image of ``shape`` fills
    (the whole target, or with ``keep_aspect`` the region inside the letterbox): where a map over the
    model's input is cut before it is stretched back onto the image."""
    th, tw = spec.target_size
    nh, nw = _fitted(shape, spec)
    return (th - nh) // 2, (tw - nw) // 2, nh, nw


def _letterbox(small: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    th, tw = spec.target_size
    if small.shape[:2] == (th, tw):
        return small
    y0, x0, nh, nw = (th - small.shape[0]) // 2, (tw - small.shape[1]) // 2, *small.shape[:2]
    out = np.zeros((th, tw), dtype=small.dtype)
    out[y0:y0 + nh, x0:x0 + nw] = small
    return out


def resize(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """``img`` resized to the target with the spec's interpolation (letterboxed with ``keep_aspect``)."""
    nh, nw = _fitted(img.shape, spec)
    return _letterbox(cv2.resize(img, (nw, nh), interpolation=_INTERP[spec.interpolation]), spec)


def _reduced_size(shape: tuple[int, ...], fitted: tuple[int, int], spec: PreprocessSpec) -> tuple[int, int]:
    """Size the image is box-averaged to before windowing: :data:`REDUCE_FACTOR` times the fitted
    size, capped at the image's own; the image's own size (no reduction) for interpolations other
    than area and for images smaller than the target on an axis (OpenCV does not average then)."""
    h, w = shape[:2]
    nh, nw = fitted
    if spec.interpolation != "area" or h < nh or w < nw:
        return h, w
    return min(h, REDUCE_FACTOR * nh), min(w, REDUCE_FACTOR * nw)


def _halvings(shape: tuple[int, ...], size: tuple[int, int]) -> int:
    """How many times the image is first halved on both axes (2 x 2 block means, OpenCV's vectorised
    integer-factor path): while both sides are even and at least :data:`BLOCK_MARGIN` times ``size``
    remains on each axis."""
    h, w = shape[:2]
    n = 0
    while h % 2 == 0 and w % 2 == 0 and h // 2 >= BLOCK_MARGIN * size[0] and w // 2 >= BLOCK_MARGIN * size[1]:
        h, w, n = h // 2, w // 2, n + 1
    return n
