"""The patient frame and the drawing helpers every layer of the phantom uses.

Anatomy is described in millimetres in a patient frame (x to the image right = patient's
left, y down, origin on the midline at the level of the lung apices); :class:`_Frame` maps it
to the pixels of the working (rendering) resolution.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

_WORK_LONG = 768  # long side of the working (rendering) resolution, pixels


class _Frame:
    """Maps the patient frame (mm) to working pixels: rotation, shift, per-axis scale."""

    def __init__(self, wh: int, ww: int, fov_h: float, fov_w: float, angle: float, ox: float, oy: float):
        self.wh, self.ww = wh, ww
        self.sx, self.sy = ww / fov_w, wh / fov_h  # px per mm
        self.mm_per_px = 0.5 * (fov_w / ww + fov_h / wh)
        c, s = math.cos(angle), math.sin(angle)
        # patient (X, Y) -> image mm (centre origin) -> px
        self.A = np.array([[c * self.sx, -s * self.sx, (ox + fov_w / 2) * self.sx - 0.5],
                           [s * self.sy, c * self.sy, (oy + fov_h / 2) * self.sy - 0.5]])
        Ai = cv2.invertAffineTransform(self.A)
        jj, ii = np.meshgrid(np.arange(ww, dtype=np.float32), np.arange(wh, dtype=np.float32))
        self.X = (Ai[0, 0] * jj + Ai[0, 1] * ii + Ai[0, 2]).astype(np.float32)
        self.Y = (Ai[1, 0] * jj + Ai[1, 1] * ii + Ai[1, 2]).astype(np.float32)

    def px(self, pts) -> np.ndarray:
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        return p @ self.A[:, :2].T + self.A[:, 2]

    def fixed(self, pts) -> np.ndarray:
        """Points as int32 in 1/16 pixel, for cv2 drawing with ``shift=4``."""
        return np.round(self.px(pts) * 16).astype(np.int32)

    def mm(self, v: float) -> float:
        return v / self.mm_per_px


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px < 0.3:
        return img
    if sigma_px > 6:  # wide kernels: blur a reduced copy (much faster, visually the same)
        f = int(sigma_px // 3)
        h, w = img.shape
        small = cv2.resize(img, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigma_px / f, borderType=cv2.BORDER_REFLECT)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)


def _ell(X, Y, cx, cy, ax, ay, ang=0.0):
    """Squared normalised radius of a rotated ellipse."""
    c, s = math.cos(ang), math.sin(ang)
    dx, dy = X - cx, Y - cy
    u = (c * dx + s * dy) / ax
    v = (-s * dx + c * dy) / ay
    return u * u + v * v


def _sphere(r2):
    return np.sqrt(np.clip(1.0 - r2, 0.0, None))


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _canvas(fr: _Frame) -> np.ndarray:
    return np.zeros((fr.wh, fr.ww), np.float32)


def _polyline(canvas, fr, pts, thickness_mm, value=1.0):
    p = fr.fixed(pts)
    t = max(1, int(round(fr.mm(thickness_mm))))
    cv2.polylines(canvas, [p], False, float(value), t, cv2.LINE_AA, 4)


def _bandpass_noise(r, shape, s1, s2):
    z = r.standard_normal(shape, dtype=np.float32)
    a = _blur(z, s1) - _blur(z, s2)
    return a / (a.std() + 1e-6)


def _lowfreq(r, shape):
    """Smooth random field in roughly [-1, 1]."""
    small = r.standard_normal((4, 4)).astype(np.float32)
    f = cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return f / (np.abs(f).max() + 1e-6)
