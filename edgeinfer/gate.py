"""The accuracy gate: may a precision other than FP32 be used for triage?

Pure and light (standard library only): the runtime calls :func:`check_usable` before it
runs a precision, and ``edgeinfer validate`` calls :func:`evaluate_gate` to decide what
goes into the manifest. FP32 is the reference and passes by definition; every other
precision is refused unless it was validated against FP32 on the same studies and passed,
or the user forces it (and the worklist then says it was forced).

Metrics (what ``edgeinfer validate`` measures, per precision, against FP32 on the same
studies) are plain mappings with these keys; absent or ``None`` means "not measured":

``agreement``
    fraction of studies whose priority equals FP32's (INDETERMINATE included);
``auc``, ``sensitivity``, ``specificity``
    against reference labels, at the bundle's ``triage.operating_point`` (only with labels);
``max_abs_score_diff``
    largest |study score - FP32 study score|;
``n_studies``
    how many studies were compared.

Where validation records live in the manifest
---------------------------------------------
* an artifact's own record: ``artifacts[i]["validation"]`` (FP16, INT8 graphs...);
* a runtime precision that has no artifact of its own (OpenVINO running the FP32 graph in
  BF16 on an AMX CPU, say): ``validation["runtime_precisions"]["openvino:bf16"]``, keyed by
  :func:`runtime_precision_key`, holding the same metrics plus ``artifact`` and
  ``artifact_sha256`` of the graph it ran. :func:`check_runtime_precision` reads it.

Each record holds at least ``passed`` (bool), ``reasons`` (list of str) and
``artifact_sha256`` (the exact file that was validated: a record for another file counts
as no record).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from .errors import PrecisionNotValidated
from .precision import REFERENCE

#: the precision every other one is compared with
REFERENCE_PRECISION = REFERENCE


@dataclass(frozen=True)
class GateConfig:
    """Thresholds a precision must meet against FP32 on the same studies.

    The defaults are the project's gate: agreement >= 99.5 %, AUC drop <= 0.005 and a
    sensitivity drop at the operating point <= 0.005 (half a percentage point).
    """

    min_agreement: float = 0.995
    max_auc_drop: float = 0.005
    max_sensitivity_drop: float = 0.005
    #: optional extra bound on the largest |score - FP32 score|; None = not checked
    max_abs_score_diff: float | None = None
    #: refuse a validation made without reference labels (AUC and sensitivity unchecked)
    require_labels: bool = False
    #: refuse a validation on fewer studies than this
    min_studies: int = 1
    #: heatmaps (a bundle whose graph outputs a class-activation map): the mean Pearson r of this
    #: precision's maps with FP32's on the same images, and the drop of the pointing game (share of
    #: flagged urgent images whose map peaks on the finding, with the labels' finding boxes) in points
    min_heatmap_r: float = 0.9
    max_pointing_drop: float = 0.02
    #: segmentation (a bundle whose task is segmentation): the mean Dice of this precision's masks with FP32's
    #: over the studies where either found something, and every study's volume within max(2 %, 0.1 mL) of
    #: FP32's (the share of studies within it must reach ``min_agreement``)
    min_dice_vs_fp32: float = 0.98
    max_volume_rel_diff: float = 0.02
    max_volume_abs_diff_ml: float = 0.1

    def __post_init__(self) -> None:
        for name in ("min_agreement", "max_auc_drop", "max_sensitivity_drop", "min_heatmap_r", "max_pointing_drop",
                     "min_dice_vs_fp32", "max_volume_rel_diff", "max_volume_abs_diff_ml"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"GateConfig.{name} must be a finite number, got {v!r}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"GateConfig.min_agreement must be in [0, 1], got {self.min_agreement}")
        if min(self.max_auc_drop, self.max_sensitivity_drop, self.max_pointing_drop, self.max_volume_rel_diff,
               self.max_volume_abs_diff_ml) < 0:
            raise ValueError("GateConfig drops must be >= 0")
        if not -1.0 <= self.min_heatmap_r <= 1.0:
            raise ValueError(f"GateConfig.min_heatmap_r must be in [-1, 1], got {self.min_heatmap_r}")
        if self.max_abs_score_diff is not None and not (self.max_abs_score_diff >= 0):
            raise ValueError(f"GateConfig.max_abs_score_diff must be >= 0 or None, got {self.max_abs_score_diff}")
        if int(self.min_studies) < 1:
            raise ValueError("GateConfig.min_studies must be >= 1")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GateConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    #: why it failed (empty when it passed)
    reasons: tuple[str, ...] = ()
    #: which criteria were evaluated (e.g. "agreement", "auc_drop")
    checked: tuple[str, ...] = ()
    #: criteria that could not be evaluated, or caveats that do not fail the gate
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"passed": self.passed, "reasons": list(self.reasons), "checked": list(self.checked),
                "notes": list(self.notes)}


def _num(m: Mapping[str, Any], key: str) -> float | None:
    v = m.get(key)
    if v is None or isinstance(v, bool):
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def evaluate_gate(fp32_metrics: Mapping[str, Any], metrics: Mapping[str, Any],
                  config: GateConfig | None = None) -> GateResult:
    """Does ``metrics`` (one precision) meet ``config`` relative to ``fp32_metrics``?

    Pure: numbers in, verdict out. A criterion whose inputs are missing is not checked
    (and says so in ``notes``) unless ``config.require_labels`` makes labels mandatory.
    A missing agreement always fails: it is the one figure that needs no labels.
    """
    cfg = config or GateConfig()
    reasons: list[str] = []
    checked: list[str] = []
    notes: list[str] = []

    n = metrics.get("n_studies")
    if n is not None:
        checked.append("n_studies")
        if int(n) < cfg.min_studies:
            reasons.append(f"only {int(n)} studies were compared; the gate needs at least {cfg.min_studies}")
        elif int(n) > 0 and 1.0 / int(n) > (1.0 - cfg.min_agreement) and cfg.min_agreement < 1.0:
            notes.append(f"{int(n)} studies cannot resolve an agreement of {cfg.min_agreement:.1%} "
                         f"(one disagreement is {1.0 / int(n):.1%}); validate on more studies for a finer gate")

    agreement = _num(metrics, "agreement")
    checked.append("agreement")
    if agreement is None:
        reasons.append("agreement with FP32 was not measured")
    elif agreement < cfg.min_agreement:
        reasons.append(f"agreement with FP32 priorities is {agreement:.2%}, below the required {cfg.min_agreement:.2%}")

    for key, limit, what in (("auc", cfg.max_auc_drop, "AUC"),
                             ("sensitivity", cfg.max_sensitivity_drop, "sensitivity at the operating point")):
        ref, got = _num(fp32_metrics, key), _num(metrics, key)
        if ref is None:
            msg = f"{what} not checked: no reference labels (pass --labels)"
            if cfg.require_labels:
                reasons.append(msg.replace("not checked", "required but not measured"))
            else:
                notes.append(msg)
            continue
        checked.append(f"{key}_drop")
        if got is None:
            reasons.append(f"{what} was measured for FP32 ({ref:.4f}) but not for this precision")
            continue
        drop = ref - got
        if drop > limit + 1e-12:
            reasons.append(f"{what} dropped by {drop:.4f} ({ref:.4f} -> {got:.4f}); at most {limit:g} is allowed")

    _heatmap_criteria(fp32_metrics, metrics, cfg, reasons, checked, notes)
    _segmentation_criteria(metrics, cfg, reasons, checked)

    if cfg.max_abs_score_diff is not None:
        checked.append("max_abs_score_diff")
        diff = _num(metrics, "max_abs_score_diff")
        if diff is None:
            reasons.append("max |score - FP32 score| was not measured")
        elif diff > cfg.max_abs_score_diff:
            reasons.append(f"max |score - FP32 score| is {diff:.4g}, above the allowed {cfg.max_abs_score_diff:g}")

    return GateResult(passed=not reasons, reasons=tuple(reasons), checked=tuple(checked), notes=tuple(notes))


def _heatmap_criteria(fp32_metrics, metrics, cfg: GateConfig, reasons: list, checked: list, notes: list) -> None:
    """A graph that keeps the scores but moves the evidence fails: ``heatmap_agreement`` (``r_mean``) and
    ``pointing_game`` (``score``) against FP32's, when the bundle has heatmaps (absent: not checked)."""
    agreement, pointing, ref = (metrics.get("heatmap_agreement"), metrics.get("pointing_game"),
                                fp32_metrics.get("pointing_game"))
    if agreement is None and pointing is None:
        return
    r = _num(agreement or {}, "r_mean")
    checked.append("heatmap_r")
    if r is None:
        reasons.append("the heatmaps could not be compared with FP32's (no image has a heatmap in both)")
    elif r < cfg.min_heatmap_r:
        reasons.append(f"the heatmaps agree with FP32's at mean r {r:.3f}, below the required {cfg.min_heatmap_r:g}: "
                       "the scores may hold but the evidence moved")
    got, want = _num(pointing or {}, "score"), _num(ref or {}, "score")
    if want is None:
        notes.append("pointing game not checked: no finding locations (labels with finding_box)")
        return
    checked.append("pointing_drop")
    if got is None:
        reasons.append(f"the pointing game was measured for FP32 ({want:.3f}) but not for this precision")
    elif want - got > cfg.max_pointing_drop + 1e-12:
        reasons.append(f"the pointing game dropped by {100 * (want - got):.1f} points ({want:.3f} -> {got:.3f}); "
                       f"at most {100 * cfg.max_pointing_drop:g} are allowed")


