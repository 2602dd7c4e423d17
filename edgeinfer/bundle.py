"""The model bundle: a directory with ``manifest.json`` and the artifacts it lists.

Loading reads the manifest strictly (size- and depth-capped, no NaN/Infinity), checks it
against its JSON schema, then every artifact's size and sha256, and refuses a bundle with a
changed, missing or unknown file. With a trust folder (``trust=`` or ``EDGEINFER_TRUST``) it
then requires a trusted Ed25519 signature over the bundle digest (see :mod:`edgeinfer.signing`).
Nothing in a bundle is handed to a backend before those checks have passed. Signing
(:func:`sign_bundle`) runs the same integrity check first.
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

from ._io import atomic_write, non_finite_at, read_json
from .errors import ArtifactNotFound, IntegrityError, JsonFileError, ManifestError
from .signing import (SIGNATURES, load_private_key, resolve_trust, unverified_status, verify_bundle_signature,
                      write_signature)

MANIFEST = "manifest.json"
#: a manifest is tens of kB; anything past this is not one edgeinfer wrote
MAX_MANIFEST_BYTES = 1 << 20
#: domain prefix of :func:`bundle_digest`, so the digest of a bundle is never the hash of anything else
DIGEST_PREFIX = b"edgeinfer-bundle-digest-v1\n"
#: what export writes; every version in SCHEMA_VERSIONS loads (v2 = v1 + the segmentation block)
SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (1, 2)
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
    bad = non_finite_at(manifest)
    if bad is not None:
        raise ManifestError(f"{where}: the number at /{bad} is NaN or infinite; every number in a manifest must "
                            "be finite. Fix the value that produced it and write the manifest again.")
    version = manifest.get("schema_version")
    if isinstance(version, bool) or version not in SCHEMA_VERSIONS:
        raise ManifestError(
            f"{where}: schema_version {version!r} is not supported by this edgeinfer "
            f"(it reads versions {', '.join(map(str, SCHEMA_VERSIONS))}). Re-export the bundle or upgrade edgeinfer."
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
    prios = m["triage"]["priorities"]
    mins = [p["min_score"] for p in prios]
    if mins != sorted(mins, reverse=True):
        problems.append(f"triage priorities must be ordered highest first; min_scores are {mins}")
    else:
        for hi, lo in zip(prios, prios[1:]):
            if hi["min_score"] == lo["min_score"]:
                problems.append(f"triage priorities {hi['name']} and {lo['name']} both have min_score "
                                f"{lo['min_score']:g}, so {lo['name']} could never be reached; min_scores must "
                                "strictly decrease")
    if mins and mins[-1] != 0:
        problems.append(f"the last triage priority ({prios[-1]['name']}) has min_score {mins[-1]:g}; it must be 0 "
                        "so that every score gets a priority")
    names = [p["name"] for p in m["triage"]["priorities"]]
    if len(set(names)) != len(names) or "INDETERMINATE" in names:
        problems.append("triage priority names must be unique and must not be INDETERMINATE (reserved)")
    ids = [a["id"] for a in m["artifacts"]]
    if len(set(ids)) != len(ids):
        problems.append(f"artifact ids are not unique: {ids}")
    files = [a["file"] for a in m["artifacts"]]
    if len(set(files)) != len(files) or MANIFEST in files or SIGNATURES in files:
        problems.append(f"artifact files must be unique and not {MANIFEST} or {SIGNATURES}: {files}")
    for a in m["artifacts"]:
        src = a.get("source_artifact")
        if src is not None and src not in ids:
            problems.append(f"artifact {a['id']!r} names source_artifact {src!r}, which is not in the bundle")
    seg = m.get("segmentation")
    if seg is not None:
        names = {p["name"] for p in prios}
        for rule in seg.get("volume_policy", {}).get("rules", []):
            if rule.get("label", "*") not in ("*", *labels):
                problems.append(f"volume policy rule names label {rule['label']!r}, which is not one of {labels}")
            if rule["priority"] not in names:
                problems.append(f"volume policy priority {rule['priority']!r} is not a triage priority {sorted(names)}")
        shape = m["inputs"][0].get("shape", [])
        if len(shape) == 4 and all(isinstance(v, int) for v in shape[1:]):
            if shape[1] != len(seg["windows"]):
                problems.append(f"the model takes {shape[1]} channel(s) but segmentation.windows gives "
                                f"{len(seg['windows'])}")
            if list(shape[2:]) != list(seg["sliding_window"]["roi"]):
                problems.append(f"segmentation.sliding_window.roi {seg['sliding_window']['roi']} is not the model's "
                                f"input size {shape[2:]}")
    window = m["preprocessing"].get("window", {})
    if "fixed" in window.get("sources", []) and not {"center", "width"} <= window.keys():
        problems.append("preprocessing.window uses source 'fixed' but lacks center and width")
    if problems:
        raise ManifestError(f"{where} is inconsistent:\n" + "\n".join(f"  - {p}" for p in problems))


def canonical_json(obj: Any) -> bytes:
    """The one byte form of a JSON value that digests are taken over (sorted keys, no spaces, ASCII)."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False).encode("ascii")
    except ValueError as exc:
        raise ManifestError(f"manifest cannot be digested: {exc}; every number in a manifest must be finite") from None


