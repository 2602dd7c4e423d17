"""Findings: what makes a study urgent, and how each one is drawn into the lungs.

* ``mass``: a round/oval, slightly lobulated soft-tissue density of 1-4 cm with a soft edge;
* ``pneumothorax``: a rim along the apex and/or lateral chest wall where lung markings are
  absent and the lung is slightly darker, bounded by a thin faint visceral pleural line.

A finding's ``contrast`` is ``strength * FINDING_CONTRAST[kind] / difficulty`` (the knobs
``DIFFICULTY`` and ``FINDING_CONTRAST`` live on the package, :mod:`edgeinfer.phantom`, and are
read there at call time); the gains below are the maximum contrasts at strength 1,
difficulty 1, in density units (mm of water).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .anatomy import _Anatomy, _Lungs
from .geometry import _blur, _ell, _Frame, _sphere

#: kinds of urgent finding; a case without one has finding "none" and label "normal"
FINDINGS = ("pneumothorax", "mass")

# maximum finding contrasts at strength 1, difficulty 1 (density units: mm of water)
_MASS_GAIN = 4.5  # peak density of a 2 cm mass, relative to a solid 2 cm sphere in aerated lung
_PTX_LINE = 25.0  # peak density of the visceral pleural line
_PTX_DARK = 0.35  # fraction of the local lung density removed inside the pneumothorax


@dataclass
class _Finding:
    kind: str
    strength: float
    contrast: float  # strength * FINDING_CONTRAST[kind] / difficulty
    u: np.ndarray  # uniforms for geometry
    side: int


def _place_mass(an: _Anatomy, fd: _Finding):
    """Centre (patient mm), semi-axes, angle of a mass well inside a lung and off the heart."""
    u = fd.u
    d = 12.0 * (40.0 / 12.0) ** u[0]  # diameter 12-40 mm, log-uniform
    rad = d / 2
    side = fd.side
    Wh, H = an.Wh, an.H
    k = 0
    while True:
        # candidate points from a quasi-random sequence seeded by the finding draws
        a = (u[1] + 0.618034 * k) % 1.0
        b = (u[2] + 0.754878 * k) % 1.0
        sgn = -1.0 if side == 0 else 1.0
        X = sgn * (0.1 + 1.0 * a) * Wh
        Y = (0.05 + 0.95 * b) * H
        ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        ring = (X + (rad + 4) * np.cos(ang), Y + (rad + 4) * np.sin(ang))
        ok = bool(np.all(an.lung_inside(ring[0], ring[1], side))) and an.lung_inside(X, Y, side)
        if ok:
            ht = an.heart_thickness(np.asarray([X]), np.asarray([Y]))[0]
            ok = ht < 0.2 * an.depth
        if ok:
            return X, Y, rad, rad * (0.75 + 0.25 * u[3]), math.pi * u[4], d
        k += 1
        if k > 400:
            side = 1 - side
            fd.side = side
            if k > 800:
                return sgn * 0.6 * Wh, 0.5 * H, 5.0, 5.0, 0.0, 10.0


def _add_mass(extra: np.ndarray, an: _Anatomy, fd: _Finding, fr: _Frame) -> dict[str, Any]:
    """Adds the mass's density to ``extra``; returns its truth (centre in patient mm)."""
    X, Y = fr.X, fr.Y
    cx, cy, ra, rb, ang, d = _place_mass(an, fd)
    u = fd.u
    phi = np.arctan2(Y - cy, X - cx)
    lob = 1 + 0.08 * u[5] * np.sin(3 * phi + 6.28 * u[6]) + 0.06 * u[7] * np.sin(5 * phi + 6.28 * u[8])
    e = _ell(X, Y, cx, cy, ra, rb, ang) / lob ** 2
    prof = _sphere(e).astype(np.float32)
    prof = _blur(prof, fr.mm((0.08 + 0.22 * u[9]) * ra))
    amp = _MASS_GAIN * (1 - an.lung_density) * 20.0 * (rb / 10.0) ** 0.6 * fd.contrast
    extra += amp * prof
    return dict(center_mm=(cx, cy), size_mm=round(float(d), 1), side=("right", "left")[fd.side],
                peak_density=round(float(amp), 3), box_px_work=_box(prof > 0.05))


