"""One INT8 artifact serves TensorRT's form on ONNX Runtime and OpenVINO: same priorities, close scores."""
import pytest

from edgeinfer.backends import RunnerOptions, resolve
from edgeinfer.bundle import load_bundle
from edgeinfer.intake import discover
from edgeinfer.triage import TriageEngine

pytest.importorskip("openvino")
#: stated tolerance on |score(ORT) - score(OpenVINO)| for the same INT8 graph
TOLERANCE = 0.02


def _worklist(bundle, backend, files):
    res = resolve(bundle, "int8", RunnerOptions(threads=1), backend=backend)
    with res.create() as runner:
        return TriageEngine(bundle, runner).run(files), res.artifact


def test_int8_artifact_agrees_across_backends(phantom_dir):
    bundle = load_bundle(None)
    files = discover([phantom_dir])
    ort, a1 = _worklist(bundle, "onnxruntime", files)
    ov, a2 = _worklist(bundle, "openvino", files)
    assert a1.sha256 == a2.sha256 and a1.precision == "int8"  # the very same file
    assert ov.run["backend"] == "openvino" and ov.run["precision"] == "int8"
    p_ort = {s["study_uid"]: (s["priority"], s["score"]) for s in ort.studies}
    p_ov = {s["study_uid"]: (s["priority"], s["score"]) for s in ov.studies}
    assert p_ort.keys() == p_ov.keys() and len(p_ort) >= 10
    assert {k: v[0] for k, v in p_ort.items()} == {k: v[0] for k, v in p_ov.items()}
    diffs = [abs(p_ort[k][1] - p_ov[k][1]) for k in p_ort]
    assert max(diffs) <= TOLERANCE, f"max |ORT - OpenVINO| = {max(diffs):.4f}"
