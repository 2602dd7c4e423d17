"""Mixed-precision fallback: when the INT8 graph fails the gate, keep the guilty layers in FP32.

The search (:func:`quantize_with_fallback`):

1. quantize everything (the TensorRT form, see :mod:`edgeinfer_calibration.quantize`) and score it
   against FP32 on a check set with the runtime's scoring code; if the gate passes, done;
2. rank the quantized nodes by *sensitivity*: quantize one node at a time (everything else
   FP32) and measure the damage it does alone against FP32 (priority disagreements, then
   mean |probability - FP32|); the most damaging ranks first. (The converse, quantizing all
   but one node, ranked badly on the phantom CNN: errors are not additive, and with ten
   other layers quantized no single exclusion stands out. Quantizing only the first conv,
   i.e. the 8-bit input image, cost 0.07 in score there, yet excluding it alone helped least.)
3. keep nodes in FP32 in that order, re-quantizing and re-checking after each, until the
   gate passes or ``max_kept`` is reached.

Activation ranges are calibrated once and cached (ORT's JSON range cache in a private temp
folder), so every later quantization only rewrites the graph. The result keeps precision
"int8" (it is still a Q/DQ INT8 graph, in the form TensorRT takes) and lists the nodes
kept in FP32 in ``produced_by.kept_fp32``.

Cost: one quantization plus one pass over the check set per quantized node, then one per
kept node. That is seconds for the phantom CNN; for a graph with hundreds of convolutions
pass ``candidates`` (e.g. the first and last layers) to bound it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgeinfer.bundle import Bundle
from edgeinfer.gate import GateConfig, evaluate_gate

from . import CalibrationError
from .dataset import CalibrationSet, Stages, stage
from .quantize import (Int8Config, Int8Result, ort_session, preprocess_for_quantization, quantizable_nodes,
                       quantize_int8, run_model)
from .validate import compare_outcomes, outcomes_from_probs

log = logging.getLogger("edgeinfer.calibration")


@dataclass
class CheckSet:
    """Preprocessed images grouped into studies, for scoring candidate graphs against FP32."""

    tensors: np.ndarray
    study_uids: list[str]
    labels: Mapping[str, bool] | None = None
    description: str = "calibration images"

    @classmethod
    def from_calibration_set(cls, cs: CalibrationSet, labels: Mapping[str, bool] | None = None,
                             description: str = "calibration images") -> "CheckSet":
        return cls(cs.tensors, cs.study_uids, labels, description)

    def __post_init__(self) -> None:
        if len(self.tensors) != len(self.study_uids) or not len(self.tensors):
            raise CalibrationError("a check set needs one study uid per image, and at least one image")


@dataclass
class Trial:
    kept_fp32: list[str]
    metrics: dict
    passed: bool
    reasons: list[str]
    mean_abs_prob_diff: float
    max_abs_prob_diff: float
    path: Path

    def summary(self) -> dict:
        return {"kept_fp32": list(self.kept_fp32), "passed": self.passed, "reasons": self.reasons,
                "agreement": self.metrics.get("agreement"), "max_abs_score_diff": self.metrics.get("max_abs_score_diff"),
                "mean_abs_prob_diff": self.mean_abs_prob_diff}


@dataclass
class MixedResult:
    int8: Int8Result
    passed: bool
    kept_fp32: list[str]
    first: Trial                      # everything quantized
    final: Trial
    ranking: list[dict] = field(default_factory=list)   # node sensitivity, best first
    steps: list[dict] = field(default_factory=list)
    check: str = ""

    def report(self) -> dict:
        return {"check_data": self.check, "n_studies": self.final.metrics.get("n_studies"),
                "full_int8": self.first.summary(), "final": self.final.summary(), "passed": self.passed,
                "kept_fp32": list(self.kept_fp32), "ranking": self.ranking[:20], "steps": self.steps}


class _Search:
    def __init__(self, model: Path, workdir: Path, reader, check: CheckSet, bundle: Bundle, config: Int8Config,
                 gate: GateConfig, ref_probs: np.ndarray, samples: int | None):
        self.model, self.workdir, self.reader, self.check = model, workdir, reader, check
        self.bundle, self.config, self.gate, self.samples = bundle, config, gate, samples
        self.ranges = workdir / "ranges.json"
        self.ref_probs = ref_probs
        op = float(bundle.manifest["triage"]["operating_point"])
        self.kw = {"labels": check.labels, "operating_point": op}
        self.ref = outcomes_from_probs(ref_probs, check.study_uids, bundle)
        self.ref_metrics = compare_outcomes(self.ref, self.ref, **self.kw)
        self.n = 0
        self.results: dict[Path, Int8Result] = {}

    def trial(self, kept: Sequence[str]) -> Trial:
        self.n += 1
        path = self.workdir / f"trial-{self.n:03d}.onnx"
        cfg = dataclasses.replace(self.config, keep_fp32_nodes=tuple(kept))
        reader = None if self.ranges.is_file() else self.reader
        res = quantize_int8(self.model, path, reader, cfg, samples=self.samples, ranges_cache=self.ranges,
                            already_preprocessed=True)
        self.results[path] = res
        probs = run_model(ort_session(path), self.check.tensors)
        got = outcomes_from_probs(probs, self.check.study_uids, self.bundle)
        metrics = compare_outcomes(self.ref, got, **self.kw)
        verdict = evaluate_gate(self.ref_metrics, metrics, self.gate)
        diff = np.abs(np.nan_to_num(probs, nan=10.0) - self.ref_probs)
        return Trial(list(kept), metrics, verdict.passed, list(verdict.reasons), float(diff.mean()),
                     float(diff.max()), path)


def quantize_with_fallback(fp32_model: str | os.PathLike, dst: str | os.PathLike, reader, check: CheckSet,
                           bundle: Bundle, *, config: Int8Config | None = None, gate: GateConfig | None = None,
                           max_kept: int | None = None, candidates: Sequence[str] | None = None,
                           samples: int | None = None, stages: Stages | None = None) -> MixedResult:
    """INT8 Q/DQ graph of ``fp32_model`` at ``dst`` that passes ``gate`` on ``check``, keeping nodes in FP32 if needed.

    Returns a result with ``passed=False`` (and the last graph tried, the one with the most
    nodes kept in FP32, written to ``dst``) when keeping ``max_kept`` nodes in FP32 is not
    enough; the caller decides what to do.
    """
    cfg = config or Int8Config()
    gate = gate or GateConfig()
    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix="edgeinfer-mixed-") as tmp:
        work = Path(tmp)
        model = work / "preprocessed.onnx"
        if cfg.preprocess:
            pre, note = preprocess_for_quantization(fp32_model, model)
        else:
            shutil.copyfile(fp32_model, model)
            pre, note = False, "not pre-processed (Int8Config.preprocess=False)"
        ref_probs = run_model(ort_session(fp32_model), check.tensors)
        search = _Search(model, work, reader, check, bundle, cfg, gate, ref_probs, samples)
        base = list(cfg.keep_fp32_nodes)
        n_images = len(getattr(reader, "tensors", ())) or 1
        with stage(stages, f"INT8 calibration ({cfg.method.value}, {n_images} images)", n_images) as advance:
            if hasattr(reader, "progress"):
                reader.progress = advance
            first = search.trial(base)
            if hasattr(reader, "progress"):
                reader.progress = None
        ranking: list[dict] = []
        steps: list[dict] = []
        final = first
        if not first.passed:
            quantizable = [n for n, _ in quantizable_nodes(model, cfg.op_types) if n not in base]
            op_of = dict(quantizable_nodes(model, cfg.op_types))
            pool = [n for n in quantizable if candidates is None or n in set(candidates)]
            limit = len(quantizable) - 1 if max_kept is None else min(int(max_kept), len(quantizable) - 1)
            log.info("INT8 fails the gate (%s); ranking %d nodes by sensitivity", "; ".join(first.reasons), len(pool))
            solo: dict[str, Trial] = {}
            with stage(stages, f"ranking {len(pool)} layers", len(pool)) as advance:
                for node in pool:   # this node quantized, everything else FP32: its own damage
                    solo[node] = search.trial(base + [n for n in quantizable if n != node])
                    solo[node].path.unlink(missing_ok=True)   # one graph per node can be big
                    if advance:
                        advance(1)
            order = sorted(pool, key=lambda n: (-solo[n].metrics["disagreements"], -solo[n].mean_abs_prob_diff, n))
            ranking = [{"node": n, "op_type": op_of.get(n), "disagreements_alone": solo[n].metrics["disagreements"],
                        "mean_abs_prob_diff_alone": solo[n].mean_abs_prob_diff,
                        "max_abs_prob_diff_alone": solo[n].max_abs_prob_diff} for n in order]
            kept = list(base)
            for node in order[:max(0, limit)]:
                kept.append(node)
                t = search.trial(kept)
                steps.append(t.summary())
                if final is not first:
                    final.path.unlink(missing_ok=True)
                final = t
                if t.passed:
                    break
        res = search.results[final.path]
        shutil.copyfile(final.path, dst)
    res = dataclasses.replace(res, path=dst, preprocessed=pre, preprocess_note=note,
                              kept_fp32=list(final.kept_fp32), max_abs_diff=final.max_abs_prob_diff)
    return MixedResult(res, final.passed, list(final.kept_fp32), first, final, ranking, steps, check.description)


__all__ = ["CheckSet", "Trial", "MixedResult", "quantize_with_fallback"]
