"""Heatmaps: the class-activation map (CAM) a bundle's graph outputs, placed on the image it came from.

A bundle exported with a CAM (``export/cam.py``) has a second output whose manifest entry has the role
``class_activation_map`` and a ``geometry``: a grid (e.g. 8 x 8) over the model's whole input. The runtime
keeps that grid (a few dozen numbers a label) in the worklist for each urgent label an image of a flagged
study scores at or above the operating point (:func:`image_heatmaps`), and everything else is computed
from it here, with OpenCV:

* :func:`to_input`: the grid stretched over the model's input (bilinear, pixel centres aligned);
* :func:`to_source`: that map cut to the part of the input the image fills (``keep_aspect``'s letterbox)
  and stretched back to the stored image's rows and columns: the preprocessing's resize undone;
* :func:`peak_rc`: where the map peaks, in stored-image pixels;
* :func:`colour_overlay`: a grey image with the map blended over it (preview, Secondary Capture);
* :func:`render_on_source`: the stored image, windowed as the model saw it, at display size, with the
  map over it and a banner saying what it is (the Secondary Capture, the console's heatmap images);
* :func:`pearson` and :func:`peak_distance_mm`: how two precisions' maps agree (``edgeinfer validate``).

The map is CAM's raw value per position (the score's contribution before pooling); for display it is
scaled to [0, 1] by :func:`normalise` (negative parts are zero: they speak against the label).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .preprocess import PreprocessSpec, content_box

if TYPE_CHECKING:
    from .bundle import Bundle

#: the manifest's ``role`` of a CAM output
CAM_ROLE = "class_activation_map"
#: decimals kept of each grid value in the worklist
GRID_DECIMALS = 4


@dataclass(frozen=True)
class CamOutput:
    """A bundle's CAM output: its name, the labels of its channels and its grid (over the whole model input,
    whose size is the preprocessing spec's target)."""

    name: str
    labels: tuple[str, ...]
    grid: tuple[int, int]

    @classmethod
    def of(cls, bundle: "Bundle") -> "CamOutput | None":
        """The CAM output of ``bundle``, or None when its graph has none."""
        for out in bundle.manifest.get("outputs", [])[1:]:
            if out.get("role") == CAM_ROLE:
                return cls(out["name"], tuple(out.get("labels") or bundle.labels), tuple(out["geometry"]["grid"]))
        return None


def input_spec(heatmap: dict) -> PreprocessSpec:
    """The geometry a worklist heatmap's grid covers, as a spec :func:`to_source` takes."""
    cover = heatmap["input"]
    return PreprocessSpec(target_size=(int(cover["size"][0]), int(cover["size"][1])),
                          keep_aspect=bool(cover["keep_aspect"]))