def _add_pneumothorax(extra: np.ndarray, markings: np.ndarray, an: _Anatomy, fd: _Finding, fr: _Frame,
                      lungs: _Lungs) -> dict[str, Any]:
    """Darkens the rim in ``extra``, clears ``markings`` there and adds the pleural line;
    returns the truth (centre in working pixels)."""
    X, Y = fr.X, fr.Y
    Wh, H = an.Wh, an.H
    u = fd.u
    s = fd.side
    sgn = -1.0 if s == 0 else 1.0
    zone = "apical" if u[0] < 0.4 else ("apicolateral" if u[0] < 0.7 else "lateral")
    if zone == "apical":
        ax_, ay_ = sgn * an.apex_x[s] * Wh, an.apex_y[s] - 10
    elif zone == "apicolateral":
        ax_, ay_ = sgn * 0.85 * Wh, 0.15 * H
    else:
        ax_, ay_ = sgn * 1.0 * Wh, (0.3 + 0.35 * u[1]) * H
    w0 = 6.0 * (50.0 / 6.0) ** u[2]  # 6-50 mm rim, log-uniform
    ext = 45 + 80 * u[3] + 1.2 * w0
    g = np.exp(-((X - ax_) ** 2 + (Y - ay_) ** 2) / (2 * ext ** 2)).astype(np.float32)
    wmap = w0 * g
    wall = an.lung_inside(X, Y, s, wall_only=True).astype(np.uint8)
    dside = cv2.distanceTransform(wall, cv2.DIST_L2, 5) * fr.mm_per_px
    m = lungs.masks[s] > 0
    region = np.clip((wmap - dside) / fr.mm_per_px + 0.5, 0, 1) * m
    region = _blur(region.astype(np.float32), 0.5)
    lw = 0.5 + 0.5 * u[4]  # line half-width, mm
    line = np.exp(-0.5 * ((dside - wmap) / max(lw, 0.5 * fr.mm_per_px)) ** 2) * m
    line *= np.clip((wmap - 1.5) / 4.0, 0, 1)
    markings *= 1 - region * min(1.0, fd.contrast)  # absent markings fade with the strength too
    local = np.maximum(lungs.eff, 0.3 * lungs.thick)
    extra -= _PTX_DARK * fd.contrast * an.lung_density * local * region / 0.22
    extra += _PTX_LINE * fd.contrast * _blur(line.astype(np.float32), 0.4)
    yy, xx = np.nonzero(region > 0.5)
    if len(yy):
        cpx = (float(xx.mean()), float(yy.mean()))
    else:
        cpx = tuple(fr.px([(ax_, ay_)])[0])
    return dict(center_px_work=cpx, width_mm=round(float(w0), 1), extent_mm=round(float(ext), 1), zone=zone,
                side=("right", "left")[s], area_px_work=int(len(yy)), box_px_work=_box(region > 0.5))


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The bounding box ``(top, left, bottom, right)`` of ``mask`` in working pixels (bottom and right
    exclusive); None when it is empty (a finding too faint to have an extent)."""
    yy, xx = np.nonzero(mask)
    if not len(yy):
        return None
    return int(yy.min()), int(xx.min()), int(yy.max()) + 1, int(xx.max()) + 1


def _finding_layer(an: _Anatomy, fd: _Finding | None, fr: _Frame, lungs: _Lungs,
                   markings: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The finding's density layer (zeros for a normal case) and its truth; a pneumothorax
    also clears the lung ``markings`` (in place) where it lies."""
    extra = np.zeros((fr.wh, fr.ww), np.float32)
    truth: dict[str, Any] = {}
    if fd is not None and fd.kind == "mass":
        truth.update(_add_mass(extra, an, fd, fr))
    elif fd is not None and fd.kind == "pneumothorax":
        truth.update(_add_pneumothorax(extra, markings, an, fd, fr, lungs))
    return extra, truth
