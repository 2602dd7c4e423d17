"""The model bundle: a directory with ``manifest.json`` and the artifacts it lists.

Loading checks the manifest against its JSON schema, then every artifact's size and
sha256, and refuses a bundle with a changed, missing or unknown file. Nothing in a
bundle is handed to a backend before that check has passed.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from ._io import atomic_write
from .errors import IntegrityError, ManifestError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
#: the phantom model shipped inside the package: ``edgeinfer triage DIR`` uses it without --bundle
DEFAULT_BUNDLE_NAME = "phantom-cxr"


@lru_cache(maxsize=None)
def _schema(version: int) -> dict:
    text = resources.files("edgeinfer").joinpath(f"schema/manifest-v{version}.schema.json").read_text()
    return json.loads(text)


def validate_manifest(manifest: Any, *, where: str = "manifest") -> None:
    """Raise ManifestError listing every schema violation (not just the first)."""
    import jsonschema  # light; imported here to keep `import edgeinfer` fast

    if not isinstance(manifest, dict):
        raise ManifestError(f"{where}: expected a JSON object, found {type(manifest).__name__}.")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"{where}: schema_version {version!r} is not supported by this edgeinfer "
            f"(it reads version {SCHEMA_VERSION}). Re-export the bundle or upgrade edgeinfer."
        )
    validator = jsonschema.Draft202012Validator(_schema(version))
    problems = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if problems:
        lines = [f"  - at /{'/'.join(map(str, p.absolute_path))}: {p.message}" for p in problems[:20]]
        raise ManifestError(f"{where} does not match the v{version} schema:\n" + "\n".join(lines))
    _check_semantics(manifest, where)


def _check_semantics(m: dict, where: str) -> None:
    """Rules JSON schema cannot express."""
    problems = []
    labels = m["labels"]
    for label in m.get("urgent_labels", []):
        if label not in labels:
            problems.append(f"urgent label {label!r} is not one of labels {labels}")
    mins = [p["min_score"] for p in m["triage"]["priorities"]]
    if mins != sorted(mins, reverse=True):
        problems.append(f"triage priorities must be ordered highest first; min_scores are {mins}")
    names = [p["name"] for p in m["triage"]["priorities"]]
    if len(set(names)) != len(names) or "INDETERMINATE" in names:
        problems.append("triage priority names must be unique and must not be INDETERMINATE (reserved)")
    ids = [a["id"] for a in m["artifacts"]]
    if len(set(ids)) != len(ids):
        problems.append(f"artifact ids are not unique: {ids}")
    files = [a["file"] for a in m["artifacts"]]
    if len(set(files)) != len(files) or MANIFEST in files:
        problems.append(f"artifact files must be unique and not {MANIFEST}: {files}")
    for a in m["artifacts"]:
        src = a.get("source_artifact")
        if src is not None and src not in ids:
            problems.append(f"artifact {a['id']!r} names source_artifact {src!r}, which is not in the bundle")
    window = m["preprocessing"].get("window", {})
    if "fixed" in window.get("sources", []) and not {"center", "width"} <= window.keys():
        problems.append("preprocessing.window uses source 'fixed' but lacks center and width")
    if problems:
        raise ManifestError(f"{where} is inconsistent:\n" + "\n".join(f"  - {p}" for p in problems))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    id: str
    precision: str
    format: str
    path: Path
    sha256: str
    record: dict = field(repr=False, compare=False)

    @property
    def validation(self) -> dict | None:
        return self.record.get("validation")


@dataclass
class Bundle:
    path: Path
    manifest: dict

    # -- identity ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def urgent_labels(self) -> list[str]:
        return list(self.manifest.get("urgent_labels", self.manifest["labels"]))

    @property
    def artifacts(self) -> list[Artifact]:
        return [
            Artifact(a["id"], a["precision"], a["format"], self.path / a["file"], a["sha256"], a)
            for a in self.manifest["artifacts"]
        ]

    def artifact(self, *, id: str | None = None, precision: str | None = None,
                 format: str | None = None) -> Artifact:
        """The one artifact matching every given criterion; a clear error otherwise."""
        found = [a for a in self.artifacts
                 if (id is None or a.id == id) and (precision is None or a.precision == precision)
                 and (format is None or a.format == format)]
        if not found:
            have = ", ".join(f"{a.id} ({a.precision}, {a.format})" for a in self.artifacts)
            asked = ", ".join(f"{k}={v}" for k, v in (("id", id), ("precision", precision), ("format", format)) if v)
            raise IntegrityError(f"bundle {self.name} has no artifact with {asked}; it has: {have}.")
        if len(found) > 1 and id is None:
            # several of one precision (e.g. onnx and a TensorRT plan): prefer the portable onnx one
            onnx = [a for a in found if a.format == "onnx"]
            found = onnx or found
        return found[0]

    def verify(self) -> None:
        verify_files(self.path, self.manifest)

    def summary(self) -> dict:
        m = self.manifest
        return {"name": m["name"], "version": m["version"], "task": m["task"], "path": str(self.path)}


def _listed_files(manifest: dict) -> set[str]:
    return {a["file"] for a in manifest["artifacts"]} | {MANIFEST}


def verify_files(bundle_dir: Path, manifest: dict) -> None:
    """Refuse a missing, changed or unknown file, naming every difference found."""
    problems = []
    for a in manifest["artifacts"]:
        p = bundle_dir / a["file"]
        if p.is_symlink():
            problems.append(f"{a['file']}: is a symbolic link; bundles must hold real files")
            continue
        if not p.is_file():
            problems.append(f"{a['file']} (artifact {a['id']}): missing")
            continue
        size = p.stat().st_size
        if size != a["bytes"]:
            problems.append(f"{a['file']}: size is {size} bytes, manifest says {a['bytes']}")
            continue
        digest = sha256_file(p)
        if digest != a["sha256"]:
            problems.append(f"{a['file']}: sha256 is {digest[:16]}…, manifest says {a['sha256'][:16]}…")
    listed = _listed_files(manifest)
    for p in sorted(bundle_dir.iterdir()):
        if p.name not in listed:
            problems.append(f"{p.name}: unknown file, not listed in {MANIFEST}")
    if problems:
        raise IntegrityError(
            f"bundle {bundle_dir} failed its integrity check, so nothing in it will be loaded:\n"
            + "\n".join(f"  - {x}" for x in problems)
            + "\nRestore the bundle from its source, or re-export it."
        )


def load_bundle(path: str | os.PathLike | None = None, *, verify: bool = True) -> Bundle:
    """Load and check a bundle directory (or the embedded default when ``path`` is None)."""
    bundle_dir = Path(path) if path is not None else default_bundle_path()
    if bundle_dir.is_file() and bundle_dir.name == MANIFEST:
        bundle_dir = bundle_dir.parent
    mpath = bundle_dir / MANIFEST
    if not bundle_dir.is_dir():
        raise ManifestError(f"bundle {bundle_dir}: no such directory. Pass the folder that holds {MANIFEST}.")
    if not mpath.is_file():
        raise ManifestError(f"bundle {bundle_dir}: no {MANIFEST} in it. Is this a bundle folder?")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{mpath}: not valid JSON ({exc}).") from exc
    validate_manifest(manifest, where=str(mpath))
    bundle = Bundle(bundle_dir.resolve(), manifest)
    if verify:
        bundle.verify()
    return bundle


def default_bundle_path() -> Path:
    return Path(str(resources.files("edgeinfer").joinpath("models", DEFAULT_BUNDLE_NAME)))


# --- writing (workstation side: export, calibrate, build) ----------------------------------
def artifact_record(bundle_dir: Path, file: str, *, id: str, precision: str, format: str,
                    produced_by: dict, **extra: Any) -> dict:
    p = Path(bundle_dir) / file
    rec = {"id": id, "precision": precision, "format": format, "file": file,
           "sha256": sha256_file(p), "bytes": p.stat().st_size, "produced_by": produced_by}
    rec.update({k: v for k, v in extra.items() if v is not None})
    return rec


def upsert_artifact(manifest: dict, record: dict) -> dict:
    """Return a copy of ``manifest`` with ``record`` added or replacing the artifact of the same id."""
    m = copy.deepcopy(manifest)
    m["artifacts"] = [a for a in m["artifacts"] if a["id"] != record["id"]] + [record]
    return m


def write_manifest(bundle_dir: Path, manifest: dict) -> Path:
    """Validate, then write ``manifest.json`` atomically (fsync + rename)."""
    bundle_dir = Path(bundle_dir)
    validate_manifest(manifest, where=f"new manifest for {bundle_dir}")
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    atomic_write(bundle_dir / MANIFEST, text.encode("utf-8"))
    return bundle_dir / MANIFEST


def describe(bundle: Bundle) -> Iterable[tuple[str, str]]:
    """(key, value) rows for ``edgeinfer inspect``; shared by the text and rich renderers."""
    m = bundle.manifest
    yield "name", f"{m['name']} {m['version']} ({m['task']})"
    if m.get("intended_use"):
        yield "intended use", m["intended_use"]
    yield "labels", ", ".join(m["labels"]) + f"  (urgent: {', '.join(bundle.urgent_labels)})"
    pr = m["triage"]["priorities"]
    yield "priorities", ", ".join(f"{p['name']} >= {p['min_score']:g}" for p in pr) + \
        f"; operating point {m['triage']['operating_point']:g}; failures -> INDETERMINATE"
    at = m["applies_to"]
    yield "applies to", f"modalities {', '.join(at['modalities'])}" + (
        f"; body parts {', '.join(at['body_parts'])}" if at.get("body_parts") else "")
    for t in m["inputs"]:
        yield f"input {t['name']}", f"{t['dtype']} {t['shape']} {t.get('layout', '')}".rstrip()
    for t in m["outputs"]:
        lab = f" labels {t['labels']}" if t.get("labels") else ""
        yield f"output {t['name']}", f"{t['dtype']} {t['shape']}{lab}"
    pp = m["preprocessing"]
    yield "preprocessing", ", ".join(f"{k}={v}" for k, v in pp.items())
    for a in m["artifacts"]:
        val = a.get("validation", {}) or {}
        gate = {True: "passed gate", False: "FAILED gate"}.get(val.get("passed"), "not validated")
        yield f"artifact {a['id']}", f"{a['precision']} {a['format']} {a['file']} {a['bytes']:,} B sha256 {a['sha256'][:12]}… ({gate})"
    if m.get("training"):
        t = m["training"]
        yield "training", ", ".join(f"{k}={v}" for k, v in t.items() if not isinstance(v, (dict, list)))
    if m.get("calibration"):
        yield "calibration", json.dumps(m["calibration"])[:200]
