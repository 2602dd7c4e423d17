"""Bundle signatures: keygen, sign, and the trust folder that load_bundle checks them against."""
import ast
import base64
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from edgeinfer import signing
from edgeinfer.bundle import MANIFEST, default_bundle_path, describe, load_bundle, sign_bundle, write_manifest
from edgeinfer.cli import build_parser
from edgeinfer.errors import BundleError, IntegrityError, SignatureError, UsageError
from edgeinfer.signing import (NO_TRUST_NOTE, SIGNATURES, TRUST_ENV, generate_keypair, key_id, load_public_key,
                               load_trust, read_signatures, verify_bundle_signature)


@pytest.fixture(autouse=True)
def _no_trust_from_env(monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)


@pytest.fixture
def bundle(tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), dst)
    return dst


@pytest.fixture
def keys(tmp_path):
    """Two key pairs; the trust folder holds only 'release'."""
    kdir = tmp_path / "keys"
    release = generate_keypair(kdir / "release")
    other = generate_keypair(kdir / "other")
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(release[1], trust / "release.pub")
    return {"release": release, "other": other, "trust": trust,
            "release_id": key_id(load_public_key(release[1])), "other_id": key_id(load_public_key(other[1]))}


def _edit_threshold(bundle_dir, value=0.45):
    m = json.loads((bundle_dir / MANIFEST).read_text())
    m["triage"]["priorities"][1]["min_score"] = value
    write_manifest(bundle_dir, m)


def _parser():
    return build_parser(["sign"])  # the sign and keygen commands as edgeinfer registers them


# --- keys ------------------------------------------------------------------------------------
def test_keygen_writes_a_private_pem_0600_and_a_public_pem(tmp_path):
    key, pub = generate_keypair(tmp_path / "k" / "release")
    assert (key.name, pub.name) == ("release.key", "release.pub")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    priv = signing.load_private_key(key)
    assert key_id(priv.public_key()) == key_id(load_public_key(pub))
    assert len(key_id(priv.public_key())) == 16
    assert sorted(os.listdir(tmp_path / "k")) == ["release.key", "release.pub"]  # no temporary files left


def test_keygen_never_overwrites(tmp_path):
    key, pub = generate_keypair(tmp_path / "release")
    before = key.read_bytes()
    with pytest.raises(UsageError, match=r"already exist.*never overwritten"):
        generate_keypair(tmp_path / "release")
    with pytest.raises(UsageError, match="already exist"):
        generate_keypair(tmp_path / "release.key")  # same stem spelled with the extension
    pub.unlink()
    with pytest.raises(UsageError, match="release.key"):  # either file is enough to refuse
        generate_keypair(tmp_path / "release")
    assert key.read_bytes() == before


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl on PATH")
def test_openssl_ed25519_keys_work(tmp_path, bundle):
    key, pub = tmp_path / "ossl.key", tmp_path / "trust" / "ossl.pub"
    pub.parent.mkdir()
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)], check=True, capture_output=True)
    sign_bundle(bundle, key)
    assert load_bundle(bundle, trust=pub.parent).signature["key"] == "ossl"


def _rsa_pems():
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat,
                                                              PublicFormat)

    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (k.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
            k.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))


def test_non_ed25519_and_wrong_kind_of_keys_are_refused_clearly(tmp_path, bundle, keys):
    rsa_key, rsa_pub = _rsa_pems()
    (tmp_path / "rsa.key").write_bytes(rsa_key)
    with pytest.raises(SignatureError, match=r"rsa.key is an RSA-2048 key; bundle signatures use Ed25519 only; "
                                             r"make one with `edgeinfer keygen STEM`"):
        sign_bundle(bundle, tmp_path / "rsa.key")
    with pytest.raises(SignatureError, match=r"is a public key; signing needs the private key"):
        sign_bundle(bundle, keys["release"][1])
    (tmp_path / "junk.key").write_text("hello")
    with pytest.raises(SignatureError, match=r"junk.key is not a PEM private key"):
        sign_bundle(bundle, tmp_path / "junk.key")
    with pytest.raises(SignatureError, match=r"cannot read private key .*missing.key"):
        sign_bundle(bundle, tmp_path / "missing.key")
    assert not (bundle / SIGNATURES).exists()