def _segmentation_criteria(metrics, cfg: GateConfig, reasons: list, checked: list) -> None:
    """A segmentation precision must draw FP32's masks and measure FP32's volumes: ``segmentation`` (from
    ``validate``) holds the mean Dice with FP32 and the share of studies whose volume is within tolerance
    (absent: not a segmentation bundle, not checked)."""
    seg = metrics.get("segmentation")
    if seg is None:
        return
    checked += ["dice_vs_fp32", "volume_vs_fp32"]
    d = _num(seg, "mean_dice_vs_fp32")
    if d is not None and d < cfg.min_dice_vs_fp32:
        reasons.append(f"its masks overlap FP32's with mean Dice {d:.4f}, below the required {cfg.min_dice_vs_fp32:g}")
    share = _num(seg, "volume_within_tolerance")
    if share is None:
        reasons.append("the volumes could not be compared with FP32's")
    elif share < cfg.min_agreement:
        worst = seg.get("worst_volume_diff") or {}
        reasons.append(f"{share:.1%} of studies measure a volume within max({cfg.max_volume_rel_diff:.0%}, "
                       f"{cfg.max_volume_abs_diff_ml:g} mL) of FP32's, below {cfg.min_agreement:.1%} (worst: "
                       f"{worst.get('ml', '?')} mL against FP32's {worst.get('fp32_ml', '?')} mL)")


