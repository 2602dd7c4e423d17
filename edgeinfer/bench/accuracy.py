"""Accuracy columns for ``edgeinfer bench``: the bundle's validation records that apply to a row."""
from __future__ import annotations

from typing import Any

ACCURACY_KEYS = ("auc", "sensitivity", "specificity", "agreement", "max_abs_score_diff", "passed")


def accuracy_for(bundle, backend: str, precision: str, artifact) -> dict:
    """The validation figures that apply to this row, and the gate's verdict in one word.

    A runtime precision (``openvino:bf16``) is looked up in the manifest's
    ``validation.runtime_precisions``; an artifact's precision in that list first (a record
    made on that backend), else in the artifact's own ``validation`` record. A record for
    another file (sha256) counts as none. FP32 is the reference.
    """
    out: dict[str, Any] = {k: None for k in ACCURACY_KEYS}
    key = f"{backend}:{precision}"
    validation = bundle.manifest.get("validation") or {}
    runtime = (validation.get("runtime_precisions") or {}) if isinstance(validation, dict) else {}
    record, source = None, None
    if isinstance(runtime.get(key), dict):
        record, source = runtime[key], f"manifest validation.runtime_precisions[{key!r}]"
    elif artifact is not None and artifact.precision == precision and isinstance(artifact.validation, dict):
        record, source = artifact.validation, f"artifact {artifact.id!r} validation"
    sha = getattr(artifact, "sha256", None)
    if record and record.get("artifact_sha256") and sha and record["artifact_sha256"] != sha:
        out.update(gate="not validated", source=source,
                   note="the validation record is for another file (sha256 differs)")
        return out
    if record:
        out.update({k: record.get(k) for k in ACCURACY_KEYS})
        out["source"] = source
        ran_on = (record.get("ran_on") or {}).get("backend") if isinstance(record.get("ran_on"), dict) else None
        if ran_on:
            out["validated_on"] = ran_on
        if record.get("reasons"):
            out["reasons"] = list(record["reasons"])
    if precision == "fp32" and artifact is not None and artifact.precision == "fp32":
        out["gate"] = "reference"
    elif record is None:
        out["gate"] = "not validated"
    else:
        out["gate"] = {True: "passed", False: "failed"}.get(record.get("passed"), "not validated")
    return out


def gate_ok(row: dict) -> bool:
    return (row.get("accuracy") or {}).get("gate") in ("reference", "passed")
