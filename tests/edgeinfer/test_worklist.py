"""The worklist's one order, and the node's document built from result records."""
from __future__ import annotations

import pytest

from edgeinfer.bundle import load_bundle
from edgeinfer.worklist import INDETERMINATE, priority_order, sort_studies, worklist_document


def test_one_order_for_triage_and_the_node():
    bundle = load_bundle(None)
    order = priority_order(bundle)
    assert order[-2] == INDETERMINATE and order[-1] == bundle.manifest["triage"]["priorities"][-1]["name"]
    studies = [{"study_uid": "3", "priority": order[-1], "score": 0.1}, {"study_uid": "2", "priority": INDETERMINATE,
               "score": None}, {"study_uid": "1", "priority": order[0], "score": 0.7},
               {"study_uid": "0", "priority": order[0], "score": 0.9}]
    assert [s["study_uid"] for s in sort_studies(studies, bundle)] == ["0", "1", "2", "3"]


def test_the_document_lists_studies_not_applicable_and_errors_with_a_summary():
    bundle = load_bundle(None)
    top = priority_order(bundle)[0]
    results = [{"study": {"study_uid": "1", "priority": top, "score": 0.9, "images": [{}, {}]},
                "skipped": [], "errors": [{"path": "x", "code": "corrupt"}]},
               {"not_applicable": {"study_uid": "2", "modality": "CT"}, "skipped": [{"path": "y"}]}]
    doc = worklist_document(results, bundle=bundle, run={"backend": "b"}, window={"limit": 1})
    assert doc["window"] == {"limit": 1} and doc["run"] == {"backend": "b"}
    assert [s["study_uid"] for s in doc["studies"]] == ["1"] and doc["not_applicable"][0]["study_uid"] == "2"
    assert doc["summary"] == {"files": 4, "images_scored": 2, "studies": 1, "by_priority": doc["summary"]["by_priority"],
                              "not_applicable": 1, "skipped": 1, "errors": 1}
    assert doc["summary"]["by_priority"][top] == 1


def _schema() -> dict:
    import json

    from helpers import ROOT

    return json.loads((ROOT / "edgeinfer" / "schema" / "worklist-v1.schema.json").read_text())


def test_the_records_and_the_schema_name_the_same_fields():
    from typing import get_type_hints

    from edgeinfer.worklist import IMAGE_REQUIRED, STUDY_REQUIRED, ImageRecord, StudyRecord

    schema = _schema()["$defs"]
    for record, name, required in ((StudyRecord, "study", STUDY_REQUIRED), (ImageRecord, "image", IMAGE_REQUIRED)):
        assert set(get_type_hints(record)) == set(schema[name]["properties"]), name
        assert tuple(schema[name]["required"]) == required, name


def test_a_real_worklist_is_valid_against_the_schema(phantom_dir):
    import jsonschema

    from edgeinfer import autoselect
    from edgeinfer.triage import TriageEngine

    bundle = load_bundle(None)
    runner = autoselect.choose(bundle, backend="onnxruntime", precision="fp32").create_runner().activate()
    doc = TriageEngine(bundle, runner).run(sorted(phantom_dir.rglob("*"))).as_dict()
    jsonschema.validate(doc, _schema())
    broken = {**doc, "studies": [{**doc["studies"][0], "score": 1.5}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _schema())