# --- the runtime side ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Usability:
    """Verdict of :func:`check_usable`: usable, or forced (with the reason it would be refused)."""

    usable: bool
    forced: bool = False
    message: str = ""
    validation: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)


_VALIDATE = ("run `edgeinfer validate BUNDLE --data DIR --labels FILE` on studies from this site (it compares "
             "every precision with FP32 and records the verdict in the bundle)")
_RECALIBRATE = ("run FP32 instead (--precision fp32), or re-calibrate (`edgeinfer calibrate BUNDLE --data DIR "
                "--check-data HELD_OUT --labels FILE` keeps the layers that break INT8 in FP32; or try --method "
                "percentile) and validate again")
_FORCE = "or pass --force to use it anyway (the worklist records that it was forced)"


def _verdict(what: str, record: Mapping[str, Any] | None, sha256: str | None, force: bool) -> Usability:
    fix = _VALIDATE
    if not record:
        problem = "it has never been validated against FP32"
    elif sha256 and record.get("artifact_sha256") and record["artifact_sha256"] != sha256:
        problem = (f"its validation record is for another file "
                   f"(sha256 {str(record['artifact_sha256'])[:12]}…, the artifact is {sha256[:12]}…)")
    elif record.get("passed") is True:
        return Usability(True, message=f"{what} passed the accuracy gate", validation=record)
    elif record.get("passed") is False:
        why = "; ".join(record.get("reasons") or []) or "no reason recorded"
        problem = f"it failed the accuracy gate against FP32 ({why})"
        fix = _RECALIBRATE
    else:
        problem = "its validation record is incomplete (no pass/fail verdict)"
    if force:
        return Usability(False, forced=True, message=f"FORCED: {what}: {problem}; used anyway because --force was given",
                         validation=record or None)
    raise PrecisionNotValidated(f"refusing to run {what}: {problem}. To fix: {fix}; {_FORCE}.")


def check_usable(artifact_record: Mapping[str, Any], force: bool = False) -> Usability:
    """May the runtime run this artifact? FP32 always; others only validated and passed.

    Raises :class:`~edgeinfer.errors.PrecisionNotValidated` (saying why and how to fix)
    unless ``force``; with ``force`` returns a ``forced`` verdict whose message the caller
    must log and record.
    """
    precision = artifact_record.get("precision")
    ident = artifact_record.get("id", "?")
    if precision == REFERENCE_PRECISION:
        return Usability(True, message="fp32 is the reference precision", validation=artifact_record.get("validation"))
    what = f"artifact {ident!r} ({precision}, {artifact_record.get('format', '?')})"
    return _verdict(what, artifact_record.get("validation"), artifact_record.get("sha256"), force)


def runtime_precision_key(backend: str, precision: str) -> str:
    """``("openvino", "bf16")`` -> ``"openvino:bf16"``: the key in ``validation.runtime_precisions``."""
    return f"{backend.lower()}:{precision.lower()}"


def check_runtime_precision(manifest: Mapping[str, Any], backend: str, precision: str,
                            artifact_record: Mapping[str, Any], force: bool = False) -> Usability:
    """Like :func:`check_usable` for a precision a backend applies at run time (no artifact).

    ``artifact_record`` is the graph the backend runs (usually FP32); the validation record
    must name that very file. Running a graph at its own precision needs no record.
    """
    if precision.lower() == str(artifact_record.get("precision", "")).lower():
        return check_usable(artifact_record, force)
    key = runtime_precision_key(backend, precision)
    validation = (manifest.get("validation") or {}) if isinstance(manifest, Mapping) else {}
    record = (validation.get("runtime_precisions") or {}).get(key)
    what = f"runtime precision {key} (on artifact {artifact_record.get('id', '?')!r})"
    return _verdict(what, record, artifact_record.get("sha256"), force)


__all__ = ["GateConfig", "GateResult", "evaluate_gate", "Usability", "check_usable", "check_runtime_precision",
           "runtime_precision_key", "REFERENCE_PRECISION"]