def bundle_digest(manifest: dict) -> str:
    """sha256 hex identifying a bundle: its manifest (policy, thresholds, preprocessing) and
    every artifact's sha256, which loading checks against the files. ``signatures.json`` is not covered."""
    h = hashlib.sha256(DIGEST_PREFIX)
    h.update(canonical_json(manifest))
    h.update(b"\n")
    for a in sorted(manifest["artifacts"], key=lambda a: a["file"]):
        h.update(f"{a['file']} {a['sha256']}\n".encode("utf-8"))
    return h.hexdigest()


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
    #: signature status set by :func:`load_bundle`: ``verified``, ``key_id``, ``note`` (and ``key`` when verified)
    signature: dict = field(default_factory=lambda: unverified_status("not verified: signature not checked"))

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
            raise ArtifactNotFound(f"bundle {self.name} has no artifact with {asked}; it has: {have}.")
        if len(found) > 1 and id is None:
            # several of one precision (e.g. onnx and a TensorRT plan): prefer the portable onnx one
            onnx = [a for a in found if a.format == "onnx"]
            found = onnx or found
        return found[0]

    def verify(self) -> None:
        verify_files(self.path, self.manifest)

    @property
    def digest(self) -> str:
        """:func:`bundle_digest` of the manifest as it is now."""
        return bundle_digest(self.manifest)

    def summary(self) -> dict:
        m, sig = self.manifest, self.signature
        return {"name": m["name"], "version": m["version"], "task": m["task"], "path": str(self.path),
                "digest": self.digest,
                "signature": {"verified": bool(sig.get("verified")), "key_id": sig.get("key_id"),
                              "note": sig.get("note", "")},
                "preprocessing_impl": preprocessing_versions(m)}

    @property
    def preprocessing_note(self) -> str | None:
        """Why this bundle's accuracy record may not describe what this runtime computes, or None."""
        return preprocessing_note(self.manifest)


def _listed_files(manifest: dict) -> set[str]:
    return {a["file"] for a in manifest["artifacts"]} | {MANIFEST, SIGNATURES}


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
    sig = bundle_dir / SIGNATURES
    if sig.is_symlink() or (sig.exists() and not sig.is_file()):
        problems.append(f"{SIGNATURES}: is not a regular file; bundles must hold real files")
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


def load_bundle(path: str | os.PathLike | None = None, *, verify: bool = True,
                trust: str | os.PathLike | None | bool = None) -> Bundle:
    """Load and check a bundle directory (or the embedded default when ``path`` is None; an embedded bundle by
    its name, e.g. ``phantom-ct-head``, when no such folder exists).

    ``trust``: folder of trusted ``*.pub`` keys; None uses ``$EDGEINFER_TRUST`` when set and
    non-empty; False checks no signature. With a trust folder, a bundle without a valid
    signature by a trusted key is refused (SignatureError) after its integrity check. The
    result is in ``bundle.signature``. ``verify=False`` skips both checks.
    """
    bundle_dir = Path(path) if path is not None else default_bundle_path()
    if path is not None and not bundle_dir.exists() and str(path) in embedded_bundles():
        bundle_dir = default_bundle_path().parent / str(path)    # an embedded bundle by its name
    if bundle_dir.is_file() and bundle_dir.name == MANIFEST:
        bundle_dir = bundle_dir.parent
    mpath = bundle_dir / MANIFEST
    if not bundle_dir.is_dir():
        raise ManifestError(f"bundle {bundle_dir}: no such directory. Pass the folder that holds {MANIFEST}.")
    if not mpath.is_file():
        raise ManifestError(f"bundle {bundle_dir}: no {MANIFEST} in it. Is this a bundle folder?")
    try:
        manifest = read_json(mpath, max_bytes=MAX_MANIFEST_BYTES, what="manifest")
    except JsonFileError as exc:
        raise ManifestError(f"{exc}. Restore the bundle from its source, or re-export it.") from exc
    validate_manifest(manifest, where=str(mpath))
    bundle = Bundle(bundle_dir.resolve(), manifest)
    if not verify:
        bundle.signature = unverified_status("not verified: bundle loaded without its integrity check")
        return bundle
    bundle.verify()
    bundle.signature = verify_bundle_signature(bundle.path, bundle.digest, resolve_trust(trust))
    return bundle


def embedded_bundles() -> list[str]:
    """The names of the bundles shipped inside the package (``edgeinfer/models``)."""
    root = default_bundle_path().parent
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []


def default_bundle_path() -> Path:
    return Path(str(resources.files("edgeinfer").joinpath("models", DEFAULT_BUNDLE_NAME)))