def to_input(grid: np.ndarray, input_size: Sequence[int]) -> np.ndarray:
    """(h, w) grid -> (H, W) float32 map over the model's input (bilinear; the grid's cells are centred as
    a strided feature map's are)."""
    import cv2

    h, w = int(input_size[0]), int(input_size[1])
    return cv2.resize(np.asarray(grid, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def to_source(grid: np.ndarray, source_shape: Sequence[int], spec: PreprocessSpec,
              size: Sequence[int] | None = None) -> np.ndarray:
    """The map on the stored image: (rows, cols) float32, or ``size`` (rows, cols) for a scaled copy of it."""
    import cv2

    top, left, nh, nw = content_box(tuple(source_shape), spec)
    inside = to_input(grid, spec.target_size)[top:top + nh, left:left + nw]
    rows, cols = (int(source_shape[0]), int(source_shape[1])) if size is None else (int(size[0]), int(size[1]))
    return cv2.resize(inside, (cols, rows), interpolation=cv2.INTER_LINEAR)


def peak_rc(grid: np.ndarray, source_shape: Sequence[int], spec: PreprocessSpec) -> tuple[float, float]:
    """Where the map peaks, as (row, column) of the stored image (pixel centres at integers).

    A bilinear stretch of a grid peaks where the grid does, at the centre of its highest cell, so no
    stretched map is made: the highest cell whose centre lies on the image (not in a letterbox) is taken
    and its centre mapped back."""
    g = np.asarray(grid, np.float64)
    h, w = g.shape
    th, tw = spec.target_size
    top, left, nh, nw = content_box(tuple(source_shape), spec)
    ys, xs = (np.arange(h) + 0.5) * th / h - 0.5, (np.arange(w) + 0.5) * tw / w - 0.5   # cell centres, input px
    on = np.outer((ys >= top - 0.5) & (ys < top + nh - 0.5), (xs >= left - 0.5) & (xs < left + nw - 0.5))
    r, c = np.unravel_index(int(np.argmax(np.where(on, g, -np.inf))), g.shape) if on.any() else (h // 2, w // 2)
    rows, cols = int(source_shape[0]), int(source_shape[1])
    y = min(max(ys[r] - top, -0.5), nh - 0.5)
    x = min(max(xs[c] - left, -0.5), nw - 0.5)
    return (round(float(min(max((y + 0.5) * rows / nh - 0.5, 0), rows - 1)), 1),
            round(float(min(max((x + 0.5) * cols / nw - 0.5, 0), cols - 1)), 1))


def normalise(heat: np.ndarray) -> np.ndarray:
    """Display scale: negative values 0, the maximum 1 (all zeros when nothing is positive)."""
    pos = np.maximum(np.asarray(heat, np.float32), 0)
    top = float(pos.max()) if pos.size else 0.0
    return pos / top if top > 0 else pos


def colour_overlay(grey: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``grey`` (H, W) in [0, 1] with ``heat`` (H, W, same size) blended over it: (H, W, 3) uint8 RGB.
    Only where the normalised map is above 0.2 is it coloured (OpenCV's JET colour map), so the anatomy
    stays visible elsewhere."""
    import cv2

    g = (np.clip(grey, 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(g[:, :, None], 3, axis=2)
    h = normalise(heat)
    colour = cv2.cvtColor(cv2.applyColorMap((h * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    a = (alpha * np.clip((h - 0.2) / 0.3, 0, 1))[:, :, None]
    return (rgb * (1 - a) + colour * a).astype(np.uint8)


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r of two maps of the same shape; None when either is constant."""
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"maps of different shapes {np.shape(a)} and {np.shape(b)}")
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def peak_distance_mm(a: Sequence[float], b: Sequence[float], spacing_mm: Sequence[float] | None) -> float | None:
    """Distance between two peaks (row, col) in mm; None without a pixel spacing."""
    if not spacing_mm:
        return None
    return float(np.hypot((a[0] - b[0]) * spacing_mm[0], (a[1] - b[1]) * spacing_mm[1]))


def spacing_mm(ds) -> list[float] | None:
    """(row, column) pixel spacing in mm: Pixel Spacing, else Imager Pixel Spacing; None if neither is usable."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            v = [float(x) for x in ds.get(keyword) or ()]
        except (TypeError, ValueError):
            continue
        if len(v) == 2 and all(np.isfinite(x) and x > 0 for x in v):
            return v
    return None


def image_heatmaps(cam: np.ndarray, label_scores: dict, cam_output: CamOutput, urgent: Sequence[str],
                   threshold: float, source_shape: Sequence[int], spec: PreprocessSpec,
                   spacing: list[float] | None) -> list[dict]:
    """The worklist's ``heatmaps`` of one image: one per urgent label scoring at least ``threshold``, highest
    first: the label, its score, the grid (model geometry, :data:`GRID_DECIMALS` decimals), the
    model input it covers (size, letterboxed or not: :func:`input_spec`), the peak on the stored image and
    the pixel spacing the peak is measured with."""
    out = []
    for label in urgent:
        score = label_scores.get(label)
        if score is None or score < threshold or label not in cam_output.labels:
            continue
        grid = np.asarray(cam[cam_output.labels.index(label)], np.float32)
        if not np.isfinite(grid).all():
            continue
        out.append({"label": label, "score": score,
                    "grid": np.round(grid.astype(np.float64), GRID_DECIMALS).tolist(),
                    "input": {"size": list(spec.target_size), "keep_aspect": spec.keep_aspect},
                    "peak_rc": list(peak_rc(grid, source_shape, spec)), "spacing_mm": spacing})
    return sorted(out, key=lambda h: -h["score"])


def with_banner(rgb: np.ndarray, lines: Sequence[str], *, height: int | None = None) -> np.ndarray:
    """``rgb`` with a black band above it holding ``lines`` of white text (OpenCV's Hershey font, ASCII):
    what an image someone may mistake for a diagnostic one must say about itself."""
    import cv2

    if not lines:
        return rgb
    w = rgb.shape[1]
    scale = max(0.4, w / 1400)
    step = int(round(28 * scale)) + 4
    band = np.zeros((height or step * len(lines) + 8, w, 3), np.uint8)
    for i, line in enumerate(lines):
        text = line.encode("ascii", "replace").decode()
        cv2.putText(band, text, (6, step * (i + 1) - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    max(1, int(round(scale * 1.5))), cv2.LINE_AA)
    return np.concatenate([band, rgb], axis=0)


def preview_panels(display: np.ndarray, cam: np.ndarray | None, cam_output: CamOutput | None,
                   label_scores: dict, urgent: Sequence[str], scale: int = 2, threshold: float = 0.5) -> np.ndarray:
    """The image as the model saw it (``display``, the model's input size, [0, 1]), then one overlay per urgent
    label, each titled with the label and its score (and, below ``threshold``, that the label is not flagged:
    the map of a finding the model does not see is scaled up like any other): (H, W, 3) uint8 RGB, ``scale``
    times the input size."""
    import cv2

    h, w = display.shape
    big = cv2.resize(display.astype(np.float32), (w * scale, h * scale), interpolation=cv2.INTER_LINEAR)
    grey = colour_overlay(big, np.zeros_like(big))
    panels = [with_banner(grey, ["as the model saw it"])]
    for label in urgent:
        score = label_scores.get(label)
        title = f"{label}: " + ("-" if score is None else f"{score:.3f}")
        if score is not None and score < threshold:
            title += " (not flagged)"
        if cam is None or cam_output is None or label not in cam_output.labels:
            panels.append(with_banner(grey, [title + " (no map)"]))
            continue
        heat = to_input(cam[cam_output.labels.index(label)], (h * scale, w * scale))
        panels.append(with_banner(colour_overlay(big, heat), [title]))
    return np.concatenate(panels, axis=1)


#: the line every rendered heatmap carries first
NOT_FOR_DIAGNOSIS = "AI HEATMAP - NOT FOR DIAGNOSIS"


def render_on_source(path: str, source_shape: Sequence[int], heat: dict, spec: PreprocessSpec, *,
                     max_side: int, lines: Sequence[str]) -> np.ndarray:
    """The stored image at ``path`` windowed as the model saw it (the bundle's ``spec``, through the one
    preprocessing implementation) at most ``max_side`` pixels on its long side, the worklist heatmap ``heat``
    blended over it, and a band above with ``lines``: (H, W, 3) uint8 RGB. InputError when the file cannot
    be read."""
    import dataclasses

    from .intake import Intake

    rows, cols = int(source_shape[0]), int(source_shape[1])
    k = min(1.0, max_side / max(rows, cols))
    size = (max(1, round(rows * k)), max(1, round(cols * k)))
    grey = Intake(dataclasses.replace(spec, target_size=size, keep_aspect=False)).read(path).prepared.display
    overlay = colour_overlay(grey, to_source(heat["grid"], source_shape, input_spec(heat), size=grey.shape))
    return with_banner(overlay, lines)
