"""Head CT phantoms: a valid axial CT series (geometry, HU through the modality LUT, signed and unsigned
storage), a bleed mask that matches the images and the stated volume, files and labels.csv, determinism,
and dicom3tools' verdict."""
from __future__ import annotations

import csv
import subprocess

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import peers
from edgeinfer.phantom.ct_head import BLEEDS, CT_LABELS_COLUMNS, CT_SOP_CLASS, generate_ct, make_head_ct

SIZE = 128


@pytest.fixture(scope="module")
def cases():
    return {kind: make_head_ct(np.random.default_rng([11, i]), index=i, finding=kind, size=SIZE, thickness=2.5)
            for i, kind in enumerate(("none", *BLEEDS))}


def _volume(ct):
    return np.stack([apply_modality_lut(d.pixel_array, d).astype(np.float64) for d in ct.datasets])


def test_a_series_is_axial_contiguous_and_in_one_frame_of_reference(cases):
    for ct in cases.values():
        z = [float(d.ImagePositionPatient[2]) for d in ct.datasets]
        assert np.allclose(np.diff(z), 2.5) and len(z) == ct.mask.shape[0] > 20
        assert {tuple(map(float, d.ImageOrientationPatient)) for d in ct.datasets} == {(1, 0, 0, 0, 1, 0)}
        assert len({d.FrameOfReferenceUID for d in ct.datasets}) == 1
        assert len({d.SeriesInstanceUID for d in ct.datasets}) == 1 and ct.datasets[0].SOPClassUID == CT_SOP_CLASS
        assert [d.InstanceNumber for d in ct.datasets] == list(range(1, len(z) + 1))
        ps = float(ct.datasets[0].PixelSpacing[0])
        assert ps == pytest.approx(ct.spacing, rel=1e-4) and 210 / SIZE <= ps <= 250 / SIZE
        assert ct.datasets[0].Rows == ct.datasets[0].Columns == SIZE and ct.datasets[0].RescaleType == "HU"


def test_tissues_have_their_hounsfield_units_whatever_the_stored_encoding(cases):
    encodings = set()
    for ct in cases.values():
        vol = _volume(ct)
        mid = vol[len(vol) // 2]
        encodings.add(int(ct.datasets[0].PixelRepresentation))
        assert mid.min() < -900 and mid.max() > 1000                       # air and cortical bone
        c = SIZE // 2
        brain = mid[c - 30:c - 15, c - 10:c + 10]                           # anterior parenchyma
        assert 10 < np.median(brain) < 50
    many = [make_head_ct(np.random.default_rng([12, i]), index=i, finding="none", size=64, thickness=5.0)
            for i in range(6)]
    encodings |= {int(m.datasets[0].PixelRepresentation) for m in many}
    assert encodings == {0, 1}                                               # unsigned (-1024) and signed


def test_the_mask_is_where_the_bleed_is_and_its_volume_is_stated(cases):
    assert not cases["none"].mask.any() and cases["none"].volume_ml == 0
    for kind in BLEEDS:
        ct = cases[kind]
        vol, m = _volume(ct), ct.mask.astype(bool)
        assert m.any(), kind
        voxel_ml = ct.spacing * ct.spacing * ct.thickness / 1000
        assert ct.volume_ml == pytest.approx(m.sum() * voxel_ml, abs=1e-3) and ct.finding == kind
        ring = np.zeros_like(m)
        for k in np.nonzero(m.any(axis=(1, 2)))[0]:          # the parenchyma just around the bleed, same slices
            grown = cv2.dilate(m[k].astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
            ring[k] = grown & ~m[k] & (vol[k] > 10) & (vol[k] < 60)
        assert vol[m].mean() > 45 and vol[m].mean() > vol[ring].mean() + 10, kind   # hyperdense


def test_files_labels_and_masks_on_disk_and_the_same_seed_writes_the_same_files(tmp_path):
    rows = generate_ct(tmp_path / "a", 2, seed=4, size=64)
    again = generate_ct(tmp_path / "b", 2, seed=4, size=64)
    assert rows == again
    with open(tmp_path / "a" / "labels.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CT_LABELS_COLUMNS
        assert [r["study_uid"] for r in reader] == [r["study_uid"] for r in rows]
    for r in rows:
        files = sorted((tmp_path / "a" / r["folder"] / "series02").glob("*.dcm"))
        assert len(files) == r["slices"]
        assert all(f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes() for f in files)
        mask = np.load(tmp_path / "a" / r["mask"])
        assert mask.shape == (r["slices"], 64, 64)
        heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        assert {h.StudyInstanceUID for h in heads} == {r["study_uid"]}
        assert (r["label"] == "urgent") == (r["volume_ml"] > 0) == bool(mask.any())


def test_dicom3tools_finds_no_error_in_a_slice_and_the_series_is_consistent(tmp_path):
    dciodvfy, dcentvfy = peers.require_binary("dciodvfy"), peers.require_binary("dcentvfy")
    rows = generate_ct(tmp_path / "ct", 1, seed=2, size=64)
    files = sorted((tmp_path / "ct" / rows[0]["folder"] / "series02").glob("*.dcm"))
    out = subprocess.run([dciodvfy, str(files[len(files) // 2])], capture_output=True, text=True, timeout=60)
    assert not [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")], out.stdout + out.stderr
    out = subprocess.run([dcentvfy, *map(str, files)], capture_output=True, text=True, timeout=120)
    assert not [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")], out.stdout + out.stderr


def test_the_phantom_command_writes_head_cts_and_refuses_mixed_options(tmp_path, capsys):
    from edgeinfer.cli import main

    assert main(["phantom", str(tmp_path / "ct"), "--kind", "ct-head", "--n", "1", "--seed", "3", "--size", "64",
                 "--no-progress"]) == 0
    assert "wrote 1 head CT studies" in capsys.readouterr().out and (tmp_path / "ct" / "labels.csv").exists()
    assert main(["phantom", str(tmp_path / "x"), "--kind", "ct-head", "--max-size", "256"]) == 1
    assert "--max-size is for radiographs" in capsys.readouterr().err
    assert main(["phantom", str(tmp_path / "y"), "--size", "256"]) == 1
    with pytest.raises(ValueError, match="finding must be"):
        make_head_ct(np.random.default_rng(0), index=0, finding="stroke", size=64)
