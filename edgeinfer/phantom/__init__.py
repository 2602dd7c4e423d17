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

Layout
------
:mod:`.geometry` (patient frame, drawing helpers), :mod:`.anatomy` (the patient model and
the soft-tissue layers), :mod:`.skeleton` (bones), :mod:`.vessels` (lung markings),
:mod:`.findings` (mass and pneumothorax), :mod:`.detector` (acquisition, processing, noise,
stored values), :mod:`.render` (one image: the layers in order), :mod:`.dicom` (datasets,
UIDs, headers, encodings) and :mod:`.generator` (study planning, strata, :func:`make_case`,
:func:`generate`, ``labels.csv``); :mod:`.ct_head` makes head CT series with intracranial bleeds, their
masks and volumes (``edgeinfer phantom --kind ct-head``). :data:`DIFFICULTY` and :data:`FINDING_CONTRAST` are
defined here and read from this package at call time, so setting
``edgeinfer.phantom.DIFFICULTY`` takes effect.
"""
from __future__ import annotations

# re-exports; DX_SOP_CLASS, CR_SOP_CLASS and the private _make_study are used by the tests
from .dicom import CR_SOP_CLASS, DX_SOP_CLASS  # noqa: F401
from .findings import FINDINGS
from .generator import LABELS_COLUMNS, PhantomCase, _make_study, generate, make_case  # noqa: F401

__all__ = ["FINDINGS", "DIFFICULTY", "FINDING_CONTRAST", "PhantomCase", "make_case", "generate", "LABELS_COLUMNS"]

#: Global difficulty knob. Finding contrast is divided by it: 1.0 is the calibrated default,
#: 2.0 halves every finding's contrast (harder), 0.5 doubles it (easier). ``make_case`` and
#: ``generate`` take ``difficulty=`` to override it per call; the value in effect at call time
#: is used (the generator reads it from this package).
DIFFICULTY = 0.5

#: Per-kind contrast multipliers, to tune one finding without the other (in short training
#: runs a small CNN learns pneumothoraces much sooner than masses). Applied with DIFFICULTY:
#: contrast = strength * FINDING_CONTRAST[kind] / difficulty.
FINDING_CONTRAST = {"pneumothorax": 1.0, "mass": 1.0}
