"""Detached Ed25519 signatures over a bundle's digest, and the trust folder that checks them.

A signed bundle holds ``signatures.json`` next to its manifest::

    {"format": "edgeinfer-bundle-signatures/1", "digest": "<bundle digest, hex>",
     "signatures": [{"key_id": "<16 hex>", "algorithm": "ed25519", "signature": "<base64>"}]}

The digest (:func:`edgeinfer.bundle.bundle_digest`) covers the manifest (thresholds, labels,
preprocessing) and every artifact's sha256, which loading checks against the files; the
signature file itself is not part of it. A trust folder holds ``*.pub`` files (PEM public
keys); when one is configured (``--trust DIR`` or ``EDGEINFER_TRUST``) a bundle loads only if a
key from it signed the bundle's current digest.

This module works on a bundle folder and a digest and never loads a bundle: signing one
(:func:`edgeinfer.bundle.sign_bundle`, which checks the bundle's integrity first and then calls
:func:`write_signature`) and checking one (:func:`edgeinfer.bundle.load_bundle`, which calls
:func:`verify_bundle_signature`) belong to :mod:`edgeinfer.bundle`; the ``sign`` and ``keygen``
commands are in :mod:`edgeinfer.cli`.

Crypto is the ``cryptography`` package's Ed25519, imported only when a key is used.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from pathlib import Path
from typing import Any

from ._io import atomic_write, read_json, write_json
from .errors import JsonFileError, SignatureError, UsageError

#: the detached signature file inside a bundle folder
SIGNATURES = "signatures.json"
FORMAT = "edgeinfer-bundle-signatures/1"
ALGORITHM = "ed25519"
#: environment variable naming the trust folder when no --trust is given
TRUST_ENV = "EDGEINFER_TRUST"
#: what is signed is this prefix + the digest hex, so a bundle signature is never valid for anything else
MESSAGE_PREFIX = b"edgeinfer-bundle-signature-v1\n"
#: a signature file with a few entries is well under 1 kB
MAX_SIGNATURES_BYTES = 256 << 10
#: PEM key files are a few hundred bytes
MAX_KEY_BYTES = 64 << 10

_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_MAKE_KEY = "make one with `edgeinfer keygen STEM` or `openssl genpkey -algorithm ed25519 -out STEM.key`"
NO_TRUST_NOTE = f"not verified: no trust folder configured (--trust DIR or {TRUST_ENV})"


# --- keys ------------------------------------------------------------------------------------
def _message(digest: str) -> bytes:
    return MESSAGE_PREFIX + digest.encode("ascii")


def key_id(public_key) -> str:
    """First 16 hex digits of sha256 over the raw 32-byte Ed25519 public key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _kind(key) -> str:
    """A readable name for a key type, for 'found' in error messages."""
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa, x25519, x448

    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return f"an RSA-{key.key_size} key"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return f"an EC key on curve {key.curve.name}"
    if isinstance(key, (ed448.Ed448PrivateKey, ed448.Ed448PublicKey)):
        return "an Ed448 key"
    if isinstance(key, (dsa.DSAPrivateKey, dsa.DSAPublicKey)):
        return "a DSA key"
    if isinstance(key, (x25519.X25519PrivateKey, x25519.X25519PublicKey, x448.X448PrivateKey,
                        x448.X448PublicKey)):
        return "a key-exchange (X25519/X448) key, which cannot sign"
    return f"a {type(key).__name__}"


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise SignatureError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_BYTES:
        raise SignatureError(f"{what} {path} is larger than {MAX_KEY_BYTES:,} bytes, so it is not a PEM key; "
                             f"{_MAKE_KEY}")
    return data