def sign_bundle(bundle_dir: str | os.PathLike, key_path: str | os.PathLike) -> dict:
    """Sign a bundle that passes its integrity check; write or update its ``signatures.json``.

    The key's earlier entry is replaced; other keys' entries are kept only if they signed the
    same digest (otherwise they are dropped and listed under ``dropped``). No trust folder is
    consulted (:func:`edgeinfer.signing.write_signature` writes the entry).
    """
    key = load_private_key(key_path)
    bundle = load_bundle(bundle_dir, verify=True, trust=False)
    return write_signature(bundle.path, bundle.digest, key)


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
    text = json.dumps(manifest, indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(bundle_dir / MANIFEST, text.encode("utf-8"))
    return bundle_dir / MANIFEST


def preprocessing_versions(manifest: dict) -> dict:
    """``{"runtime": "4", "validated_with": "1" | ... | "4" | None}``: the preprocessing implementation this
    runtime runs, and the one the bundle's validation ran with (validations before the field was
    recorded ran with implementation 1; None: never validated)."""
    from .preprocess import PREPROCESS_IMPL

    validation = manifest.get("validation") or None
    validated = None if not validation else str(validation.get("preprocessing_impl", "1"))
    return {"runtime": PREPROCESS_IMPL, "validated_with": validated}


def preprocessing_note(manifest: dict) -> str | None:
    """A flag when the bundle was validated with another preprocessing implementation than this runtime's."""
    v = preprocessing_versions(manifest)
    if v["validated_with"] in (None, v["runtime"]):
        return None
    return (f"validated with preprocessing implementation {v['validated_with']}; this runtime preprocesses with "
            f"implementation {v['runtime']}, so the accuracy record describes slightly different tensors: "
            "run edgeinfer validate again to record the verdicts for this runtime")


def describe(bundle: Bundle) -> Iterable[tuple[str, str]]:
    """(key, value) rows for ``edgeinfer inspect``; shared by the text and rich renderers."""
    m = bundle.manifest
    yield "name", f"{m['name']} {m['version']} ({m['task']})"
    if m.get("intended_use"):
        yield "intended use", m["intended_use"]
    yield "labels", ", ".join(m["labels"]) + f"  (urgent: {', '.join(bundle.urgent_labels)})"
    pr = m["triage"]["priorities"]
    yield "priorities", ", ".join(f"{p['name']} >= {p['min_score']:g}" for p in pr) + \
        f"; operating point {m['triage']['operating_point']:g}; failures -> INDETERMINATE" + \
        ("; a study's priority comes from the volume policy below" if m.get("segmentation") else "")
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
    seg = m.get("segmentation")
    if seg:
        sw, post = seg["sliding_window"], seg.get("postprocessing", {})
        yield "segmentation", (
            "windows " + ", ".join(f"{w.get('name', '')} {w['center']:g}/{w['width']:g}".strip() for w in seg["windows"])
            + f"; {seg['pixel_mm']:g} mm pixels, slices "
            + (f"{seg['slice_mm']:g} mm" if seg.get("slice_mm") else "as acquired")
            + f"; tiles {sw['roi']} overlap {sw.get('overlap', 0.25):g} batch {sw.get('batch', 8)}"
            + f"; threshold {post.get('threshold', 0.5):g}, components under {post.get('min_component_ml', 0):g} mL removed")
        pol = seg.get("volume_policy")
        if pol:
            yield "volume policy", ", ".join(f"{r['priority']} if {r.get('label', '*')} >= {r['min_ml']:g} mL"
                                             for r in pol["rules"]) + f", else {pol.get('otherwise', 'ROUTINE')}"
    v, flag = preprocessing_versions(m), preprocessing_note(m)
    yield "preprocessing impl", (f"runtime {v['runtime']}, validated with {v['validated_with'] or '(never validated)'}"
                                 + (f"  FLAG: {flag}" if flag else ""))
    for a in m["artifacts"]:
        val = a.get("validation", {}) or {}
        gate = {True: "passed gate", False: "FAILED gate"}.get(val.get("passed"), "not validated")
        yield f"artifact {a['id']}", f"{a['precision']} {a['format']} {a['file']} {a['bytes']:,} B sha256 {a['sha256'][:12]}… ({gate})"
    if m.get("training"):
        t = m["training"]
        yield "training", ", ".join(f"{k}={v}" for k, v in t.items() if not isinstance(v, (dict, list)))
    if m.get("calibration"):
        yield "calibration", json.dumps(m["calibration"])[:200]
    yield "digest", bundle.digest
    sig = bundle.signature
    if sig.get("verified"):
        yield "signature", f"verified by key {sig.get('key', '?')} ({sig['key_id']})" + (
            f" from trust folder {sig['trust']}" if sig.get("trust") else "")
    else:
        yield "signature", sig.get("note") or "not verified"
