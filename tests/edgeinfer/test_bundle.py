import json
import shutil

import pytest

from edgeinfer.bundle import (MANIFEST, artifact_record, bundle_digest, default_bundle_path, describe, load_bundle,
                              upsert_artifact, validate_manifest, write_manifest)
from edgeinfer.errors import IntegrityError, ManifestError
from helpers import tiny_onnx


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


def test_loads_and_describes(tiny_bundle):
    b = load_bundle(tiny_bundle)
    assert b.name == "tiny-test"
    assert b.artifact(precision="fp32").path.name == "model.onnx"
    assert b.urgent_labels == ["pneumothorax", "mass"]


def test_changed_artifact_is_refused_with_what_differs(bundle_copy):
    p = bundle_copy / "model.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size
    p.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model.onnx: sha256 is .* manifest says"):
        load_bundle(bundle_copy)


def test_truncated_artifact_is_refused(bundle_copy):
    p = bundle_copy / "model.onnx"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(IntegrityError, match="size is 100 bytes"):
        load_bundle(bundle_copy)


def test_missing_and_unknown_files_are_both_named(bundle_copy):
    (bundle_copy / "model.onnx").rename(bundle_copy / "other.onnx")
    with pytest.raises(IntegrityError) as err:
        load_bundle(bundle_copy)
    assert "model.onnx (artifact fp32): missing" in str(err.value)
    assert "other.onnx: unknown file" in str(err.value)


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.update(schema_version=3), "schema_version 3 is not supported"),
    (lambda m: m["artifacts"][0].update(file="../escape.onnx"), "does not match"),
    (lambda m: m["artifacts"][0].update(sha256="xyz"), "does not match"),
    (lambda m: m.update(urgent_labels=["fracture"]), "urgent label 'fracture'"),
    (lambda m: m["triage"]["priorities"].reverse(), "highest first"),
    (lambda m: m.pop("preprocessing"), "'preprocessing' is a required property"),
])
def test_bad_manifests_are_refused_with_reasons(bundle_copy, mutate, message):
    m = json.loads((bundle_copy / MANIFEST).read_text())
    mutate(m)
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ManifestError, match=message):
        load_bundle(bundle_copy)


def test_not_json_and_not_a_bundle(tmp_path):
    with pytest.raises(ManifestError, match="no such directory"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_bundle(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_bundle(tmp_path)


def test_validate_lists_every_problem():
    with pytest.raises(ManifestError) as err:
        validate_manifest({"schema_version": 1, "name": "x"})
    assert str(err.value).count("is a required property") >= 5


def test_embedded_default_bundle_is_intact_and_labelled_as_phantom():
    b = load_bundle(None)
    assert b.path == default_bundle_path().resolve()
    assert "NOT FOR CLINICAL USE" in b.manifest["intended_use"]
    assert b.artifact(precision="fp32").format == "onnx"


# --- strict manifest reading -------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _no_trust_from_env(monkeypatch):
    monkeypatch.delenv("EDGEINFER_TRUST", raising=False)


def _manifest(bundle_dir):
    return json.loads((bundle_dir / MANIFEST).read_text())


def _set_threshold_text(bundle_dir, token):
    """Write the manifest with URGENT's min_score replaced by a raw JSON token."""
    m = _manifest(bundle_dir)
    m["triage"]["priorities"][1]["min_score"] = 0.123456
    text = json.dumps(m, indent=2)
    assert text.count("0.123456") == 1
    (bundle_dir / MANIFEST).write_text(text.replace("0.123456", token))


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_thresholds_are_refused(bundle_copy, token):
    _set_threshold_text(bundle_copy, token)
    with pytest.raises(ManifestError) as err:
        load_bundle(bundle_copy)
    msg = str(err.value)
    assert str(bundle_copy / MANIFEST) in msg
    assert "NaN or Infinity" in msg or "finite" in msg
    assert "Restore the bundle" in msg


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_min_score_outside_0_1_is_refused(bundle_copy, value):
    m = _manifest(bundle_copy)
    m["triage"]["priorities"][0]["min_score"] = value
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ManifestError, match=r"/triage/priorities/0/min_score"):
        load_bundle(bundle_copy)


def test_equal_thresholds_are_refused_as_unreachable(bundle_copy):
    m = _manifest(bundle_copy)
    m["triage"]["priorities"][1]["min_score"] = m["triage"]["priorities"][0]["min_score"]
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ManifestError, match=r"STAT and URGENT both have min_score 0.9, so URGENT could never"):
        load_bundle(bundle_copy)


