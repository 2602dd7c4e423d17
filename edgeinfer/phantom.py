"""Synthetic chest radiographs ("phantoms") written as valid DICOM.

Used for three things: ``edgeinfer phantom OUT_DIR --n N --seed S`` (self-test data for a
device), training a small triage CNN, and the test suite. Only numpy, pydicom and OpenCV are
needed; nothing is downloaded.

How an image is made
--------------------
Anatomy is described in millimetres in a patient frame (x to the image right = patient's
left, y down, origin on the midline at the level of the lung apices). A *density* map -- a
water-equivalent line integral, in mm -- is rendered at a working resolution of at most 768
pixels with OpenCV: body soft tissue (elliptical cross-sections), two lung fields (air, with
a thickness profile from a distance transform), heart and mediastinum, diaphragm domes and the
stomach bubble, trachea and main bronchi, spine, posterior and anterior ribs, clavicles,
scapulae, humeral heads, vessel trees branching from the hila, parenchymal texture, breasts
and nipple shadows, sometimes skin folds, ECG electrodes and a side marker. A vendor-like
processing chain follows (log-like tone curve, unsharp masking, dynamic range compression,
heel effect, low-frequency variation), then the image is resized to the detector size with
``cv2.resize`` and quantum-like noise (stronger in dense regions) is added at full resolution.

Findings (``FINDINGS``) are placed inside the lung masks:

* ``mass``: a round/oval, slightly lobulated soft-tissue density of 1-4 cm with a soft edge;
* ``pneumothorax``: a rim along the apex and/or lateral chest wall where lung markings are
  absent and the lung is slightly darker, bounded by a thin faint visceral pleural line.

Each finding has a *strength* in (0, 1], drawn as ``1 - U**2.5`` (median 0.82; 4 % below 0.1,
13 % below 0.3), and its contrast is ``strength * FINDING_CONTRAST[kind] / difficulty`` times a
fixed maximum (``difficulty`` defaults to the module-level :data:`DIFFICULTY`). Most findings are plainly
there at the model's resolution; a continuous tail goes down to invisible, which is what keeps
a good model's AUC below 1. Size varies independently (masses 1-4 cm, pneumothorax rims
6-50 mm). Normal cases contain things that mimic findings: end-on vessels, rib crossings,
nipple shadows, calcified granulomas, skin folds, ECG leads and the scapular border. The same
patient (same anatomy, same finding) appears on both images of a two-image study.

Determinism: every random draw comes from ``numpy.random.Generator`` objects derived from the
seed, UIDs are hashes of seed-derived tokens and dates are drawn from the seed, so
``generate(out, n, seed)`` writes byte-identical files every time on the same software
versions (``ImplementationVersionName`` carries the pydicom version, and OpenCV's
interpolation may differ in the last bit between OpenCV builds).
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from ._io import atomic_write
from .errors import UsageError

__all__ = ["FINDINGS", "DIFFICULTY", "FINDING_CONTRAST", "PhantomCase", "make_case", "generate", "LABELS_COLUMNS"]

#: kinds of urgent finding; a case without one has finding "none" and label "normal"
FINDINGS = ("pneumothorax", "mass")

#: Global difficulty knob. Finding contrast is divided by it: 1.0 is the calibrated default,
#: 2.0 halves every finding's contrast (harder), 0.5 doubles it (easier). ``make_case`` and
#: ``generate`` take ``difficulty=`` to override it per call; the value in effect at call time
#: is used.
DIFFICULTY = 0.5

#: Per-kind contrast multipliers, to tune one finding without the other (in short training
#: runs a small CNN learns pneumothoraces much sooner than masses). Applied with DIFFICULTY:
#: contrast = strength * FINDING_CONTRAST[kind] / difficulty.
FINDING_CONTRAST = {"pneumothorax": 1.0, "mass": 1.0}

#: columns of ``labels.csv``, in order
LABELS_COLUMNS = (
    "path", "study_uid", "series_uid", "sop_instance_uid", "label", "finding", "modality",
    "photometric", "bits_stored", "rows", "columns", "transfer_syntax",
)

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage

_WORK_LONG = 768  # long side of the working (rendering) resolution, pixels
_UID_NAMESPACE = "edgeinfer-phantom-v1"

# maximum finding contrasts at strength 1, difficulty 1 (density units: mm of water)
_MASS_GAIN = 4.5  # peak density of a 2 cm mass, relative to a solid 2 cm sphere in aerated lung
_PTX_LINE = 25.0  # peak density of the visceral pleural line
_PTX_DARK = 0.35  # fraction of the local lung density removed inside the pneumothorax
_VESSEL_GAIN = 3.0  # vessel density per mm of diameter (includes the processing's emphasis)


@dataclass(frozen=True)
class PhantomCase:
    """One synthetic image and its ground truth.

    ``dataset`` is complete (file meta included) and can be written with
    ``pydicom.dcmwrite(path, case.dataset, enforce_file_format=True)``. ``details`` holds the
    finding's geometry and strength (centre in output pixel coordinates, size in mm, the
    strength in [0, 1) and the contrast actually applied); it is not part of ``labels.csv``.
    """

    dataset: Dataset
    label: str
    finding: str
    study_uid: str
    relpath: str
    details: dict = field(default_factory=dict, compare=False, repr=False)


# ------------------------------------------------------------------------------------------
# devices and header variety
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Profile:
    manufacturer: str
    model: str
    modality: str
    rows: int
    cols: int
    spacing: float  # mm
    software: str
    weight: float


_PROFILES = (
    _Profile("Aurora Imaging", "Lumen DR43", "DX", 3000, 3000, 0.143, "LumenOS 4.2.1", 3),
    _Profile("Aurora Imaging", "Lumen DR35", "DX", 2500, 2500, 0.140, "LumenOS 4.2.1", 1),
    _Profile("Nordlicht Medical", "ND-4335 Flat", "DX", 2500, 2048, 0.170, "NDX 7.0", 3),
    _Profile("Nordlicht Medical", "ND-4335 Flat", "DX", 2048, 2500, 0.170, "NDX 7.0", 1),
    _Profile("Kestrel Radiology", "KX Mobile 43", "DX", 2816, 2304, 0.150, "KX 2.11", 2),
    _Profile("Kestrel Radiology", "KX Mobile 43 export", "DX", 1024, 840, 0.412, "KX 2.11", 1),
    _Profile("Tamarind Systems", "TR-CR 2", "CR", 2140, 1760, 0.200, "TRC 3.3", 3),
    _Profile("Tamarind Systems", "TR-CR 2", "CR", 1760, 1760, 0.200, "TRC 3.3", 1),
    _Profile("Halcyon X-Ray", "HX-CR Plus", "CR", 2370, 1950, 0.180, "HX 1.9.4", 2),
    _Profile("Halcyon X-Ray", "HX-CR Plus web", "CR", 640, 528, 0.667, "HX 1.9.4", 1),
)
_INSTITUTIONS = ("Phantom General Hospital", "Synthetic Valley Clinic", "Test Harbour Medical Centre")
_VOI_STYLES = ("none", "window", "multiwindow", "rescale", "window+rescale", "multiwindow+rescale")

# generate() stratifies these over studies so that every moderately sized set contains the mix
_STRATA = {
    "finding": (("none", "pneumothorax", "mass"), (0.5, 0.25, 0.25)),
    "modality": (("DX", "CR"), (0.6, 0.4)),
    "photometric": (("MONOCHROME2", "MONOCHROME1"), (0.62, 0.38)),
    "bits": ((12, 14, 16), (0.36, 0.34, 0.30)),
    "compress": ((False, True), (0.75, 0.25)),
    "voi": (_VOI_STYLES, (0.2, 0.2, 0.15, 0.15, 0.15, 0.15)),
    "view": (("PA", "AP"), (0.7, 0.3)),
}


def _pick(u: float, values, weights):
    c = np.cumsum(np.asarray(weights, dtype=float))
    return values[int(np.searchsorted(c / c[-1], u, side="right").clip(0, len(values) - 1))]


def _ds(v: float, digits: int = 6) -> str:
    """A DS string of at most 16 characters."""
    s = f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


# ------------------------------------------------------------------------------------------
# geometry helpers
# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# anatomy (patient-specific, drawn once per study)
# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------
def _canvas(fr: _Frame) -> np.ndarray:
    return np.zeros((fr.wh, fr.ww), np.float32)


def _polyline(canvas, fr, pts, thickness_mm, value=1.0):
    p = fr.fixed(pts)
    t = max(1, int(round(fr.mm(thickness_mm))))
    cv2.polylines(canvas, [p], False, float(value), t, cv2.LINE_AA, 4)


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


def _bandpass_noise(r, shape, s1, s2):
    z = r.standard_normal(shape, dtype=np.float32)
    a = _blur(z, s1) - _blur(z, s2)
    return a / (a.std() + 1e-6)


def _lowfreq(r, shape):
    """Smooth random field in roughly [-1, 1]."""
    small = r.standard_normal((4, 4)).astype(np.float32)
    f = cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return f / (np.abs(f).max() + 1e-6)


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


def _render(an: _Anatomy, fd: _Finding | None, img: dict, fr: _Frame, r: np.random.Generator, debug=None):
    """Density map -> processed image in [0, 1] at the working resolution, plus truth."""
    X, Y = fr.X, fr.Y
    Wh, H, depth = an.Wh, an.H, an.depth
    shape = (fr.wh, fr.ww)
    truth: dict[str, Any] = {}

    # --- body soft tissue: elliptical cross-sections ---
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

    # --- lungs: mask -> thickness ---
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

    # --- trachea and main bronchi ---
    air = _canvas(fr)
    tx = an.mshift * 0.6
    carina = (tx + 0.01 * Wh, 0.36 * H)
    _polyline(air, fr, [(tx * 0.3, -0.6 * H), (tx * 0.7, 0.0), carina], 17, 1.0)
    _polyline(air, fr, [carina, (carina[0] - 0.22 * Wh, 0.45 * H)], 12, 0.8)
    _polyline(air, fr, [carina, (carina[0] + 0.26 * Wh, 0.42 * H)], 11, 0.8)
    D -= 24.0 * _blur(air, fr.mm(3))

    # --- stomach bubble under the left dome ---
    if an.bubble:
        g = an.bubble_geom
        cx, cy = (0.45 + 0.2 * g[0]) * Wh, (an.dome_y[1] + 0.09 + 0.04 * g[1]) * H
        e = _ell(X, Y, cx, cy, (0.12 + 0.1 * g[2]) * Wh, 0.05 * H)
        D -= 30.0 * _sphere(e) ** 0.3 * _smoothstep(cy + 0.012 * H, cy + 0.006 * H, Y)

    # --- spine ---
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

    # --- ribs ---
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

    # --- clavicles, scapulae, humeral heads ---
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

    # --- breasts and nipples ---
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

    # --- vessels and parenchymal texture (absent inside a pneumothorax) ---
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

    # --- finding ---
    extra = np.zeros(shape, np.float32)
    if fd is not None and fd.kind == "mass":
        cx, cy, ra, rb, ang, d = _place_mass(an, fd)
        u = fd.u
        phi = np.arctan2(Y - cy, X - cx)
        lob = 1 + 0.08 * u[5] * np.sin(3 * phi + 6.28 * u[6]) + 0.06 * u[7] * np.sin(5 * phi + 6.28 * u[8])
        e = _ell(X, Y, cx, cy, ra, rb, ang) / lob ** 2
        prof = _sphere(e).astype(np.float32)
        prof = _blur(prof, fr.mm((0.08 + 0.22 * u[9]) * ra))
        amp = _MASS_GAIN * (1 - an.lung_density) * 20.0 * (rb / 10.0) ** 0.6 * fd.contrast
        extra += amp * prof
        truth.update(center_mm=(cx, cy), size_mm=round(float(d), 1), side=("right", "left")[fd.side],
                     peak_density=round(float(amp), 3))
    elif fd is not None and fd.kind == "pneumothorax":
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
        m = masks[s] > 0
        region = np.clip((wmap - dside) / fr.mm_per_px + 0.5, 0, 1) * m
        region = _blur(region.astype(np.float32), 0.5)
        lw = 0.5 + 0.5 * u[4]  # line half-width, mm
        line = np.exp(-0.5 * ((dside - wmap) / max(lw, 0.5 * fr.mm_per_px)) ** 2) * m
        line *= np.clip((wmap - 1.5) / 4.0, 0, 1)
        markings *= 1 - region * min(1.0, fd.contrast)  # absent markings fade with the strength too
        local = np.maximum(lung_eff, 0.3 * Tl)
        extra -= _PTX_DARK * fd.contrast * an.lung_density * local * region / 0.22
        extra += _PTX_LINE * fd.contrast * _blur(line.astype(np.float32), 0.4)
        yy, xx = np.nonzero(region > 0.5)
        if len(yy):
            cpx = (float(xx.mean()), float(yy.mean()))
        else:
            cpx = tuple(fr.px([(ax_, ay_)])[0])
        truth.update(center_px_work=cpx, width_mm=round(float(w0), 1), extent_mm=round(float(ext), 1), zone=zone,
                     side=("right", "left")[s], area_px_work=int(len(yy)))
    D += markings + extra

    # --- skin fold (a pleural-line mimic) ---
    if an.skinfold:
        g = an.skinfold_geom
        sgn = an.skinfold_side
        Rr = (1.2 + 1.5 * g[0]) * Wh
        cx = sgn * (0.9 * Wh - Rr * (0.9 + 0.2 * g[1]))
        cy = (0.5 + 0.2 * g[2]) * H
        rr = np.sqrt((X - cx) ** 2 + (Y - cy) ** 2) - Rr
        fold = (0.5 * (1 + np.tanh(-rr / 2.5)) - 0.5 * (1 + np.tanh(-(rr + 25) / 12.0)))
        fold *= np.exp(-((Y - cy) / (0.28 * H)) ** 2)
        D += 4.0 * fold.astype(np.float32)

    # --- ECG electrodes and wires ---
    if an.ecg:
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

    # --- acquisition: heel effect, low-frequency variation, side marker ---
    hl = img["heel"]
    Xi, Yi = np.meshgrid(np.linspace(-1, 1, fr.ww, dtype=np.float32), np.linspace(-1, 1, fr.wh, dtype=np.float32))
    D = D * (1 + hl[0] * Yi + hl[1] * Xi) + img["lowfreq_amp"] * _lowfreq(r, shape)
    if img["marker"]:
        mk = np.zeros(shape, np.uint8)
        scale = fr.mm(14) / 22.0
        org = (int(fr.ww * img["marker_pos"][0]), int(fr.wh * img["marker_pos"][1]))
        cv2.putText(mk, img["marker"], org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, max(1, int(scale * 2.2)), cv2.LINE_AA)
        D = np.maximum(D, 300.0 * mk.astype(np.float32) / 255.0)

    # --- vendor-like processing ---
    D = np.clip(D, 0, None)
    if debug is not None:
        debug.update(D=D.copy(), rib=rib, lung=lung_mask, heart=heart, lung_eff=lung_eff, markings=markings)
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
    central = (np.abs(X - 0.5 * an.mshift) < 0.1 * Wh) & (Y > 0.05 * H) & (Y < 0.75 * H)
    masks_out = {"lung": lung_mask > 0, "lung_eff": lung_eff > 0.1 * Tl,
                 "mediastinum": (central | (heart > 0.3 * depth)) & (lung_mask == 0) & (Y < 0.8 * H)}
    return np.clip(B, 0, 1.05).astype(np.float32), truth, masks_out


# ------------------------------------------------------------------------------------------
# cases and studies
# ------------------------------------------------------------------------------------------
def _stream(seeds, k: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([int(seeds[k]), *extra])


def _uid(token: str, *parts: Any) -> str:
    return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, token, *map(str, parts)]))


def _device(r: np.random.Generator, plan: dict) -> dict:
    u = r.random(24)
    modality = plan.get("modality") or _pick(u[0], *_STRATA["modality"])
    profs = [p for p in _PROFILES if p.modality == modality]
    prof = _pick(u[1], profs, [p.weight for p in profs])
    bits = plan.get("bits") or _pick(u[2], *_STRATA["bits"])
    photometric = plan.get("photometric") or _pick(u[3], *_STRATA["photometric"])
    compress = plan.get("compress")
    if compress is None:
        compress = bool(_pick(u[4], *_STRATA["compress"]))
    voi = plan.get("voi") or _pick(u[5], *_STRATA["voi"])
    view = plan.get("view") or _pick(u[6], *_STRATA["view"])
    maxv = (1 << bits) - 1
    lo = maxv * (0.005 + 0.05 * u[7])
    hi = maxv * (0.80 + 0.195 * u[8])
    if "rescale" in voi:
        slope = _pick(u[9], (1.0, 0.5, 2.0), (0.5, 0.25, 0.25))
        intercept = _pick(u[10], (0.0, -1024.0, 100.0, -512.0, 1000.0), (0.2, 0.3, 0.15, 0.2, 0.15))
        rescale = (slope, intercept)
    else:
        rescale = None
    return dict(profile=prof, modality=modality, bits=bits, photometric=photometric, compress=compress,
                voi=voi, view=view, lo=lo, hi=hi, rescale=rescale, u=u)


def _image_params(r: np.random.Generator, view: str) -> dict:
    u = r.random(32)
    n = r.standard_normal(8)
    return dict(
        angle=math.radians(2.5 * n[0]), ox=8 * n[1], oy=8 * n[2], top_margin=25 + 40 * u[0],
        heel=(0.05 * n[3], 0.03 * n[4]), lowfreq_amp=4.0 * u[1],
        tone_a=1.6 + 0.8 * u[2], tone_g=1.7 + 0.6 * u[27],
        usm=0.3 + 0.7 * u[3], usm_mm=4 + 8 * u[4], drc=0.1 + 0.3 * u[5],
        gamma=0.8 + 0.45 * u[6], gain=0.92 + 0.12 * u[7], offset=0.03 * u[8],
        noise_work=0.004 + 0.010 * u[9], noise_full=0.006 + 0.014 * u[10],
        marker=("R" if u[11] < 0.5 else "L") if u[12] < 0.6 else "",
        marker_pos=((0.04 if u[11] < 0.5 else 0.88) + 0.04 * u[13], 0.06 + 0.04 * u[14]),
        collimate=(tuple(0.01 + 0.05 * u[15:19])) if u[19] < 0.3 else None,
        shutter_value=0.95 + 0.05 * u[20] if u[21] < 0.7 else 0.02 * u[20],
        kvp=(110 + 15 * u[22]) if view == "PA" else (80 + 20 * u[22]),
        mas=1.0 + 4.0 * u[23], minutes=1 + int(3 * u[24]),
        ww_jitter=(0.92 + 0.16 * u[25], 0.96 + 0.08 * u[26]),
    )


def _out_size(prof: _Profile, size, max_size) -> tuple[int, int, float]:
    fov = max(prof.rows, prof.cols) * prof.spacing
    if size is None:
        rows, cols = prof.rows, prof.cols
    elif isinstance(size, (int, np.integer)):
        rows = cols = int(size)
    else:
        rows, cols = (int(v) for v in size)
    if rows < 16 or cols < 16 or max(rows, cols) > 8192:
        raise ValueError(f"phantom size must be between 16 and 8192 pixels, got {rows}x{cols}")
    if max_size is not None and max(rows, cols) > max_size:
        s = max_size / max(rows, cols)
        rows, cols = max(16, round(rows * s)), max(16, round(cols * s))
    spacing = fov / max(rows, cols)
    return rows, cols, spacing


def _make_study(rng: np.random.Generator, *, index: int, n_images: int, plan: dict, size=None,
                max_size: int | None = None, difficulty: float | None = None,
                debug: list | None = None) -> list[PhantomCase]:
    """One study of ``n_images`` images of the same patient. ``plan`` fixes some choices
    (keys of ``_STRATA``; private extras: ``strength``). ``debug``, if a list, receives the
    anatomical masks of each image at output size (for tests)."""
    diff = DIFFICULTY if difficulty is None else float(difficulty)
    if not diff > 0 or not math.isfinite(diff):
        raise ValueError(f"difficulty must be a positive number, got {diff!r}")
    seeds = rng.integers(0, 2**62, size=8)
    token = f"{int(seeds[0]):x}"

    # what is wrong with this patient
    rk = _stream(seeds, 1)
    uk = rk.random()
    finding = plan.get("finding")
    if finding is None:
        finding = _pick(uk, *_STRATA["finding"])
    if finding not in ("none", *FINDINGS):
        raise ValueError(f"finding must be None, 'none' or one of {FINDINGS}, got {finding!r}")

    # patient and study
    rh = _stream(seeds, 2)
    uh = rh.random(16)
    sex = "F" if uh[0] < 0.5 else "M"
    age = int(20 + 70 * uh[1])
    study_date = _dt.date(2023, 1, 2) + _dt.timedelta(days=int(900 * uh[2]))
    study_time = _dt.time(7 + int(12 * uh[3]), int(60 * uh[4]), int(60 * uh[5]))
    birth = study_date - _dt.timedelta(days=int(365.25 * age + 360 * uh[6]))
    accession = f"PHA{int(uh[7] * 1e8):08d}"
    same_series = uh[8] < 0.5
    body_part = uh[9] >= 0.12
    institution = _INSTITUTIONS[int(uh[10] * len(_INSTITUTIONS))]
    both_spacings = uh[11] < 0.5
    study_uid = _uid(token, "study")

    dev = _device(_stream(seeds, 3), plan)
    an = _Anatomy(_stream(seeds, 4), sex, dev["view"], age)

    rf = _stream(seeds, 5)
    uf = rf.random(16)
    # most findings are plainly there, with a continuous tail down to invisible:
    # P(strength < 0.1) ~ 4 %, P(< 0.3) ~ 13 %, median 0.82
    strength = float(1.0 - rf.random() ** 2.5)
    if plan.get("strength") is not None:  # private: previews and tests
        strength = float(plan["strength"])
    fd = None
    if finding != "none":
        contrast = strength * float(FINDING_CONTRAST.get(finding, 1.0)) / diff
        fd = _Finding(finding, strength, contrast, uf, 0 if uf[15] < 0.5 else 1)

    prof = dev["profile"]
    rows, cols, spacing = _out_size(prof, size, max_size)
    cases = []
    for k in range(n_images):
        ri = _stream(seeds, 6, k)
        img = _image_params(ri, dev["view"])
        fov_h, fov_w = rows * spacing, cols * spacing
        # place the chest: apices top_margin below the top edge, costophrenic angles inside
        want = -fov_h / 2 + img["top_margin"]
        lowest = fov_h / 2 - 20 - 1.05 * an.H
        oy = min(want, lowest) if lowest > -fov_h / 2 else -fov_h / 2 + 10
        scale = min(1.0, _WORK_LONG / max(rows, cols))
        wh, ww = max(16, round(rows * scale)), max(16, round(cols * scale))
        fr = _Frame(wh, ww, fov_h, fov_w, img["angle"], img["ox"], oy + img["oy"] * 0.5)
        work, truth, masks = _render(an, fd, img, fr, ri)
        if debug is not None:
            debug.append({k: cv2.resize(v.astype(np.uint8), (cols, rows), interpolation=cv2.INTER_NEAREST) > 0
                          for k, v in masks.items()})
        pixels = _to_stored(work, rows, cols, spacing, dev, img, ri)
        if dev["photometric"] == "MONOCHROME1":
            mirrored = int(round(dev["lo"] + dev["hi"])) - pixels.astype(np.int32)
            pixels = mirrored.clip(0, (1 << dev["bits"]) - 1).astype(np.uint16)

        details = {"strength": round(strength, 4) if fd else 0.0,
                   "contrast": round(fd.contrast, 4) if fd else 0.0, "difficulty": diff}
        if "center_mm" in truth:
            cpx = fr.px([truth.pop("center_mm")])[0]
            truth["center_rc"] = (round(float(cpx[1]) * rows / wh, 1), round(float(cpx[0]) * cols / ww, 1))
        if "center_px_work" in truth:
            cx, cy = truth.pop("center_px_work")
            truth["center_rc"] = (round(cy * rows / wh, 1), round(cx * cols / ww, 1))
            truth["area_fraction"] = round(truth.pop("area_px_work") / float(wh * ww), 5)
        details.update(truth)

        series_number = 1 if (k == 0 or same_series) else k + 1
        instance = k + 1 if same_series else 1
        series_uid = _uid(token, "series", series_number)
        sop_uid = _uid(token, "image", k)
        when = (_dt.datetime.combine(study_date, study_time) + _dt.timedelta(minutes=2 + k * img["minutes"]))
        ds = _dataset(
            dev=dev, img=img, pixels=pixels, rows=rows, cols=cols, spacing=spacing, sex=sex, age=age,
            birth=birth, index=index, study_date=study_date, study_time=study_time, when=when,
            accession=accession, body_part=body_part, institution=institution, both_spacings=both_spacings,
            study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid, series_number=series_number,
            instance=instance, repeat=k > 0, token=token)
        relpath = f"study{index:04d}/series{series_number:02d}/img{k + 1:03d}.dcm"
        cases.append(PhantomCase(ds, "normal" if finding == "none" else "urgent", finding, study_uid, relpath,
                                 details))
    return cases


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


def _window_values(pixels: np.ndarray, dev: dict, img: dict) -> list[tuple[float, float, str]]:
    sub = pixels[:: max(1, pixels.shape[0] // 256), :: max(1, pixels.shape[1] // 256)].astype(np.float64)
    if dev["photometric"] == "MONOCHROME1":
        body = sub[sub < dev["lo"] + 0.9 * (dev["hi"] - dev["lo"])]
    else:
        body = sub[sub > dev["lo"] + 0.1 * (dev["hi"] - dev["lo"])]
    if body.size < 16:
        body = sub.ravel()
    p_lo, p_hi = np.percentile(body, [1.0, 99.5])
    slope, intercept = dev["rescale"] or (1.0, 0.0)
    lo_m, hi_m = p_lo * slope + intercept, p_hi * slope + intercept
    jc, jw = img["ww_jitter"]
    c = (lo_m + hi_m) / 2 * jc if abs(lo_m + hi_m) > 1 else (lo_m + hi_m) / 2
    w = max(2.0, (hi_m - lo_m) * jw * 1.05)
    out = [(c, w, "NORMAL")]
    if dev["voi"].startswith("multiwindow"):
        out.append((c + 0.1 * w, 0.7 * w, "HARDER"))
        out.append((c - 0.05 * w, 1.4 * w, "SOFTER"))
    return out


def _dataset(*, dev, img, pixels, rows, cols, spacing, sex, age, birth, index, study_date, study_time, when,
             accession, body_part, institution, both_spacings, study_uid, series_uid, sop_uid, series_number,
             instance, repeat, token) -> Dataset:
    prof: _Profile = dev["profile"]
    modality = dev["modality"]
    sop_class = DX_SOP_CLASS if modality == "DX" else CR_SOP_CLASS
    view = dev["view"]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.SeriesDate = when.strftime("%Y%m%d")
    ds.AcquisitionDate = when.strftime("%Y%m%d")
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = study_time.strftime("%H%M%S")
    ds.SeriesTime = when.strftime("%H%M%S")
    ds.AcquisitionTime = when.strftime("%H%M%S")
    ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = accession
    ds.Modality = modality
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = prof.manufacturer
    ds.InstitutionName = institution
    ds.ReferringPhysicianName = ""
    ds.StationName = f"{prof.manufacturer.split()[0].upper()[:8]}{index % 7 + 1:02d}"
    ds.StudyDescription = "XR CHEST 1 VIEW" if view == "PA" else "XR CHEST PORTABLE"
    ds.SeriesDescription = f"Thorax {view}" + (" repeat" if repeat else "")
    ds.ManufacturerModelName = prof.model
    ds.PatientName = f"PHANTOM^{index:04d}"
    ds.PatientID = f"PHANTOM-{index:04d}"
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    if body_part:
        ds.BodyPartExamined = "CHEST"
    ds.KVP = _ds(round(img["kvp"]))
    ds.DistanceSourceToDetector = "1800" if view == "PA" else "1000"
    ds.ExposureTime = str(int(5 + 20 * img["mas"]))
    ds.XRayTubeCurrent = str(int(200 + 100 * img["mas"]))
    ds.Exposure = str(int(round(img["mas"])))
    ds.ImagerPixelSpacing = [_ds(spacing), _ds(spacing)]
    if both_spacings:
        ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
    ds.DeviceSerialNumber = f"SN{int(token[:6], 16) % 99991:05d}"
    ds.SoftwareVersions = prof.software
    ds.ViewPosition = view
    if modality == "DX":
        ds.DetectorType = "SCINTILLATOR"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = accession[-6:]
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance
    ds.PatientOrientation = ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = dev["photometric"]
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = dev["bits"]
    ds.HighBit = dev["bits"] - 1
    ds.PixelRepresentation = 0
    if modality == "DX":
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1 if dev["photometric"] == "MONOCHROME2" else 1
    voi = dev["voi"]
    if "window" in voi:
        wins = _window_values(pixels, dev, img)
        if len(wins) == 1:
            ds.WindowCenter = _ds(round(wins[0][0], 1))
            ds.WindowWidth = _ds(round(wins[0][1], 1))
        else:
            ds.WindowCenter = [_ds(round(c, 1)) for c, _w, _e in wins]
            ds.WindowWidth = [_ds(round(w, 1)) for _c, w, _e in wins]
            ds.WindowCenterWidthExplanation = [e for _c, _w, e in wins]
    if dev["rescale"] is not None:
        ds.RescaleIntercept = _ds(dev["rescale"][1])
        ds.RescaleSlope = _ds(dev["rescale"][0])
        ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    if modality == "DX":
        ds.BurnedInAnnotation = "NO"
        ds.PresentationLUTShape = "IDENTITY" if dev["photometric"] == "MONOCHROME2" else "INVERSE"
    if dev["compress"]:
        ds.compress(RLELossless, pixels, encoding_plugin=_rle_plugin(), generate_instance_uid=False)
    else:
        ds.PixelData = pixels.astype("<u2", copy=False).tobytes()
        ds["PixelData"].VR = "OW"
    return ds


def _rle_plugin() -> str:
    """pydicom's RLE encoder; the pylibjpeg-rle plugin (same bytes, ~10x faster) when present."""
    from pydicom.pixels.encoders import RLELosslessEncoder

    return "pylibjpeg" if "pylibjpeg" in RLELosslessEncoder.available_plugins else "pydicom"


