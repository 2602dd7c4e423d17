"""The patient: anatomy drawn once per study, and the soft-tissue layers of the density map.

:class:`_Anatomy` holds every patient-specific shape parameter (one fixed set of random draws,
whatever the options) and the analytic lung and heart geometry. The ``_add_*`` functions add
their layer to the density map ``D`` (a water-equivalent line integral, in mm) in place, in the
order :func:`edgeinfer.phantom.render._render` calls them; the bones are in
:mod:`.skeleton`, the vessels and parenchyma in :mod:`.vessels`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import _blur, _canvas, _ell, _Frame, _polyline, _smoothstep, _sphere


class _Anatomy:
    def __init__(self, r: np.random.Generator, sex: str, view: str, age: int):
        u = r.random(64)  # a fixed number of draws, whatever the options
        n = r.standard_normal(32)
        female = sex == "F"
        self.view = view
        self.Wh = float(np.clip((128 if female else 140) + 9 * n[0], 108, 168))  # hemithorax width
        H = (232 if female else 250) + 17 * n[1]
        if view == "AP":
            H *= 0.92  # supine / poor inspiration
        self.H = float(np.clip(H, 190, 300))
        self.depth = float(np.clip(1.45 * self.Wh * (1 + 0.08 * n[2]), 150, 270))  # AP diameter
        self.fat = float(12 + 30 * u[0] ** 1.5)  # chest wall soft tissue, mm
        # lungs: per side [right (image left), left (image right)]
        self.apex_x = [0.42 + 0.06 * (u[1] - 0.5), 0.42 + 0.06 * (u[2] - 0.5)]
        self.apex_y = [0.01 * self.H * n[3], 0.01 * self.H * n[4] + 0.01 * self.H]
        self.apex_k = [0.45 + 0.15 * u[3], 0.45 + 0.15 * u[4]]
        self.lat = [1.0 + 0.04 * n[5], 1.0 + 0.04 * n[6]]
        self.dome_y = [0.79 + 0.03 * n[7], 0.83 + 0.03 * n[8]]
        self.cp_y = [1.0 + 0.02 * n[9], 1.02 + 0.02 * n[10]]
        self.dome_u = [0.48 + 0.06 * (u[5] - 0.5), 0.50 + 0.06 * (u[6] - 0.5)]
        self.med0 = [0.18 + 0.04 * u[7], 0.24 + 0.04 * u[8]]
        self.knob = 0.09 + 0.05 * u[9]
        self.mshift = 8.0 * n[11]  # mediastinal shift / patient rotation, mm
        # heart
        ctr = np.clip(0.41 + 0.035 * n[12] + (0.04 if view == "AP" else 0.0) + 0.001 * (age - 50), 0.33, 0.58)
        self.heart_w = float(ctr) * 2 * self.Wh  # transverse diameter
        self.heart_y = 0.74 + 0.025 * n[13]
        self.heart_tilt = math.radians(-35 + 10 * n[14])
        self.heart_x = 0.12 + 0.04 * n[15]
        # bones
        self.rib_dy = 0.085 + 0.006 * n[16]
        self.rib_y0 = -0.03 + 0.015 * n[17]
        self.rib_arch = 0.06 + 0.03 * u[10]
        self.rib_drop = 0.20 + 0.06 * u[11]
        self.rib_w = 9.0 + 2.0 * u[12]
        self.clav_y = (0.02 if view == "PA" else -0.04) + 0.03 * n[18]
        self.clav_tilt = (0.07 if view == "PA" else 0.02) + 0.03 * n[19]
        self.scap_out = (0.10 if view == "PA" else -0.08) + 0.06 * n[20]
        self.spine_w = 40 + 6 * u[13]
        self.scol = 4 + 10 * u[14] ** 2
        self.scol_ph = 2 * math.pi * u[15]
        self.arms = u[16] < (0.85 if view == "AP" else 0.45)
        self.humeral = u[17] < 0.8
        # soft tissue extras
        self.breast = female and u[18] < 0.9
        self.breast_size = 0.7 + 0.6 * u[19]
        self.nipples = u[20] < (0.45 if female else 0.25)
        self.nipple_one = u[21] < 0.35  # only one nipple visible
        self.nipple_r = 3.5 + 3.0 * u[22]
        self.nipple_c = 2.5 + 4.0 * u[23]
        self.nipple_pos = (0.50 + 0.12 * (u[24] - 0.5), 0.72 + 0.10 * (u[25] - 0.5))
        self.skinfold = u[26] < (0.35 if view == "AP" else 0.08)
        self.skinfold_side = -1 if u[27] < 0.5 else 1
        self.skinfold_geom = (u[28], u[29], u[30])
        self.ecg = view == "AP" and u[31] < 0.6
        self.ecg_seed = int(r.integers(0, 2**31))
        self.bubble = u[32] < 0.6
        self.bubble_geom = (u[33], u[34], u[35])
        self.lung_density = 0.14 + 0.05 * u[36]
        self.texture_amp = 1.0 + 1.0 * u[37]
        self.vessel_gain = 1.0 + 0.5 * u[38]
        self.vessel_seed = int(r.integers(0, 2**31))
        self.texture_seed = int(r.integers(0, 2**31))
        self.calcified = u[39] < 0.12  # a small calcified granuloma (normal variant, mimic)
        self.granuloma = (u[40], u[41], u[42])

    # --- lungs, analytic (works on arrays or scalars) ---
    def lung_inside(self, X, Y, side: int, *, wall_only: bool = False):
        """side 0: patient's right lung (image left), 1: patient's left lung (image right)."""
        Wh, H = self.Wh, self.H
        sgn = -1.0 if side == 0 else 1.0
        uu = sgn * (X - self.mshift * 0.3)
        Yn = Y / H
        top = self.apex_y[side] + self.apex_k[side] * H * ((uu - self.apex_x[side] * Wh) / (0.58 * Wh)) ** 2
        t = np.clip((0.55 - Yn) / 0.55, 0, 1)
        lat = Wh * self.lat[side] * (1 - 0.34 * t * t) * (1 + 0.03 * np.sin(np.pi * np.clip(Yn, 0, 1)))
        if wall_only:  # inside the apex and the lateral chest wall only (for pneumothorax geometry)
            return (Y >= top) & (uu <= lat) & ((uu >= self.apex_x[side] * Wh) | (Y >= self.apex_y[side]))
        du = self.dome_u[side] * Wh
        kd = (self.cp_y[side] - self.dome_y[side]) * H / (self.lat[side] * Wh - du) ** 2
        dia = self.dome_y[side] * H + kd * (uu - du) ** 2
        med = Wh * (self.med0[side] + 0.05 * Yn) + sgn * self.mshift
        if side == 1:
            med = med + Wh * (self.knob * np.exp(-((Yn - 0.27) / 0.055) ** 2)
                              + 0.05 * np.exp(-((Yn - 0.40) / 0.05) ** 2))
        else:
            med = med + Wh * 0.03 * np.exp(-((Yn - 0.33) / 0.08) ** 2)
        return (Y >= top) & (Y <= dia) & (uu >= med) & (uu <= lat)

    def heart_thickness(self, X, Y):
        Wh, H = self.Wh, self.H
        hw = self.heart_w
        cx = self.heart_x * Wh + self.mshift
        cy = self.heart_y * H
        lv = _ell(X, Y, cx + 0.16 * hw, cy + 0.03 * H, 0.38 * hw, 0.25 * H, self.heart_tilt)
        ra = _ell(X, Y, cx - 0.27 * hw, cy + 0.02 * H, 0.27 * hw, 0.19 * H, 0.15)
        t = np.maximum(_sphere(lv), 0.95 * _sphere(ra)) ** 0.7
        t = t * (1 - _smoothstep((self.dome_y[1] + 0.1) * H, (self.dome_y[1] + 0.25) * H, Y))
        return 0.72 * self.depth * t

    def hilum(self, side: int):
        sgn = -1.0 if side == 0 else 1.0
        yn = 0.43 if side == 0 else 0.39
        return (sgn * (self.med0[side] + 0.05 * yn + 0.09) * self.Wh + self.mshift, yn * self.H)


@dataclass
class _Lungs:
    """The lung fields at the working resolution, as later layers and the findings need them."""

    masks: list  # per side (0: patient's right, 1: left), uint8
    mask: np.ndarray  # both sides, uint8
    eff: np.ndarray  # effective air thickness (lung minus heart), mm
    soft: np.ndarray  # eff normalised to [0, 1]: where lung markings show
    thick: float  # nominal full lung thickness, mm
    heart: np.ndarray  # heart thickness, mm


def _body(an: _Anatomy, fr: _Frame) -> np.ndarray:
    """Body soft tissue (elliptical cross-sections), shoulders and the arms: the start of ``D``."""
    X, Y = fr.X, fr.Y
    Wh, H, depth = an.Wh, an.H, an.depth
    yk = np.array([-0.50, -0.22, -0.12, -0.02, 0.12, 0.30, 0.7, 1.0, 1.3, 2.0]) * H
    ak = np.array([0.36, 0.40, 0.85, 1.12, 1.14, 1.10, 1.08, 1.08, 1.10, 1.12]) * Wh
    ak[3:] += an.fat
    ak[2] += 0.5 * an.fat
    a_y = np.interp(Y, yk, ak).astype(np.float32)
    b_y = np.interp(Y, yk, np.array([0.36, 0.40, 0.55, 0.62, 0.66, 0.72, 0.74, 0.76, 0.78, 0.8]) * Wh * 1.1)
    b_y = (b_y * depth / (1.45 * Wh) + 0.4 * an.fat).astype(np.float32)
    xb = X - an.mshift * 0.5 * np.clip(1 - np.abs(Y / H - 0.5), 0, 1)
    body = 2 * b_y * _sphere((xb / a_y) ** 2)
    # shoulders are rounder than the neck-torso ellipse suggests
    for sgn in (-1, 1):
        sh = _ell(X, Y, sgn * 0.95 * Wh, -0.06 * H, 0.42 * Wh, 0.16 * H)
        body = np.maximum(body, 0.5 * depth * _sphere(sh))
    D = body.astype(np.float32)

    # arms at the sides
    if an.arms:
        for sgn in (-1, 1):
            ax_ = sgn * (1.42 * Wh + an.fat + 10)
            arm = _ell(X, Y, ax_ + sgn * 0.1 * np.clip(Y, 0, None), 0.55 * H, 0.30 * Wh, 0.75 * H)
            D += 0.55 * depth * _sphere(arm) * (Y > -0.05 * H)
    return D


def _add_lungs(D: np.ndarray, an: _Anatomy, fr: _Frame) -> _Lungs:
    """Lung masks -> air thickness (heart excluded), subtracted from ``D``."""
    X, Y = fr.X, fr.Y
    H, depth = an.H, an.depth
    masks = [an.lung_inside(X, Y, s).astype(np.uint8) for s in (0, 1)]
    lung_mask = masks[0] | masks[1]
    dist = [cv2.distanceTransform(m, cv2.DIST_L2, 5) * fr.mm_per_px for m in masks]
    dist_all = np.maximum(dist[0], dist[1])
    Tl = 0.82 * depth
    vert = 0.62 + 0.38 * _smoothstep(0.0, 0.38 * H, Y)
    T = Tl * np.sqrt(np.clip(dist_all / 38.0, 0, 1)) * vert * (lung_mask > 0)
    T = _blur(T.astype(np.float32), 0.6)
    heart = an.heart_thickness(X, Y).astype(np.float32)
    lung_eff = np.clip(T - heart, 0, None)
    lung_soft = np.clip(lung_eff / (0.25 * Tl), 0, 1)
    D -= (1 - an.lung_density) * lung_eff
    return _Lungs(masks, lung_mask, lung_eff, lung_soft, Tl, heart)


def _add_airways(D: np.ndarray, an: _Anatomy, fr: _Frame) -> None:
    """Trachea and main bronchi; the stomach bubble under the left dome."""
    X, Y = fr.X, fr.Y
    Wh, H = an.Wh, an.H
    air = _canvas(fr)
    tx = an.mshift * 0.6
    carina = (tx + 0.01 * Wh, 0.36 * H)
    _polyline(air, fr, [(tx * 0.3, -0.6 * H), (tx * 0.7, 0.0), carina], 17, 1.0)
    _polyline(air, fr, [carina, (carina[0] - 0.22 * Wh, 0.45 * H)], 12, 0.8)
    _polyline(air, fr, [carina, (carina[0] + 0.26 * Wh, 0.42 * H)], 11, 0.8)
    D -= 24.0 * _blur(air, fr.mm(3))

    if an.bubble:
        g = an.bubble_geom
        cx, cy = (0.45 + 0.2 * g[0]) * Wh, (an.dome_y[1] + 0.09 + 0.04 * g[1]) * H
        e = _ell(X, Y, cx, cy, (0.12 + 0.1 * g[2]) * Wh, 0.05 * H)
        D -= 30.0 * _sphere(e) ** 0.3 * _smoothstep(cy + 0.012 * H, cy + 0.006 * H, Y)


def _add_breasts(D: np.ndarray, an: _Anatomy, fr: _Frame) -> None:
    """Breast shadows and nipples (a nodule mimic)."""
    X, Y = fr.X, fr.Y
    Wh, H = an.Wh, an.H
    if an.breast:
        for sgn in (-1, 1):
            bs = an.breast_size
            e = _ell(X, Y, sgn * 0.72 * Wh, (0.74 + 0.06 * bs) * H, 0.42 * Wh * bs, 0.20 * H * bs, sgn * 0.3)
            D += 14.0 * bs * _sphere(e) * _smoothstep(0.45 * H, 0.8 * H, Y)
    if an.nipples:
        for sgn in ((-1,) if an.nipple_one else (-1, 1)):
            nx, ny = an.nipple_pos
            e = _ell(X, Y, sgn * nx * Wh, ny * H, an.nipple_r, an.nipple_r * 0.9)
            D += an.nipple_c * _blur(_sphere(e).astype(np.float32), fr.mm(1.2))


def _add_skinfold(D: np.ndarray, an: _Anatomy, fr: _Frame) -> None:
    """A skin fold (a pleural-line mimic), sometimes."""
    if not an.skinfold:
        return
    X, Y = fr.X, fr.Y
    Wh, H = an.Wh, an.H
    g = an.skinfold_geom
    sgn = an.skinfold_side
    Rr = (1.2 + 1.5 * g[0]) * Wh
    cx = sgn * (0.9 * Wh - Rr * (0.9 + 0.2 * g[1]))
    cy = (0.5 + 0.2 * g[2]) * H
    rr = np.sqrt((X - cx) ** 2 + (Y - cy) ** 2) - Rr
    fold = (0.5 * (1 + np.tanh(-rr / 2.5)) - 0.5 * (1 + np.tanh(-(rr + 25) / 12.0)))
    fold *= np.exp(-((Y - cy) / (0.28 * H)) ** 2)
    D += 4.0 * fold.astype(np.float32)


def _masks_out(an: _Anatomy, fr: _Frame, lungs: _Lungs) -> dict:
    """Anatomical masks at the working resolution (for tests, through ``debug``)."""
    X, Y = fr.X, fr.Y
    central = (np.abs(X - 0.5 * an.mshift) < 0.1 * an.Wh) & (Y > 0.05 * an.H) & (Y < 0.75 * an.H)
    return {"lung": lungs.mask > 0, "lung_eff": lungs.eff > 0.1 * lungs.thick,
            "mediastinum": (central | (lungs.heart > 0.3 * an.depth)) & (lungs.mask == 0) & (Y < 0.8 * an.H)}