def test_last_priority_must_start_at_zero(bundle_copy):
    m = _manifest(bundle_copy)
    m["triage"]["priorities"][-1]["min_score"] = 0.1
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ManifestError, match=r"last triage priority \(ROUTINE\) has min_score 0.1; it must be 0"):
        load_bundle(bundle_copy)


def test_in_memory_nan_is_refused_and_the_old_manifest_kept(bundle_copy):
    before = (bundle_copy / MANIFEST).read_bytes()
    m = _manifest(bundle_copy)
    m["triage"]["operating_point"] = float("nan")  # NaN slips through 'minimum'/'maximum' in JSON schema
    with pytest.raises(ManifestError, match=r"/triage/operating_point is NaN or infinite"):
        write_manifest(bundle_copy, m)
    assert (bundle_copy / MANIFEST).read_bytes() == before
    assert "NaN" not in before.decode()


@pytest.mark.parametrize("open_, close_", [("[", "]"), ('{"a":', "}")])
def test_hugely_nested_manifest_is_a_clear_manifest_error(tmp_path, open_, close_):
    depth = 100_000
    (tmp_path / MANIFEST).write_text(open_ * depth + "1" + close_ * depth)
    with pytest.raises(ManifestError) as err:
        load_bundle(tmp_path)
    msg = str(err.value)
    assert "nested too deeply" in msg and str(tmp_path / MANIFEST) in msg
    assert "RecursionError" not in msg


def test_moderately_nested_manifest_is_refused_by_depth(bundle_copy):
    m = _manifest(bundle_copy)
    deep = 1
    for _ in range(40):
        deep = {"x": deep}
    m["training"] = deep
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ManifestError, match=r"nested 41 levels deep, more than the 32 allowed"):
        load_bundle(bundle_copy)


def test_oversized_manifest_is_refused_before_parsing(bundle_copy):
    m = _manifest(bundle_copy)
    m["description"] = "x" * (2 << 20)
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ManifestError, match=r"is 2,\d{3},\d{3} bytes, more than the 1,048,576 allowed"):
        load_bundle(bundle_copy)


def test_write_manifest_writes_strict_json(bundle_copy):
    m = _manifest(bundle_copy)
    write_manifest(bundle_copy, m)
    json.loads((bundle_copy / MANIFEST).read_text(), parse_constant=lambda t: pytest.fail(f"wrote {t}"))
    assert load_bundle(bundle_copy).manifest == m


# --- digest ------------------------------------------------------------------------------------
def test_digest_is_stable_and_ignores_key_order_and_whitespace(bundle_copy):
    d1 = load_bundle(bundle_copy).digest
    assert d1 == load_bundle(bundle_copy).digest == bundle_digest(_manifest(bundle_copy))
    assert len(d1) == 64 and int(d1, 16) >= 0
    m = _manifest(bundle_copy)
    reordered = dict(reversed(list(m.items())))
    (bundle_copy / MANIFEST).write_text(json.dumps(reordered, separators=(",", ":")))
    assert load_bundle(bundle_copy).digest == d1


def test_digest_changes_with_a_threshold_and_with_an_artifact(bundle_copy):
    d0 = load_bundle(bundle_copy).digest
    m = _manifest(bundle_copy)
    m["triage"]["priorities"][1]["min_score"] = 0.45
    write_manifest(bundle_copy, m)
    d1 = load_bundle(bundle_copy).digest  # still loads: the artifacts did not change
    assert d1 != d0

    tiny_onnx(bundle_copy / "model.onnx", weight=5.0)  # a different model, re-hashed into the manifest
    rec = artifact_record(bundle_copy, "model.onnx", id="fp32", precision="fp32", format="onnx",
                          produced_by={"tool": "tests"})
    write_manifest(bundle_copy, upsert_artifact(m, rec))
    d2 = load_bundle(bundle_copy).digest
    assert d2 not in (d0, d1)


def test_digest_covers_the_artifact_hashes_by_file_name(tiny_bundle):
    m = _manifest(tiny_bundle)
    other = json.loads(json.dumps(m))
    other["artifacts"][0]["sha256"] = "0" * 64
    assert bundle_digest(other) != bundle_digest(m)