# ------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------
def make_case(rng: np.random.Generator, *, index: int, finding: str | None = None,
              size: int | tuple[int, int] | None = None, compress: bool | None = None,
              max_size: int | None = None, difficulty: float | None = None) -> PhantomCase:
    """One synthetic chest radiograph as a complete DICOM dataset (a single-image study).

    ``finding``: None draws it (half normal, a quarter each finding), or "none", "mass",
    "pneumothorax". ``size``: output (rows, columns) or a square side; default: the drawn
    detector's size. ``compress``: RLE Lossless or not; default drawn (~25 % RLE).
    ``max_size`` caps the larger dimension (after ``size``), as in :func:`generate`.
    ``difficulty``: see :data:`DIFFICULTY`.

    The anatomy, header and noise draws do not depend on ``finding``, so the same generator
    state with ``finding="mass"`` and ``finding="none"`` gives the same patient, with and
    without the mass.
    """
    plan = {"finding": finding, "compress": compress}
    return _make_study(rng, index=index, n_images=1, plan=plan, size=size, max_size=max_size,
                       difficulty=difficulty)[0]


def _stratified(rng: np.random.Generator, n: int, values, weights) -> list:
    w = np.asarray(weights, dtype=float)
    w = w / w.sum() * n
    counts = np.floor(w).astype(int)
    rest = n - counts.sum()
    order = np.argsort(-(w - counts), kind="stable")
    counts[order[:rest]] += 1
    out = [v for v, c in zip(values, counts) for _ in range(c)]
    perm = rng.permutation(len(out))
    return [out[i] for i in perm]


