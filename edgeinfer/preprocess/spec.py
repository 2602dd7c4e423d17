"""What a bundle declares about preprocessing (:class:`PreprocessSpec`, the manifest's ``preprocessing``
object) and what preprocessing one frame gives (:class:`Prepared`)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PreprocessSpec:
    target_size: tuple[int, int]  # (height, width)
    window_sources: tuple[str, ...] = ("voi_lut", "header", "auto")
    window_center: float | None = None
    window_width: float | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)
    preset_index: int = 0
    monochrome1: str = "invert"
    pixel_padding: str = "exclude"
    multiframe: str = "first"
    keep_aspect: bool = False
    interpolation: str = "area"
    mean: float = 0.0
    std: float = 1.0
    channels: int = 1

    @classmethod
    def from_manifest(cls, pp: dict) -> "PreprocessSpec":
        w = pp.get("window", {})
        norm = pp.get("normalize", {"mean": 0.0, "std": 1.0})
        return cls(
            target_size=(int(pp["target_size"][0]), int(pp["target_size"][1])),
            window_sources=tuple(w.get("sources", cls.window_sources)),
            window_center=w.get("center"), window_width=w.get("width"),
            percentiles=tuple(w.get("percentiles", cls.percentiles)),
            preset_index=int(w.get("preset_index", 0)),
            monochrome1=pp.get("monochrome1", cls.monochrome1),
            pixel_padding=pp.get("pixel_padding", cls.pixel_padding),
            multiframe=pp.get("multiframe", cls.multiframe),
            keep_aspect=bool(pp.get("keep_aspect", False)),
            interpolation=pp.get("interpolation", cls.interpolation),
            mean=float(norm["mean"]), std=float(norm["std"]),
            channels=int(pp.get("channels", 1)),
        )

    def to_manifest(self) -> dict:
        window: dict[str, Any] = {"sources": list(self.window_sources),
                                  "percentiles": list(self.percentiles), "preset_index": self.preset_index}
        if self.window_center is not None:
            window.update(center=self.window_center, width=self.window_width)
        return {"window": window, "monochrome1": self.monochrome1, "pixel_padding": self.pixel_padding,
                "multiframe": self.multiframe, "target_size": list(self.target_size),
                "keep_aspect": self.keep_aspect, "interpolation": self.interpolation,
                "normalize": {"mean": self.mean, "std": self.std}, "channels": self.channels}

    def digest(self) -> str:
        """Stable hash of the spec: calibration caches and records are keyed on it."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass
class Prepared:
    tensor: np.ndarray            # (channels, H, W) float32, what the model sees
    display: np.ndarray           # (H, W) float32 in [0, 1], before normalisation (for preview)
    window: dict
    frame: int
    inverted: bool
    source_shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)
