"""Bones of the density map: spine, posterior and anterior ribs, clavicles, scapulae, humeri.

Each ``_add_*`` function adds its layer to the density map ``D`` in place, in the order
:func:`edgeinfer.phantom.render._render` calls them.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .anatomy import _Anatomy
from .geometry import _blur, _canvas, _ell, _Frame, _polyline, _sphere


def _bone_band(fr, bands, fill, cortex):
    """Bone bands with brighter cortical margins: ``bands`` holds (centre line, widths in mm)."""
    m = np.zeros((fr.wh, fr.ww), np.uint8)
    for pts, width_mm in bands:
        pts = np.asarray(pts, dtype=np.float64)
        w = np.broadcast_to(np.asarray(width_mm, dtype=np.float64), (len(pts),))
        t = np.gradient(pts, axis=0)
        t /= np.linalg.norm(t, axis=1, keepdims=True) + 1e-9
        nrm = np.stack([-t[:, 1], t[:, 0]], 1) * (w[:, None] / 2)
        poly = np.concatenate([pts + nrm, (pts - nrm)[::-1]])
        cv2.fillPoly(m, [fr.fixed(poly)], 255, cv2.LINE_AA, 4)
    mf = m.astype(np.float32) / 255.0
    k = max(1, int(round(fr.mm(1.4))))
    er = cv2.erode(mf, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    return fill * mf + cortex * (mf - er)


def _add_spine(D: np.ndarray, an: _Anatomy, fr: _Frame) -> None:
    """Vertebral bodies with pedicles and spinous processes, along a slight scoliosis."""
    H = an.H
    spine = _canvas(fr)
    vh = 0.085 * H
    y = -0.45 * H
    k = 0
    while y < 1.6 * H:
        h = vh * (0.8 + 0.25 * min(1.0, max(0.0, y / H)))
        sx = an.mshift * 0.2 + an.scol * math.sin(math.pi * y / (1.3 * H) + an.scol_ph)
        w = an.spine_w * (0.85 + 0.2 * min(1.0, max(0.0, y / H)))
        box = [(sx - w / 2, y), (sx + w / 2, y), (sx + w / 2, y + 0.82 * h), (sx - w / 2, y + 0.82 * h)]
        cv2.fillPoly(spine, [fr.fixed(box)], 1.0, cv2.LINE_AA, 4)
        for sg in (-1, 1):  # pedicles
            c = fr.fixed([(sx + sg * 0.36 * w, y + 0.3 * h)])[0]
            axes = (int(fr.mm(0.09 * w) * 16), int(fr.mm(0.17 * h) * 16))
            cv2.ellipse(spine, (int(c[0]), int(c[1])), axes, 0, 0, 360, 1.4, max(1, int(fr.mm(1.5))), cv2.LINE_AA, 4)
        c = fr.fixed([(sx, y + 0.55 * h)])[0]  # spinous process
        cv2.ellipse(spine, (int(c[0]), int(c[1])), (int(fr.mm(3) * 16), int(fr.mm(0.28 * h) * 16)), 0, 0, 360,
                    0.8, -1, cv2.LINE_AA, 4)
        y += h
        k += 1
    D += 5.0 * _blur(spine, fr.mm(1.5))


def _add_ribs(D: np.ndarray, an: _Anatomy, fr: _Frame, lung_mask: np.ndarray) -> np.ndarray:
    """Twelve pairs of posterior and anterior ribs; returns the rib layer (for ``debug``)."""
    Wh, H = an.Wh, an.H
    post, ant = [], []
    for i in range(12):
        yi = (an.rib_y0 + an.rib_dy * i * (1 + 0.02 * i)) * H
        reach = min(1.0, 0.55 + 0.25 * i) * (1.03 * Wh)
        for sgn in (-1, 1):
            s_ = np.linspace(0, 1, 24)
            xs = sgn * (0.5 * an.spine_w + 4 + s_ * (reach - 0.5 * an.spine_w - 4))
            ys = yi - an.rib_arch * H * np.sin(np.pi * s_ * 0.75) + an.rib_drop * H * s_ ** 2.2 * (0.6 + 0.05 * i)
            post.append((np.stack([xs, ys], 1), an.rib_w * (0.75 + 0.45 * s_)))
            # anterior rib: from the lateral end, downwards and medially
            x_end, y_end = xs[-1], ys[-1]
            t_ = np.linspace(0, 1, 16)
            xa = x_end - sgn * t_ * (0.62 * reach)
            ya = y_end + 0.04 * H * np.sin(np.pi * t_ * 0.5) + t_ ** 1.3 * 0.22 * H
            ant.append((np.stack([xa, ya], 1), an.rib_w * (1.25 - 0.2 * t_)))
    # ribs are seen best over the lungs: fade them over the mediastinum and the abdomen
    seen = 0.3 + 0.7 * _blur(lung_mask.astype(np.float32), fr.mm(12))
    rib = _bone_band(fr, post, 8.0, 5.0) + _bone_band(fr, ant, 3.0, 3.0)
    D += seen * _blur(rib, 0.6)
    return rib


def _add_shoulder_girdle(D: np.ndarray, an: _Anatomy, fr: _Frame) -> None:
    """Clavicles, scapulae (the border is a pneumothorax mimic) and humeral heads."""
    X, Y = fr.X, fr.Y
    Wh, H = an.Wh, an.H
    clav = []
    for sgn in (-1, 1):
        s_ = np.linspace(0, 1, 20)
        xs = sgn * (22 + s_ * 1.05 * Wh)
        ys = (an.clav_y - an.clav_tilt * s_ + 0.035 * np.sin(2 * np.pi * s_)) * H
        clav.append(np.stack([xs, ys], 1))
    cw = 15.0 * (1.15 - 0.3 * np.linspace(0, 1, 20))
    D += _blur(_bone_band(fr, [(c_, cw) for c_ in clav], 10.0, 6.0), 0.6)
    scap = _canvas(fr)
    for sgn in (-1, 1):
        xo = (0.78 + an.scap_out) * Wh
        tri = [(sgn * xo, -0.06 * H), (sgn * (xo + 0.45 * Wh), -0.08 * H), (sgn * (xo + 0.2 * Wh), 0.58 * H)]
        cv2.fillPoly(scap, [fr.fixed(tri)], 1.0, cv2.LINE_AA, 4)
        cv2.polylines(scap, [fr.fixed(tri[::2])], False, 1.5, max(1, int(fr.mm(2.5))), cv2.LINE_AA, 4)
        if an.humeral:
            hcx, hcy = sgn * (1.18 * Wh + 0.2 * an.fat), -0.05 * H
            D += 38.0 * _sphere(_ell(X, Y, hcx, hcy, 26, 26))
            shaft = _canvas(fr)
            _polyline(shaft, fr, [(hcx, hcy), (hcx + sgn * 0.1 * H, 1.2 * H)], 24, 1.0)
            D += 30.0 * _blur(shaft, 1.0)
    D += 7.0 * _blur(scap, fr.mm(1.5))
