"""One image at the working resolution: the layers of the density map, in order, then the
acquisition and processing.

The order of the layers and of the draws from ``r`` is part of the output: the same seed
gives bit-identical pixels only if it does not change.
"""
from __future__ import annotations

import numpy as np

from .anatomy import _add_airways, _add_breasts, _add_lungs, _add_skinfold, _Anatomy, _body, _masks_out
from .detector import _acquire, _add_ecg, _process
from .findings import _Finding, _finding_layer
from .geometry import _Frame
from .skeleton import _add_ribs, _add_shoulder_girdle, _add_spine
from .vessels import _markings


def _render(an: _Anatomy, fd: _Finding | None, img: dict, fr: _Frame, r: np.random.Generator, debug=None):
    """Density map -> processed image in [0, 1] at the working resolution, plus truth."""
    # --- anatomy: soft tissue, lungs, air, bones ---
    D = _body(an, fr)
    lungs = _add_lungs(D, an, fr)
    _add_airways(D, an, fr)
    _add_spine(D, an, fr)
    rib = _add_ribs(D, an, fr, lungs.mask)
    _add_shoulder_girdle(D, an, fr)
    _add_breasts(D, an, fr)

    # --- vessels and parenchymal texture, and the finding (markings are absent inside a pneumothorax) ---
    markings = _markings(an, fr, lungs.soft)
    extra, truth = _finding_layer(an, fd, fr, lungs, markings)
    D += markings + extra

    # --- mimics on and in front of the patient ---
    _add_skinfold(D, an, fr)
    _add_ecg(D, an, fr)

    # --- acquisition: heel effect, low-frequency variation, side marker ---
    D = _acquire(D, img, fr, r)

    # --- vendor-like processing and noise ---
    D = np.clip(D, 0, None)
    if debug is not None:
        debug.update(D=D.copy(), rib=rib, lung=lungs.mask, heart=lungs.heart, lung_eff=lungs.eff, markings=markings)
    B = _process(D, img, fr, r)
    return np.clip(B, 0, 1.05).astype(np.float32), truth, _masks_out(an, fr, lungs)
