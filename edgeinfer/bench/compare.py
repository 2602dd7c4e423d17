"""Comparisons across the rows of ``edgeinfer bench``: speed-up against ONNX Runtime fp32, and the
fast CPU path target (the best OpenVINO mode that passed the accuracy gate against ORT fp32)."""
from __future__ import annotations

from typing import Any

from .accuracy import gate_ok
from .plan import BASELINE
from .stats import no_difference

#: the best gated OpenVINO mode should be this many times faster (p50) than ORT fp32
OPENVINO_TARGET_SPEEDUP = 3.0
#: where :func:`openvino_speedup_target` goes in the report: ``report["targets"][OPENVINO_TARGET_KEY]``
OPENVINO_TARGET_KEY = "openvino_gated_3x_vs_ort_fp32"


def _compare(rows: list[dict]) -> None:
    """Add speed-up vs ORT fp32 (same batch) to every measured row, with the noise verdict."""
    base = {r["batch"]: r for r in rows if (r["backend"], r["precision"]) == BASELINE and r["status"] == "ok"}
    for r in rows:
        b = base.get(r["batch"])
        if r["status"] != "ok" or b is None:
            r["speedup_vs_ort_fp32"] = None
            continue
        r["speedup_vs_ort_fp32"] = b["p50_ms"] / r["p50_ms"] if r["p50_ms"] else None
        r["speedup_within_noise"] = r is b or no_difference(b["spread"], r["spread"])


def openvino_speedup_target(rows: list[dict]) -> dict:
    """The best OpenVINO mode that passed the gate, against ORT fp32, at the smallest batch measured."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return {"evaluated": False, "why": "no row was measured"}
    batch = min(r["batch"] for r in ok)
    base = next((r for r in ok if (r["backend"], r["precision"]) == BASELINE and r["batch"] == batch), None)
    ov = [r for r in ok if r["backend"] == "openvino" and r["batch"] == batch]
    out: dict[str, Any] = {"rule": f"best OpenVINO mode that passed the accuracy gate has p50 >= "
                                   f"{OPENVINO_TARGET_SPEEDUP:g}x lower than ONNX Runtime fp32", "batch": batch,
                           "target": OPENVINO_TARGET_SPEEDUP}
    if base is None or not ov:
        out.update(evaluated=False, why="needs both the onnxruntime fp32 row and an OpenVINO row")
        return out
    fastest = min(ov, key=lambda r: r["p50_ms"])
    out["fastest_openvino"] = {"precision": fastest["precision"], "gate": fastest["accuracy"]["gate"],
                               "speedup": base["p50_ms"] / fastest["p50_ms"]}
    gated = [r for r in ov if gate_ok(r)]
    if not gated:
        out.update(evaluated=True, met=False, why="no OpenVINO mode has passed the accuracy gate (run edgeinfer validate)")
        return out
    best = min(gated, key=lambda r: r["p50_ms"])
    speedup = base["p50_ms"] / best["p50_ms"]
    out.update(evaluated=True, best={"precision": best["precision"], "precision_executed": best.get("precision_executed"),
                                     "p50_ms": best["p50_ms"], "gate": best["accuracy"]["gate"]},
               ort_fp32_p50_ms=base["p50_ms"], speedup=speedup,
               within_noise=no_difference(base["spread"], best["spread"]),
               met=bool(speedup >= OPENVINO_TARGET_SPEEDUP and not no_difference(base["spread"], best["spread"])))
    return out
