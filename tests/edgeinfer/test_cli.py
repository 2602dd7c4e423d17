"""The CLI end to end, as a user runs it (subprocess where exit status and streams matter)."""
import json
import os
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
    from edgeinfer.intake import prepare_dataset
    from edgeinfer.preprocess import PreprocessSpec

    f = sorted(phantom_dir.rglob("*.dcm"))[0]
    png, npy = tmp_path / "p.png", tmp_path / "t.npy"
    assert main(["preview", str(f), "--bundle", str(tiny_bundle), "--out", str(png), "--npy", str(npy)]) == 0
    img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    spec = PreprocessSpec.from_manifest(load_bundle(tiny_bundle).manifest["preprocessing"])
    ref = prepare_dataset(dicomio.read_dataset(f), spec)
    assert img.shape == ref.display.shape
    np.testing.assert_allclose(img / 255.0, ref.display, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(np.load(npy), ref.tensor)


def test_preview_heatmap_shows_the_image_beside_each_urgent_label_s_map(phantom_dir, tmp_path, capsys):
    """The embedded bundle (with a class-activation map): three panels at twice the model's size, each under
    a title band; the map panels are coloured where the map is high, the first is the grey image."""
    f = sorted(phantom_dir.rglob("*.dcm"))[0]
    png = tmp_path / "why.png"
    assert main(["preview", str(f), "--heatmap", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "class-activation map (FP32 graph): pneumothorax 0." in out and "mass 0." in out
    img = cv2.imread(str(png), cv2.IMREAD_COLOR)
    band = img.shape[0] - 512
    assert img.shape[1] == 3 * 512 and 10 < band < 60
    panels = [img[band:, k * 512:(k + 1) * 512].astype(int) for k in range(3)]
    assert (panels[0][:, :, 0] == panels[0][:, :, 2]).all()                        # the image, grey
    assert any((np.abs(p[:, :, 0] - p[:, :, 2]) > 60).any() for p in panels[1:])   # a map, coloured


def test_preview_heatmap_of_a_bundle_without_a_map_says_so(tiny_bundle, phantom_dir, tmp_path, capsys):
    f = sorted(phantom_dir.rglob("*.dcm"))[0]
    assert main(["preview", str(f), "--bundle", str(tiny_bundle), "--heatmap", "--out", str(tmp_path / "w.png")]) == 0
    assert "has no class-activation map output (export it again to get one)" in capsys.readouterr().out


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


# --- the output path: checked before any work, written atomically, results never thrown away -----
PINNED = ("--backend", "onnxruntime", "--precision", "fp32", "--no-progress")


@pytest.mark.parametrize("case", ["folder", "under-a-file", "device", "an-input"])
def test_bad_output_path_is_refused_before_any_work(case, tiny_bundle, phantom_dir, tmp_path):
    victim = sorted(phantom_dir.rglob("*.dcm"))[0]
    (tmp_path / "afile").write_text("x")
    output = {"folder": tmp_path, "under-a-file": tmp_path / "afile" / "wl.json", "device": "/dev/full",
              "an-input": victim}[case]
    before = victim.read_bytes()
    # a missing bundle would be the first error if the output were checked late
    r = edgeinfer("triage", phantom_dir, "--bundle", tmp_path / "no-bundle", "--output", output, *PINNED)
    assert r.returncode == 1 and "--output" in r.stderr and "no such directory" not in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert victim.read_bytes() == before


def test_output_inside_the_inputs_that_is_an_input_is_refused(tiny_bundle, phantom_dir, tmp_path):
    import shutil

    d = tmp_path / "in"
    shutil.copytree(phantom_dir, d)
    victim = sorted(d.rglob("*.dcm"))[-1]
    before = victim.read_bytes()
    r = edgeinfer("triage", d, "--bundle", tiny_bundle, "--output", victim, *PINNED)
    assert r.returncode == 1 and "one of the inputs" in r.stderr, r.stderr
    assert victim.read_bytes() == before


def test_read_only_output_folder_is_refused_before_any_work(tiny_bundle, phantom_dir, tmp_path):
    import os
    import shutil

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    cmd = [sys.executable, "-m", "edgeinfer", "triage", str(phantom_dir), "--bundle", str(tiny_bundle),
           "--output", str(ro / "wl.json"), *PINNED]
    if os.geteuid() == 0:  # root ignores permission bits unless it drops these capabilities
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv is needed to drop root's DAC capabilities")
        cmd = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "cannot create files in" in r.stderr, r.stderr
    assert "STAT" not in r.stdout  # refused before triage ran


def test_write_cut_by_ulimit_keeps_the_previous_worklist_and_prints_the_table(tiny_bundle, phantom_dir, tmp_path):
    out = tmp_path / "wl.json"
    out.write_text('{"previous": true}\n')
    # ulimit -f 4: no file may grow past 4 KiB; the worklist is larger (Python ignores SIGXFSZ: EFBIG)
    script = f"ulimit -f 4; exec {sys.executable} -m edgeinfer triage {phantom_dir} --bundle {tiny_bundle} " \
             f"--output {out} {' '.join(PINNED)}"
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "could not write the worklist" in r.stderr and "previous file there is unchanged" in r.stderr
    assert "STAT" in r.stdout or "URGENT" in r.stdout or "ROUTINE" in r.stdout  # the table, all the same
    assert json.loads(out.read_text()) == {"previous": True}
    assert [p.name for p in tmp_path.iterdir()] == ["wl.json"]  # no temporary file left behind


KILL_DURING_WRITE = r"""
import os, sys, time
real_fsync = os.fsync
def fsync(fd):
    if ".wl.json-" in os.readlink(f"/proc/self/fd/{fd}"):   # the worklist's temporary file, fully written
        open(sys.argv[1], "w").close()
        time.sleep(120)
    return real_fsync(fd)
os.fsync = fsync
from edgeinfer.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_kill_9_during_the_worklist_write_keeps_the_previous_file(tiny_bundle, phantom_dir, tmp_path):
    import os
    import signal
    import time

    out = tmp_path / "wl.json"
    out.write_text('{"previous": true}\n')
    marker = tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_WRITE, str(marker), "triage", str(phantom_dir),
                             "--bundle", str(tiny_bundle), "--output", str(out), *PINNED],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.stderr.read().decode() if proc.poll() is not None else "timed out"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert json.loads(out.read_text()) == {"previous": True}


def test_preview_says_which_window_source_was_passed_over(phantom_dir, tmp_path):
    import pydicom

    src = sorted(phantom_dir.rglob("*.dcm"))[0]
    ds = pydicom.dcmread(src)
    ds.WindowCenter, ds.WindowWidth = 2048, 1e308   # a header window that leaves the image flat
    ds.save_as(tmp_path / "flat.dcm")
    r = edgeinfer("preview", tmp_path / "flat.dcm", "--out", tmp_path / "p.png")
    assert r.returncode == 0, r.stderr
    assert "window auto" in r.stdout and "passed over: header window" in r.stdout
    assert cv2.imread(str(tmp_path / "p.png")).std() > 10  # a real picture, not a flat one


def test_edited_manifest_is_refused_with_a_trust_folder_and_marked_unverified_without(phantom_dir, tmp_path):
    import shutil

    from edgeinfer.bundle import default_bundle_path

    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), bundle)
    assert edgeinfer("keygen", tmp_path / "maker").returncode == 0
    assert edgeinfer("sign", bundle, "--key", tmp_path / "maker.key").returncode == 0
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(tmp_path / "maker.pub", trust)
    r = edgeinfer("triage", phantom_dir, "--bundle", bundle, "--trust", trust, *PINNED)
    assert r.returncode == 0 and "verified: signed by trusted key maker" in r.stdout, r.stderr

    manifest = bundle / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"min_score": 0.9', '"min_score": 0.99'))
    r = edgeinfer("triage", phantom_dir, "--bundle", bundle, "--trust", trust, *PINNED)
    assert r.returncode == 1 and "changed after it was signed by maker" in r.stderr, r.stderr
    r = edgeinfer("triage", phantom_dir, "--bundle", bundle, *PINNED, env={**os.environ, "EDGEINFER_TRUST": str(trust)})
    assert r.returncode == 1 and "changed after it was signed" in r.stderr

    out = tmp_path / "wl.json"
    env = {k: v for k, v in os.environ.items() if k != "EDGEINFER_TRUST"}
    r = edgeinfer("triage", phantom_dir, "--bundle", bundle, "--output", out, *PINNED, env=env)
    assert r.returncode == 0 and "not verified" in r.stdout, r.stderr
    signature = json.loads(out.read_text())["bundle"]["signature"]
    assert signature["verified"] is False and "not verified" in signature["note"]
    assert len(json.loads(out.read_text())["bundle"]["digest"]) == 64


def test_force_runs_a_failed_precision_and_records_it(phantom_dir, tmp_path):
    import shutil

    from edgeinfer.bundle import default_bundle_path, load_bundle, write_manifest

    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), bundle)
    m = load_bundle(bundle).manifest
    next(a for a in m["artifacts"] if a["precision"] == "int8")["validation"]["passed"] = False
    write_manifest(bundle, m)
    pinned = ("--backend", "onnxruntime", "--precision", "int8", "--no-progress")
    r = edgeinfer("triage", phantom_dir, "--bundle", bundle, *pinned)
    assert r.returncode == 1 and "accuracy gate" in r.stderr, r.stderr
    out = tmp_path / "wl.json"
    r = edgeinfer("triage", phantom_dir, "--bundle", bundle, "--force", "--output", out, *pinned)
    assert r.returncode == 0, r.stderr
    run = json.loads(out.read_text())["run"]
    assert run["precision"] == "int8" and run["selection"]["forced"].startswith("FORCED")


def test_triage_intake_workers(tiny_bundle, phantom_dir, tmp_path, capsys):
    # no worker pool and a pool of two give the same worklist; a negative count is a usage error.
    # With a pool beside it, ONNX Runtime's threads sleep instead of spinning (RunnerOptions.shared_cpu)
    outs = []
    for i, extra in enumerate((["--workers", "0"], ["--workers", "2"], ["--workers", "2", "--processes"])):
        out = tmp_path / f"wl{i}.json"
        assert main(["triage", str(phantom_dir), "--bundle", str(tiny_bundle), *extra, "--backend", "onnxruntime",
                     "--output", str(out), "--no-progress"]) in (0, 2)
        wl = json.loads(out.read_text())
        assert wl["run"]["intake_workers"] == int(extra[1])
        assert wl["run"]["details"]["spinning"] is (extra[1] == "0")
        assert wl["run"]["intake_processes"] is ("--processes" in extra)
        outs.append([(s["study_uid"], s["priority"], s["score"]) for s in wl["studies"]])
    assert outs[0] == outs[1] == outs[2]
    capsys.readouterr()
    assert main(["triage", str(phantom_dir), "--bundle", str(tiny_bundle), "--workers", "-1"]) != 0
    assert "--workers at least 0" in capsys.readouterr().err


def test_triage_writes_each_study_s_sr_and_heatmaps_with_the_node_s_writers(phantom_dir, tmp_path):
    """--output-dicom: the same writers as the node, one file per object named by its SOP Instance UID; every
    document passes dicom3tools' dciodvfy and sits in its source study."""
    import pydicom

    import peers

    out = tmp_path / "dicom"
    r = edgeinfer("triage", str(phantom_dir), "--output-dicom", str(out), "--backend", "onnxruntime",
                  "--precision", "fp32", "--no-progress")
    assert r.returncode in (0, 2), r.stderr[-2000:]
    studies = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in phantom_dir.rglob("*.dcm")}
    files = sorted(out.glob("*.dcm"))
    assert f"{len(files)} DICOM result(s) written to {out}" in r.stderr
    objects = [pydicom.dcmread(f) for f in files]
    assert all(f.stem == str(s.SOPInstanceUID) for f, s in zip(files, objects))
    srs = [s for s in objects if s.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"]
    heatmaps = [s for s in objects if s.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"]
    assert len(srs) + len(heatmaps) == len(objects) and all(s.Modality == "SR" for s in srs)
    assert sorted(str(s.StudyInstanceUID) for s in srs) == sorted(studies)          # one SR per study
    wl = json.loads(edgeinfer("triage", str(phantom_dir), "--backend", "onnxruntime", "--precision", "fp32",
                              "--no-progress", "--json").stdout)
    assert len(heatmaps) == sum(len(i.get("heatmaps", [])) for s in wl["studies"] for i in s["images"]) > 0
    dciodvfy = peers.require_binary("dciodvfy")
    for f in (files[0], next(f for f, s in zip(files, objects) if s in heatmaps)):
        report = subprocess.run([dciodvfy, str(f)], capture_output=True, text=True, timeout=60)
        assert not [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")], report