def test_summary_and_describe_show_digest_and_signature(tiny_bundle):
    b = load_bundle(tiny_bundle)
    s = b.summary()
    assert s["digest"] == b.digest
    assert s["signature"] == {"verified": False, "key_id": None,
                              "note": "not verified: no trust folder configured (--trust DIR or EDGEINFER_TRUST)"}
    rows = dict(describe(b))
    assert rows["digest"] == b.digest
    assert rows["signature"].startswith("not verified: no trust folder configured")
    json.dumps(s, allow_nan=False)  # goes into every worklist JSON


def test_signature_file_is_a_known_file_but_other_files_are_not(bundle_copy):
    (bundle_copy / "signatures.json").write_text("{}")
    load_bundle(bundle_copy)  # not read without a trust folder, and not "unknown"
    (bundle_copy / "notes.txt").write_text("x")
    with pytest.raises(IntegrityError, match="notes.txt: unknown file"):
        load_bundle(bundle_copy)


def test_symlinked_signature_file_is_refused(bundle_copy, tmp_path):
    (tmp_path / "elsewhere.json").write_text("{}")
    (bundle_copy / "signatures.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(IntegrityError, match="signatures.json: is not a regular file"):
        load_bundle(bundle_copy)


def test_an_artifact_cannot_be_called_signatures_json(tiny_bundle):
    m = _manifest(tiny_bundle)
    m["artifacts"][0]["file"] = "signatures.json"
    with pytest.raises(ManifestError, match="not manifest.json or signatures.json"):
        validate_manifest(m)


def test_embedded_bundle_thresholds_satisfy_the_strict_rules():
    m = load_bundle(None).manifest
    mins = [p["min_score"] for p in m["triage"]["priorities"]]
    assert mins == [0.9, 0.5, 0.0]


def test_a_bundle_validated_with_another_preprocessing_implementation_is_flagged():
    from edgeinfer.bundle import preprocessing_note, preprocessing_versions
    from edgeinfer.preprocess import PREPROCESS_IMPL

    assert preprocessing_versions({}) == {"runtime": PREPROCESS_IMPL, "validated_with": None}
    assert preprocessing_note({}) is None  # never validated: the gate says so elsewhere
    older = {"validation": {"tool": "edgeinfer validate"}}  # before the field existed: implementation 1
    assert preprocessing_versions(older)["validated_with"] == "1"
    note = preprocessing_note(older)
    assert note.startswith(f"validated with preprocessing implementation 1; this runtime preprocesses with "
                           f"implementation {PREPROCESS_IMPL}") and "edgeinfer validate" in note
    assert preprocessing_note({"validation": {"preprocessing_impl": PREPROCESS_IMPL}}) is None


# --- schema version 2: the segmentation block ------------------------------------------------------
def test_both_schema_versions_load_and_the_ct_bundle_is_found_by_name():
    from edgeinfer.bundle import embedded_bundles

    cxr, ct = load_bundle(None), load_bundle("phantom-ct-head")
    assert cxr.manifest["schema_version"] == 1 and ct.manifest["schema_version"] == 2     # v1 still loads
    assert embedded_bundles() == ["phantom-ct-head", "phantom-cxr"]
    assert ct.manifest["task"] == "segmentation" and "NOT FOR CLINICAL USE" in ct.manifest["intended_use"]
    rows = dict(describe(ct))
    assert "1 mm pixels" in rows["segmentation"] and rows["volume policy"].startswith("STAT if * >= 0.5 mL")


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.pop("segmentation"), "'segmentation' is a required property"),
    (lambda m: m["segmentation"]["windows"].pop(), "the model takes 3 channel(s) but segmentation.windows gives 2"),
    (lambda m: m["segmentation"]["sliding_window"].update(roi=[128, 128]), "is not the model's input size [256, 256]"),
    (lambda m: m["segmentation"]["volume_policy"]["rules"][0].update(priority="CRITICAL"),
     "volume policy priority 'CRITICAL' is not a triage priority"),
    (lambda m: m["segmentation"]["volume_policy"]["rules"][0].update(label="tumour"),
     "volume policy rule names label 'tumour'"),
    (lambda m: m["segmentation"].update(pixel_mm=0), "/segmentation/pixel_mm"),
    (lambda m: m.update(schema_version=1), "'segmentation' was unexpected"),       # v1 has no such block
])
def test_a_segmentation_manifest_is_checked_with_reasons(mutate, message):
    m = json.loads((default_bundle_path().parent / "phantom-ct-head" / MANIFEST).read_text())
    mutate(m)
    with pytest.raises(ManifestError) as err:
        validate_manifest(m)
    assert message in str(err.value)
