"""Acquisition and detector: what the exposure, the device and its processing add.

ECG electrodes and wires in the beam, the heel effect, low-frequency variation and the side
marker act on the density map; a vendor-like processing chain (log-like tone curve, unsharp
masking, dynamic range compression, gamma and gain, collimation) and quantum-like noise turn
it into the image, which :func:`_to_stored` brings to the detector size and stored values.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .anatomy import _Anatomy
from .geometry import _blur, _canvas, _Frame, _lowfreq, _polyline


def _add_ecg(D: np.ndarray, an: _Anatomy, fr: _Frame) -> None:
    """ECG electrodes and their wires (mimics), on some AP studies."""
    if not an.ecg:
        return
    Wh, H = an.Wh, an.H
    re = np.random.default_rng(an.ecg_seed)
    dev = _canvas(fr)
    for _ in range(3 + int(re.integers(0, 3))):
        ex, ey = (re.random() * 2 - 1) * 1.1 * Wh, (0.05 + 0.9 * re.random()) * H
        c = fr.fixed([(ex, ey)])[0]
        cv2.circle(dev, (int(c[0]), int(c[1])), int(fr.mm(11) * 16), 0.5, -1, cv2.LINE_AA, 4)
        cv2.circle(dev, (int(c[0]), int(c[1])), int(fr.mm(3) * 16), 3.0, -1, cv2.LINE_AA, 4)
        pts = [(ex, ey)]
        ang = re.random() * 2 * np.pi
        turn = 0.0
        for _k in range(40):
            turn = 0.8 * turn + 0.06 * re.standard_normal()
            ang += turn
            pts.append((pts[-1][0] + 8 * math.cos(ang), pts[-1][1] + 8 * math.sin(ang)))
        _polyline(dev, fr, pts, 1.2, 1.0)
    D += 25.0 * _blur(dev, 0.6)


def _acquire(D: np.ndarray, img: dict, fr: _Frame, r: np.random.Generator) -> np.ndarray:
    """Heel effect, low-frequency variation (draws from ``r``) and the side marker."""
    shape = (fr.wh, fr.ww)
    hl = img["heel"]
    Xi, Yi = np.meshgrid(np.linspace(-1, 1, fr.ww, dtype=np.float32), np.linspace(-1, 1, fr.wh, dtype=np.float32))
    D = D * (1 + hl[0] * Yi + hl[1] * Xi) + img["lowfreq_amp"] * _lowfreq(r, shape)
    if img["marker"]:
        mk = np.zeros(shape, np.uint8)
        scale = fr.mm(14) / 22.0
        org = (int(fr.ww * img["marker_pos"][0]), int(fr.wh * img["marker_pos"][1]))
        cv2.putText(mk, img["marker"], org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, max(1, int(scale * 2.2)), cv2.LINE_AA)
        D = np.maximum(D, 300.0 * mk.astype(np.float32) / 255.0)
    return D


def _process(D: np.ndarray, img: dict, fr: _Frame, r: np.random.Generator) -> np.ndarray:
    """Vendor-like processing of the (clipped) density map, then working-resolution noise
    (draws from ``r``); the result is not clipped yet."""
    shape = (fr.wh, fr.ww)
    B = 1 - np.exp(-img["tone_a"] * (D / 250.0) ** img["tone_g"])
    B = B + img["usm"] * (B - _blur(B, fr.mm(img["usm_mm"])))
    big = _blur(B, fr.mm(45))
    B = B - img["drc"] * (big - float(big.mean()))
    B = np.clip(B, 0, None) ** img["gamma"]
    B = B * img["gain"] + img["offset"]
    if img["collimate"] is not None:
        c = img["collimate"]
        jj, ii = np.meshgrid(np.arange(fr.ww), np.arange(fr.wh))
        inside = ((jj >= c[0] * fr.ww) & (jj < (1 - c[1]) * fr.ww) & (ii >= c[2] * fr.wh) & (ii < (1 - c[3]) * fr.wh))
        inside = _blur(inside.astype(np.float32), 1.0)
        B = B * inside + (1 - inside) * img["shutter_value"]
    # correlated (working-resolution) quantum noise: what a downsampled image still shows
    nz = _blur(r.standard_normal(shape, dtype=np.float32), 0.7)
    B = B + img["noise_work"] * (0.4 + np.clip(B, 0, 1)) * nz / 0.4
    return B


def _to_stored(work, rows, cols, spacing, dev, img, r) -> np.ndarray:
    if work.shape != (rows, cols):
        full = cv2.resize(work, (cols, rows), interpolation=cv2.INTER_CUBIC)
    else:
        full = work.copy()
    # quantum-like noise at full resolution, stronger where the body is dense
    sigma = img["noise_full"] * math.sqrt(0.15 / spacing)
    nz = r.standard_normal((rows, cols), dtype=np.float32)
    full += nz * (sigma * (0.35 + np.clip(full, 0, 1)))
    np.clip(full, 0, 1, out=full)
    lo, hi = dev["lo"], dev["hi"]
    full *= hi - lo
    full += lo
    return np.rint(full).astype(np.uint16)