def _study_sizes(rng: np.random.Generator, n: int) -> list[int]:
    sizes = []
    left = n
    while left > 0:
        k = 2 if (left >= 2 and rng.random() < 0.18) else 1
        sizes.append(k)
        left -= k
    if n >= 3 and 2 not in sizes:  # every set of three or more images holds a two-image study
        sizes = [2] + sizes[2:]
    return sizes


def generate(out_dir, n: int, seed: int, *, max_size: int | None = None,
             progress: Callable[[int], None] | None = None, difficulty: float | None = None) -> list[dict]:
    """Write ``n`` phantom images under ``out_dir`` and ``labels.csv`` at its root.

    Images are grouped into studies (most of one image, some of two: the first image and a
    repeat of the same patient, same finding). The finding kind, modality, photometric
    interpretation, bits stored, compression, VOI/rescale style and view are stratified over
    studies, so every set of a dozen or more studies contains the whole mix; every set of three
    or more images holds a two-image study. ``max_size`` caps the larger image dimension (the
    pixel spacing grows accordingly). ``progress(1)`` is called after each file is written (an
    increment, like a progress bar's ``advance``). Returns the rows of ``labels.csv`` as dicts (``bits_stored``,
    ``rows`` and ``columns`` as int). The same ``(n, seed, max_size, difficulty)`` writes
    byte-identical files.

    ``out_dir`` must be empty or absent: a stale file would make ``labels.csv`` incomplete.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise UsageError(f"phantom: the number of images must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"phantom: the seed must be a non-negative integer, got {seed!r}")
    if max_size is not None and (not isinstance(max_size, (int, np.integer)) or max_size < 64):
        raise UsageError(f"phantom: max_size must be an integer >= 64, got {max_size!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"phantom: {out} exists and is not an empty folder; "
                         "give a new or empty folder, so that labels.csv lists every file in it")
    out.mkdir(parents=True, exist_ok=True)

    master = np.random.default_rng([int(seed), 0x9E3779B9])
    sizes = _study_sizes(master, int(n))
    plans = [dict() for _ in sizes]
    for key, (values, weights) in _STRATA.items():
        for p, v in zip(plans, _stratified(master, len(sizes), values, weights)):
            p[key] = v

    rows_out: list[dict] = []
    for i, (k, plan) in enumerate(zip(sizes, plans)):
        rng = np.random.default_rng([int(seed), i + 1])
        for case in _make_study(rng, index=i + 1, n_images=k, plan=plan, max_size=max_size,
                                difficulty=difficulty):
            buf = io.BytesIO()
            pydicom.dcmwrite(buf, case.dataset, enforce_file_format=True)
            atomic_write(out / case.relpath, buf.getvalue())
            ds = case.dataset
            rows_out.append({
                "path": case.relpath, "study_uid": case.study_uid, "series_uid": str(ds.SeriesInstanceUID),
                "sop_instance_uid": str(ds.SOPInstanceUID), "label": case.label, "finding": case.finding,
                "modality": str(ds.Modality), "photometric": str(ds.PhotometricInterpretation),
                "bits_stored": int(ds.BitsStored), "rows": int(ds.Rows), "columns": int(ds.Columns),
                "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
            })
            if progress is not None:
                progress(1)
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(LABELS_COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows_out)
    atomic_write(out / "labels.csv", text.getvalue())
    return rows_out