def load_private_key(path: str | os.PathLike):
    """An Ed25519 private key from a PEM (PKCS#8) file; a clear SignatureError for anything else."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    path = Path(path)
    data = _read_key_file(path, "private key")
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise SignatureError(f"{path} is a public key; signing needs the private key (STEM.key, not STEM.pub)")
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise SignatureError(f"private key {path} is protected by a passphrase; edgeinfer sign reads unencrypted "
                             "PEM keys: decrypt a copy (`openssl pkey -in KEY -out plain.key`) on the "
                             "signing machine") from None
    except Exception as exc:  # ValueError / UnsupportedAlgorithm: not a PEM private key we can parse
        raise SignatureError(f"{path} is not a PEM private key ({exc.__class__.__name__}); expected an "
                             f"Ed25519 key in PKCS#8 PEM form; {_MAKE_KEY}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"private key {path} is {_kind(key)}; bundle signatures use Ed25519 only; {_MAKE_KEY}")
    return key


def load_public_key(path: str | os.PathLike):
    """An Ed25519 public key from a PEM (SubjectPublicKeyInfo) file; a clear SignatureError otherwise."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    path = Path(path)
    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY-----" in data:
        raise SignatureError(f"{path} holds a PRIVATE key; a trust folder must hold public keys only. Remove it "
                             "from there (and keep it secret), and put the matching STEM.pub in its place")
    try:
        key = load_pem_public_key(data)
    except Exception as exc:
        raise SignatureError(f"{path} is not a PEM public key ({exc.__class__.__name__}); expected an Ed25519 "
                             "public key as written by `edgeinfer keygen` or `openssl pkey -pubout`") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"public key {path} is {_kind(key)}; bundle signatures use Ed25519 only; "
                             f"replace it with the signer's Ed25519 STEM.pub")
    return key


def _key_paths(stem: str | os.PathLike) -> tuple[Path, Path]:
    stem = Path(stem)
    if stem.suffix in (".key", ".pub"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + ".key"), stem.with_name(stem.name + ".pub")


def generate_keypair(stem: str | os.PathLike) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``STEM.key`` (PKCS#8 PEM, mode 0600) and ``STEM.pub``.

    Refuses (UsageError) when either file exists: a key is never overwritten.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat,
                                                              PublicFormat)

    key_path, pub_path = _key_paths(stem)
    existing = [str(p) for p in (key_path, pub_path) if p.exists() or p.is_symlink()]
    if existing:
        raise UsageError(f"keygen {stem}: {' and '.join(existing)} already exist(s); a key is never overwritten. "
                         "Choose another STEM, or move the old files away first")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    atomic_write(key_path, private_pem, mode=0o600)
    try:
        atomic_write(pub_path, public_pem, mode=0o644)
    except BaseException:
        key_path.unlink(missing_ok=True)  # no half key pair left behind
        raise
    return key_path, pub_path


# --- trust folder ----------------------------------------------------------------------------
def resolve_trust(trust: str | os.PathLike | None | bool = None) -> Path | None:
    """The trust folder to use: ``trust`` if given, else ``$EDGEINFER_TRUST`` if set and non-empty.

    ``False`` means no signature check even if the variable is set (``edgeinfer sign`` uses it).
    """
    if trust is False:
        return None
    if trust is None:
        env = os.environ.get(TRUST_ENV, "").strip()
        return Path(env) if env else None
    text = os.fspath(trust)
    return Path(text) if str(text).strip() else None


def load_trust(trust_dir: str | os.PathLike) -> dict[str, tuple[str, Any]]:
    """``{key_id: (name, public_key)}`` from the ``*.pub`` files of a trust folder.

    A missing folder, an empty one, or an unusable ``.pub`` file is a SignatureError: a trust
    folder that is configured must never end up trusting nothing (or something unintended).
    """
    folder = Path(trust_dir)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise SignatureError(f"trust folder {folder} {what}; pass the folder that holds the signers' *.pub keys "
                             f"(--trust DIR or {TRUST_ENV}), or leave both unset to load bundles unverified")
    try:
        pubs = sorted(p for p in folder.iterdir() if p.suffix == ".pub")
    except OSError as exc:
        raise SignatureError(f"cannot list trust folder {folder}: {exc.strerror or exc}") from None
    if not pubs:
        raise SignatureError(f"trust folder {folder} holds no *.pub keys, so no bundle could be accepted; copy the "
                             "signer's STEM.pub (from `edgeinfer keygen STEM`) into it, or stop configuring "
                             f"a trust folder (--trust / {TRUST_ENV})")
    trusted: dict[str, tuple[str, Any]] = {}
    for p in pubs:
        key = load_public_key(p)
        trusted.setdefault(key_id(key), (p.stem, key))
    return trusted


