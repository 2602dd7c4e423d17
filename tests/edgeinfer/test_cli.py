"""The CLI end to end, as a user runs it (subprocess where exit status and streams matter)."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgeinfer.cli import main


def edgeinfer(*args, **kw):
    return subprocess.run([sys.executable, "-m", "edgeinfer", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


def test_help_for_every_subcommand_has_examples():
    for cmd in ("phantom", "inspect", "preview", "triage", "export"):
        out = edgeinfer(cmd, "--help")
        assert out.returncode == 0 and "examples:" in out.stdout, cmd


def test_triage_json_output_shape(tiny_bundle, phantom_dir, tmp_path):
    out = tmp_path / "wl.json"
    r = edgeinfer("triage", phantom_dir, "--bundle", tiny_bundle, "--output", out, "--labels",
                  phantom_dir / "labels.csv", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "STAT" in r.stdout and "AUC" in r.stdout and "Traceback" not in r.stderr
    d = json.loads(out.read_text())
    assert {"studies", "skipped", "errors", "summary", "run", "bundle"} <= set(d)
    s = d["studies"][0]
    assert {"study_uid", "priority", "score", "images", "model", "timings_ms"} <= set(s)
    assert {"path", "score", "timings_ms"} <= set(s["images"][0])
    assert d["summary"]["evaluation"]["n"] == d["summary"]["studies"]


def test_bad_input_exits_2_without_traceback(tiny_bundle, tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"\x00" * 10)
    (tmp_path / "b.dcm").write_text("hello")
    r = edgeinfer("triage", tmp_path, "--bundle", tiny_bundle, "--json")
    assert r.returncode == 2, r.stderr
    d = json.loads(r.stdout)
    assert len(d["errors"]) == 2 and not d["studies"]
    assert "Traceback" not in r.stderr


def test_cannot_run_exits_1_with_a_reason(tmp_path):
    r = edgeinfer("triage", tmp_path, "--bundle", tmp_path / "nope")
    assert r.returncode == 1 and "no such directory" in r.stderr and "Traceback" not in r.stderr
    r = edgeinfer("triage", tmp_path / "missing")
    assert r.returncode == 1 and "no such file or folder" in r.stderr
    r = edgeinfer("triage", tmp_path, "--device", "cuda")
    assert r.returncode == 1 and "CUDAExecutionProvider is not available" in r.stderr


def test_preview_writes_what_the_model_sees(tiny_bundle, phantom_dir, tmp_path):
    from edgeinfer import dicomio
    from edgeinfer.bundle import load_bundle
    from edgeinfer.preprocess import PreprocessSpec, prepare

    f = sorted(phantom_dir.rglob("*.dcm"))[0]
    png, npy = tmp_path / "p.png", tmp_path / "t.npy"
    assert main(["preview", str(f), "--bundle", str(tiny_bundle), "--out", str(png), "--npy", str(npy)]) == 0
    img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    spec = PreprocessSpec.from_manifest(load_bundle(tiny_bundle).manifest["preprocessing"])
    ref = prepare(dicomio.read_dataset(f), spec)
    assert img.shape == ref.display.shape
    np.testing.assert_allclose(img / 255.0, ref.display, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(np.load(npy), ref.tensor)


def test_preview_of_a_bad_file_is_a_clear_refusal(tmp_path, capsys):
    bad = tmp_path / "x.dcm"
    bad.write_text("nope")
    assert main(["preview", str(bad), "--out", str(tmp_path / "p.png")]) == 2
    assert "not a DICOM file" in capsys.readouterr().err


def test_inspect_shows_the_embedded_bundle(capsys):
    assert main(["inspect"]) == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())  # the table may wrap long cells
    assert "phantom-cxr" in out and "NOT FOR CLINICAL USE" in out and "fp32" in out
    assert main(["inspect", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "phantom-cxr"


def test_phantom_command(tmp_path):
    r = edgeinfer("phantom", tmp_path / "p", "--n", 3, "--seed", 4, "--max-size", 256, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "wrote 3 images" in r.stdout and (tmp_path / "p" / "labels.csv").exists()
    r = edgeinfer("phantom", tmp_path / "p", "--n", 3)
    assert r.returncode == 1 and "not an empty folder" in r.stderr