# --- trust folder ------------------------------------------------------------------------------
def test_trust_folder_must_exist_and_hold_keys(tmp_path):
    with pytest.raises(SignatureError, match=r"trust folder .*nope does not exist"):
        load_trust(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("keys go here")
    with pytest.raises(SignatureError, match=r"holds no \*.pub keys, so no bundle could be accepted"):
        load_trust(tmp_path / "empty")


def test_trust_folder_refuses_unusable_pub_files_by_name(tmp_path, keys):
    trust = keys["trust"]
    _, rsa_pub = _rsa_pems()
    (trust / "legacy.pub").write_bytes(rsa_pub)
    with pytest.raises(SignatureError, match=r"legacy.pub is an RSA-2048 key; bundle signatures use Ed25519"):
        load_trust(trust)
    (trust / "legacy.pub").write_text("not a key")
    with pytest.raises(SignatureError, match=r"legacy.pub is not a PEM public key"):
        load_trust(trust)
    (trust / "legacy.pub").unlink()
    shutil.copy(keys["other"][0], trust / "oops.pub")
    with pytest.raises(SignatureError, match=r"oops.pub holds a PRIVATE key"):
        load_trust(trust)
    (trust / "oops.pub").unlink()
    assert load_trust(trust).keys() == {keys["release_id"]}


# --- signing and verifying ---------------------------------------------------------------------
def test_sign_then_load_with_trust_accepts(bundle, keys):
    digest = load_bundle(bundle).digest
    r = sign_bundle(bundle, keys["release"][0])
    assert r["digest"] == digest and r["key_id"] == keys["release_id"]
    doc = json.loads((bundle / SIGNATURES).read_text())
    assert doc["format"] == "edgeinfer-bundle-signatures/1" and doc["digest"] == digest
    assert [(e["key_id"], e["algorithm"]) for e in doc["signatures"]] == [(keys["release_id"], "ed25519")]
    assert len(base64.b64decode(doc["signatures"][0]["signature"])) == 64

    b = load_bundle(bundle, trust=keys["trust"])
    assert b.digest == digest  # the signature file is not part of the digest
    assert b.signature["verified"] is True
    assert (b.signature["key_id"], b.signature["key"]) == (keys["release_id"], "release")
    assert b.summary()["signature"]["verified"] is True
    assert b.summary()["signature"]["key_id"] == keys["release_id"]
    assert dict(describe(b))["signature"].startswith(f"verified by key release ({keys['release_id']})")
    assert load_bundle(bundle).signature["verified"] is False  # a signed bundle still loads without trust


def test_threshold_edited_after_signing_is_refused_with_the_cause(bundle, keys):
    sign_bundle(bundle, keys["release"][0])
    _edit_threshold(bundle)
    with pytest.raises(SignatureError) as err:
        load_bundle(bundle, trust=keys["trust"])
    msg = str(err.value)
    assert f"the manifest or an artifact changed after it was signed by release ({keys['release_id']})" in msg
    assert "Re-sign it" in msg and "restore the bundle" in msg
    assert isinstance(err.value, BundleError) and err.value.exit_code == 1

    b = load_bundle(bundle)  # without a trust folder the edited bundle loads, marked unverified
    assert b.summary()["signature"] == {"verified": False, "key_id": None, "note": NO_TRUST_NOTE}
    assert NO_TRUST_NOTE == "not verified: no trust folder configured (--trust DIR or EDGEINFER_TRUST)"


def test_changed_artifact_is_caught_by_integrity_before_signatures(bundle, keys):
    sign_bundle(bundle, keys["release"][0])
    p = bundle / "model.int8.onnx"
    data = bytearray(p.read_bytes())
    data[-10] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.int8.onnx: sha256 is"):
        load_bundle(bundle, trust=keys["trust"])
    with pytest.raises(IntegrityError):
        sign_bundle(bundle, keys["release"][0])  # a broken bundle is never signed


def test_unsigned_bundle_is_refused_with_trust(bundle, keys):
    with pytest.raises(SignatureError) as err:
        load_bundle(bundle, trust=keys["trust"])
    msg = str(err.value)
    assert f"is not signed (no {SIGNATURES}) but trust folder {keys['trust']} requires a signature" in msg
    assert f"release ({keys['release_id']})" in msg


def test_bundle_signed_by_an_untrusted_key_is_refused_naming_it(bundle, keys):
    sign_bundle(bundle, keys["other"][0])
    with pytest.raises(SignatureError) as err:
        load_bundle(bundle, trust=keys["trust"])
    msg = str(err.value)
    assert f"signed only by keys that trust folder {keys['trust']} does not hold: {keys['other_id']}" in msg
    assert f"trusted keys are: release ({keys['release_id']})" in msg


def test_tampered_signature_is_refused(bundle, keys):
    sign_bundle(bundle, keys["release"][0])
    doc = json.loads((bundle / SIGNATURES).read_text())
    sig = bytearray(base64.b64decode(doc["signatures"][0]["signature"]))
    sig[5] ^= 0x01
    doc["signatures"][0]["signature"] = base64.b64encode(bytes(sig)).decode()
    (bundle / SIGNATURES).write_text(json.dumps(doc))
    with pytest.raises(SignatureError, match=r"signature by release \(\w+\) does not verify"):
        load_bundle(bundle, trust=keys["trust"])


def test_recorded_digest_swapped_is_refused(bundle, keys):
    sign_bundle(bundle, keys["release"][0])
    doc = json.loads((bundle / SIGNATURES).read_text())
    doc["digest"] = "0" * 64  # the signature still covers the real digest: accepted on the real one
    (bundle / SIGNATURES).write_text(json.dumps(doc))
    assert load_bundle(bundle, trust=keys["trust"]).signature["verified"] is True
    _edit_threshold(bundle)
    with pytest.raises(SignatureError, match="does not verify"):
        load_bundle(bundle, trust=keys["trust"])


@pytest.mark.parametrize("text, message", [
    ('{"format": "edgeinfer-bundle-signatures/1", "digest": NaN, "signatures": []}', "NaN or Infinity"),
    ('{"format": "edgeinfer-bundle-signatures/1", "digest": 1e999, "signatures": []}', "finite"),
    ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
    ('{"format": "other/2", "digest": "ab", "signatures": {}}', "format is 'other/2'"),
    ('{"format": "edgeinfer-bundle-signatures/1", "digest": "' + "a" * 64
     + '", "signatures": [{"key_id": "0123456789abcdef", "algorithm": "rsa", "signature": "AA=="}]}',
     r"algorithm is 'rsa'"),
])
def test_malformed_signature_files_are_refused(bundle, keys, text, message):
    (bundle / SIGNATURES).write_text(text)
    with pytest.raises(SignatureError, match=message) as err:
        load_bundle(bundle, trust=keys["trust"])
    assert str(bundle / SIGNATURES) in str(err.value)
    assert "sign the bundle again" in str(err.value)


def test_oversized_signature_file_is_refused(bundle, keys):
    (bundle / SIGNATURES).write_text(json.dumps({"pad": "x" * (300 << 10)}))
    with pytest.raises(SignatureError, match="more than the 262,144 allowed"):
        read_signatures(bundle)


def test_env_trust_is_honoured_and_can_be_overridden(bundle, keys, monkeypatch):
    monkeypatch.setenv(TRUST_ENV, str(keys["trust"]))
    with pytest.raises(SignatureError, match="is not signed"):
        load_bundle(bundle)
    assert load_bundle(bundle, trust=False).signature["verified"] is False
    sign_bundle(bundle, keys["release"][0])  # signing ignores EDGEINFER_TRUST
    assert load_bundle(bundle).signature["key"] == "release"
    monkeypatch.setenv(TRUST_ENV, "")
    _edit_threshold(bundle)
    assert load_bundle(bundle).signature["note"] == NO_TRUST_NOTE  # empty means unset


def test_configured_but_empty_or_missing_trust_folder_refuses(bundle, tmp_path):
    sign_bundle(bundle, generate_keypair(tmp_path / "k")[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SignatureError, match="holds no"):
        load_bundle(bundle, trust=tmp_path / "empty")
    with pytest.raises(SignatureError, match="does not exist"):
        load_bundle(bundle, trust=tmp_path / "typo")


def test_resigning_replaces_own_entry_and_keeps_or_drops_others(bundle, keys):
    sign_bundle(bundle, keys["other"][0])
    r = sign_bundle(bundle, keys["release"][0])
    assert r["kept"] == [keys["other_id"]] and r["dropped"] == []
    sign_bundle(bundle, keys["release"][0])
    ids = [e["key_id"] for e in read_signatures(bundle)["signatures"]]
    assert sorted(ids) == sorted([keys["other_id"], keys["release_id"]])  # one entry per key
    assert load_bundle(bundle, trust=keys["trust"]).signature["key_id"] == keys["release_id"]

    _edit_threshold(bundle)
    r = sign_bundle(bundle, keys["release"][0])
    assert r["kept"] == [] and r["dropped"] == [keys["other_id"]]
    assert [e["key_id"] for e in read_signatures(bundle)["signatures"]] == [keys["release_id"]]
    assert load_bundle(bundle, trust=keys["trust"]).signature["verified"] is True


def test_verify_without_trust_reads_nothing(bundle):
    (bundle / SIGNATURES).write_text("garbage")
    assert verify_bundle_signature(bundle, "0" * 64, None) == {"verified": False, "key_id": None,
                                                               "note": NO_TRUST_NOTE}


# --- command line ----------------------------------------------------------------------------
def test_keygen_and_sign_commands(tmp_path, bundle, capsys):
    p = _parser()
    args = p.parse_args(["keygen", str(tmp_path / "release")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    kid = key_id(load_public_key(tmp_path / "release.pub"))
    assert f"key id {kid}" in out and "release.key" in out

    args = p.parse_args(["sign", str(bundle), "--key", str(tmp_path / "release.key")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert load_bundle(bundle).digest in out and kid in out

    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(tmp_path / "release.pub", trust)
    assert load_bundle(bundle, trust=trust).signature["verified"] is True

    args = p.parse_args(["keygen", str(tmp_path / "release")])
    with pytest.raises(UsageError, match="never overwritten"):
        args.func(args)


def test_sign_command_requires_bundle_and_key_and_has_examples(capsys):
    p = _parser()
    with pytest.raises(SystemExit) as e:
        p.parse_args(["sign"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        p.parse_args(["sign", "b/"])
    assert "--key" in capsys.readouterr().err
    for cmd in ("sign", "keygen"):
        with pytest.raises(SystemExit):
            p.parse_args([cmd, "--help"])
        assert "examples:" in capsys.readouterr().out


# --- one way: edgeinfer.bundle uses edgeinfer.signing ----------------------------------------------
def test_signing_never_imports_the_bundle_module():
    """Signing works on a folder and a digest; loading and signing a bundle are edgeinfer.bundle's, which
    imports this module, so nothing here may import edgeinfer.bundle back (not even inside a function)."""
    tree = ast.parse(Path(signing.__file__).read_text())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if "bundle" in m.split(".")], modules