def _names(trusted: dict[str, tuple[str, Any]]) -> str:
    return ", ".join(f"{name} ({kid})" for kid, (name, _) in sorted(trusted.items(), key=lambda kv: kv[1][0]))


# --- the signature file ----------------------------------------------------------------------
def read_signatures(bundle_dir: str | os.PathLike) -> dict | None:
    """The bundle's parsed and checked ``signatures.json``, or None when there is none."""
    path = Path(bundle_dir) / SIGNATURES
    if not (path.exists() or path.is_symlink()):
        return None
    redo = f"remove it and sign the bundle again (`edgeinfer sign {Path(bundle_dir)} --key KEY.key`)"
    if path.is_symlink() or not path.is_file():
        raise SignatureError(f"signature file {path} is not a regular file; {redo}")
    try:
        doc = read_json(path, max_bytes=MAX_SIGNATURES_BYTES, what="signature file")
    except JsonFileError as exc:
        raise SignatureError(f"{exc}; {redo}") from None
    problems = []
    if not isinstance(doc, dict):
        problems.append(f"expected a JSON object, found {type(doc).__name__}")
    else:
        if doc.get("format") != FORMAT:
            problems.append(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
        if not (isinstance(doc.get("digest"), str) and _HEX64.fullmatch(doc["digest"])):
            problems.append("digest is not 64 lowercase hex digits")
        sigs = doc.get("signatures")
        if not isinstance(sigs, list):
            problems.append("signatures is not a list")
        else:
            for i, e in enumerate(sigs):
                if not isinstance(e, dict) or set(e) != {"key_id", "algorithm", "signature"}:
                    problems.append(f"signatures[{i}] must have exactly key_id, algorithm and signature")
                elif not (isinstance(e["key_id"], str) and _KEY_ID.fullmatch(e["key_id"])):
                    problems.append(f"signatures[{i}].key_id is not 16 lowercase hex digits")
                elif e["algorithm"] != ALGORITHM:
                    problems.append(f"signatures[{i}].algorithm is {e['algorithm']!r}, expected {ALGORITHM!r}")
                elif not isinstance(e["signature"], str):
                    problems.append(f"signatures[{i}].signature is not a base64 string")
        extra = set(doc) - {"format", "digest", "signatures"}
        if extra:
            problems.append(f"unknown fields {sorted(extra)}")
    if problems:
        raise SignatureError(f"signature file {path} is malformed:\n" + "\n".join(f"  - {p}" for p in problems)
                             + f"\n{redo[0].upper() + redo[1:]}.")
    return doc


def _verifies(public_key, signature_b64: str, digest: str) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        sig = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        public_key.verify(sig, _message(digest))
    except InvalidSignature:
        return False
    return True


def unverified_status(note: str = NO_TRUST_NOTE) -> dict:
    """The status of a bundle whose signature was not checked."""
    return {"verified": False, "key_id": None, "note": note}


def verify_bundle_signature(bundle_dir: str | os.PathLike, digest: str,
                            trust_dir: str | os.PathLike | None) -> dict:
    """Check ``bundle_dir``'s signatures against ``digest`` (the bundle's actual digest).

    Without a trust folder: an unverified status, nothing read. With one: the status of the
    first trusted key whose signature verifies, else a SignatureError that says why.
    """
    if trust_dir is None:
        return unverified_status()
    bundle_dir, trust_dir = Path(bundle_dir), Path(trust_dir)
    trusted = load_trust(trust_dir)
    doc = read_signatures(bundle_dir)
    if doc is None:
        raise SignatureError(
            f"bundle {bundle_dir} is not signed (no {SIGNATURES}) but trust folder {trust_dir} requires a "
            f"signature from one of: {_names(trusted)}. Sign it (`edgeinfer sign {bundle_dir} --key KEY.key`) "
            "with one of those keys, or use a bundle from a trusted source")
    entries = doc["signatures"]
    ours = [e for e in entries if e["key_id"] in trusted]
    if not ours:
        unknown = ", ".join(sorted({e["key_id"] for e in entries})) or "none (the signature list is empty)"
        raise SignatureError(
            f"bundle {bundle_dir} is signed only by keys that trust folder {trust_dir} does not hold: {unknown}; "
            f"trusted keys are: {_names(trusted)}. Have it signed by a trusted key, or add the signer's .pub "
            "to the trust folder if you trust it")
    problems = []
    for e in ours:
        name, key = trusted[e["key_id"]]
        if _verifies(key, e["signature"], digest):
            return {"verified": True, "key_id": e["key_id"], "key": name, "trust": str(trust_dir),
                    "note": f"verified: signed by trusted key {name} ({e['key_id']}) from {trust_dir}"}
        if doc["digest"] != digest and _verifies(key, e["signature"], doc["digest"]):
            problems.append(f"the manifest or an artifact changed after it was signed by {name} ({e['key_id']}): "
                            f"signed digest {doc['digest'][:16]}…, bundle digest now {digest[:16]}…")
        else:
            problems.append(f"the signature by {name} ({e['key_id']}) does not verify: {SIGNATURES} was altered "
                            "or damaged")
    raise SignatureError(
        f"bundle {bundle_dir} failed its signature check against trust folder {trust_dir}:\n"
        + "\n".join(f"  - {p}" for p in problems)
        + f"\nRe-sign it (`edgeinfer sign {bundle_dir} --key KEY.key`) if the change is intended, or restore the "
          "bundle from its source.")


def write_signature(bundle_dir: str | os.PathLike, digest: str, key) -> dict:
    """Add ``key``'s (an Ed25519 private key) signature over ``digest`` to ``bundle_dir``'s
    ``signatures.json``, writing or updating it.

    ``digest`` is the bundle's actual digest, of a bundle that passed its integrity check
    (:func:`edgeinfer.bundle.sign_bundle` loads it first). The key's earlier entry is replaced;
    other keys' entries are kept only if they signed the same digest (otherwise they are dropped
    and listed under ``dropped``).
    """
    bundle_dir = Path(bundle_dir)
    kid = key_id(key.public_key())
    entry = {"key_id": kid, "algorithm": ALGORITHM,
             "signature": base64.b64encode(key.sign(_message(digest))).decode("ascii")}
    old = read_signatures(bundle_dir)
    kept, dropped = [], []
    for e in (old or {}).get("signatures", []):
        if e["key_id"] == kid:
            continue
        (kept if old["digest"] == digest else dropped).append(e)
    path = write_json(bundle_dir / SIGNATURES, {"format": FORMAT, "digest": digest, "signatures": kept + [entry]})
    return {"bundle": str(bundle_dir), "digest": digest, "key_id": kid, "signatures": str(path),
            "kept": [e["key_id"] for e in kept], "dropped": [e["key_id"] for e in dropped]}


__all__ = [
    "SIGNATURES", "FORMAT", "ALGORITHM", "TRUST_ENV", "MESSAGE_PREFIX", "NO_TRUST_NOTE", "key_id",
    "load_private_key", "load_public_key", "generate_keypair", "resolve_trust", "load_trust", "read_signatures",
    "unverified_status", "verify_bundle_signature", "write_signature",
]
