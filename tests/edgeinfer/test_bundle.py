import json
import shutil

import pytest

from edgeinfer.bundle import MANIFEST, default_bundle_path, load_bundle, validate_manifest
from edgeinfer.errors import IntegrityError, ManifestError


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
    (lambda m: m.update(schema_version=2), "schema_version 2 is not supported"),
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
