"""Lung markings: pulmonary vessel trees, parenchymal texture and calcified granulomas.

Markings are absent inside a pneumothorax, so :func:`_markings` returns them as a separate
layer that :mod:`.findings` may clear before it is added to the density map.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .anatomy import _Anatomy
from .geometry import _bandpass_noise, _blur, _canvas, _ell, _Frame, _sphere

_VESSEL_GAIN = 3.0  # vessel density per mm of diameter (includes the processing's emphasis)


def _vessels(an: _Anatomy, fr: _Frame, r: np.random.Generator):
    """Vessel trees from both hila; returns the density layer (before masking).

    Each tree is grown towards points spread over the lung: the set of targets is split by
    angle again and again, every split becomes a branch whose width follows the number of
    targets it feeds (a Murray-like law), so the trees fill the lungs and taper outwards.
    """
    canvas = _canvas(fr)
    dots = []
    H, Wh = an.H, an.Wh
    wleaf = 0.55
    segs: list[tuple] = []

    def seg(p, q, w):
        bend = 0.08 * r.standard_normal()
        m = ((p[0] + q[0]) / 2 - bend * (q[1] - p[1]), (p[1] + q[1]) / 2 + bend * (q[0] - p[0]))
        segs.append((p, m, q, w))

    def grow(p, pts, depth):
        n = len(pts)
        if n <= 2 or depth > 14:
            for q in pts:
                seg(p, (float(q[0]), float(q[1])), wleaf)
            return
        d = pts - np.asarray(p)
        ang = np.arctan2(d[:, 1], d[:, 0])
        c = math.atan2(float(np.sin(ang).mean()), float(np.cos(ang).mean()))
        rel = (ang - c + np.pi) % (2 * np.pi) - np.pi
        order = np.argsort(rel, kind="stable")
        cut = min(n - 1, max(1, round(n * (0.3 + 0.4 * r.random()))))
        for g in (pts[order[:cut]], pts[order[cut:]]):
            cg = g.mean(axis=0)
            f = 0.30 + 0.25 * r.random()
            q = (p[0] + f * (cg[0] - p[0]), p[1] + f * (cg[1] - p[1]))
            w = min(9.0, wleaf * len(g) ** 0.5)
            seg(p, q, w)
            if 1.8 < w < 5.5 and r.random() < 0.15:
                dots.append((q[0], q[1], 0.55 * w, 1.2 * _VESSEL_GAIN * w))
            grow(q, g, depth + 1)

    for side in (0, 1):
        hx, hy = an.hilum(side)
        sgn = -1.0 if side == 0 else 1.0
        cand = np.stack([sgn * (0.05 + 1.05 * r.random(900)) * Wh, (-0.05 + 1.1 * r.random(900)) * H], 1)
        keep = an.lung_inside(cand[:, 0], cand[:, 1], side) & (r.random(900) < 0.55 + 0.45 * cand[:, 1] / H)
        pts = cand[keep][:340]
        # a few large trunks leave the hilum towards the upper, middle and lower zones
        zones = [pts[pts[:, 1] < hy - 0.12 * H], pts[(pts[:, 1] >= hy - 0.12 * H) & (pts[:, 1] < hy + 0.12 * H)],
                 pts[pts[:, 1] >= hy + 0.12 * H]]
        for zi, zp in enumerate(zones):
            if len(zp) == 0:
                continue
            start = (hx + sgn * 4 * r.standard_normal(), hy + (zi - 1) * 12 + 4 * r.standard_normal())
            grow(start, zp, 0)
    for side in (0, 1):  # hilar pulmonary arteries
        hx, hy = an.hilum(side)
        sgn = -1.0 if side == 0 else 1.0
        c = fr.fixed([(hx - sgn * 6, hy + 6)])[0]
        axes = (int(fr.mm(9 + 3 * r.random()) * 16), int(fr.mm(20 + 6 * r.random()) * 16))
        cv2.ellipse(canvas, (int(c[0]), int(c[1])), axes, sgn * 20 + 10 * r.standard_normal(), 0, 360, 8.0, -1,
                    cv2.LINE_AA, 4)
    for p, m, q, w in segs:
        wpx = fr.mm(w)
        val = _VESSEL_GAIN * w * min(1.0, wpx)
        t = max(1, int(round(wpx)))
        cv2.polylines(canvas, [fr.fixed([p, m, q])], False, float(val), t, cv2.LINE_AA, 4)
    for x, y, rad, val in dots:  # vessels seen end-on: small round densities
        c = fr.fixed([(x, y)])[0]
        cv2.circle(canvas, (int(c[0]), int(c[1])), max(1, int(round(fr.mm(rad) * 16))), float(val), -1, cv2.LINE_AA, 4)
    return _blur(canvas, 0.5)


def _markings(an: _Anatomy, fr: _Frame, lung_soft: np.ndarray) -> np.ndarray:
    """Vessels and parenchymal texture over the lungs, and sometimes a calcified granuloma."""
    X, Y = fr.X, fr.Y
    Wh, H = an.Wh, an.H
    shape = (fr.wh, fr.ww)
    rv = np.random.default_rng(an.vessel_seed)
    vess = _vessels(an, fr, rv) * an.vessel_gain
    rt = np.random.default_rng([an.texture_seed, fr.wh, fr.ww])
    tex = an.texture_amp * (0.8 * _bandpass_noise(rt, shape, fr.mm(0.9), fr.mm(3.0))
                            + 1.5 * _bandpass_noise(rt, shape, fr.mm(3.0), fr.mm(9.0)))
    markings = (vess + tex) * lung_soft
    if an.calcified:
        g = an.granuloma
        s = 0 if g[0] < 0.5 else 1
        gx = (-1 if s == 0 else 1) * (0.35 + 0.45 * g[1]) * Wh
        gy = (0.2 + 0.5 * g[2]) * H
        if an.lung_inside(gx, gy, s):
            markings += 14.0 * _blur(_sphere(_ell(X, Y, gx, gy, 2.6, 2.6)).astype(np.float32), 0.6)
    return markings
