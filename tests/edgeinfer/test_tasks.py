"""Model tasks: classification's output check and image results, and a new task added by registering it only."""
from __future__ import annotations

import numpy as np
import pytest

from edgeinfer import tasks
from edgeinfer.bundle import load_bundle
from edgeinfer.errors import InferenceError, UsageError
from helpers import artifact_record, tiny_manifest, tiny_onnx, write_manifest


def test_classification_checks_the_output_and_scores_the_urgent_labels():
    bundle = load_bundle(None)
    task = tasks.task_for(bundle)
    n = len(bundle.labels)
    with pytest.raises(InferenceError, match=rf"model output has shape \(2, {n + 1}\), expected \(2, {n}\)"):
        task.check_output(np.zeros((2, n + 1)), 2)
    row = np.linspace(0.1, 0.9, n)
    res = task.image_result(row)
    urgent = [row[bundle.labels.index(lab)] for lab in bundle.urgent_labels]
    assert res["score"] == pytest.approx(max(urgent)) and list(res["label_scores"]) == list(bundle.labels)
    bad = task.image_result(np.full(n, np.nan))
    assert bad["score"] is None and bad["reason"] == "model output is not a finite probability"


class _MeanIntensity:
    """A trivial task: one output value per image, already a score."""

    name = "mean-intensity"

    def __init__(self, bundle):
        pass

    def check_output(self, out, n):
        return np.asarray(out, dtype=np.float64).reshape(n, -1)

    def image_result(self, row):
        return {"score": float(np.clip(row.mean(), 0, 1)), "mean_output": float(row.mean())}


def test_a_new_task_is_one_class_and_a_registry_entry(tmp_path, monkeypatch, phantom_dir):
    """Triage runs a bundle of a task it did not know once the task is registered: nothing in triage, the
    node's worker or its outbox changes. A bundle of a task nobody registered is refused, saying which run."""
    from edgeinfer import autoselect
    from edgeinfer.triage import TriageEngine

    d = tmp_path / "bundle"
    d.mkdir()
    tiny_onnx(d / "model.onnx", size=32)
    m = tiny_manifest(32)
    m["task"] = "mean-intensity"
    m["artifacts"] = [artifact_record(d, "model.onnx", id="fp32", precision="fp32", format="onnx",
                                      produced_by={"tool": "tests"})]
    write_manifest(d, m)
    bundle = load_bundle(str(d))
    runner = autoselect.choose(bundle, backend="onnxruntime", precision="fp32").create_runner().activate()
    with pytest.raises(UsageError, match=r"task 'mean-intensity' is not one this edgeinfer runs \(classification, segmentation\)"):
        TriageEngine(bundle, runner)
    monkeypatch.setitem(tasks.TASKS, "mean-intensity", _MeanIntensity)
    wl = TriageEngine(bundle, runner).run(sorted(phantom_dir.rglob("*.dcm"))[:4])
    images = [i for s in wl.studies for i in s["images"]]
    assert images and all(i["status"] == "ok" and "mean_output" in i and 0 <= i["score"] <= 1 for i in images)
