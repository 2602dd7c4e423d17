"""Synthetic chest radiographs: valid DICOM, the header mix, labels, determinism, findings."""
from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from edgeinfer import phantom
from edgeinfer.errors import UsageError

RLE = "1.2.840.10008.1.2.5"
EXPLICIT = "1.2.840.10008.1.2.1"
N = 24


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "set"
    calls = []
    rows = phantom.generate(out, N, seed=11, max_size=512, progress=calls.append)
    datasets = {r["path"]: pydicom.dcmread(out / r["path"]) for r in rows}
    return out, rows, datasets, calls


def _study(rng_seed: int, **plan):
    """One single-image study through the private entry point, with its anatomical masks."""
    masks: list = []
    case = phantom._make_study(np.random.default_rng(rng_seed), index=1, n_images=1, plan=plan, size=384,
                               debug=masks)[0]
    return case, masks[0]


def _display(ds) -> np.ndarray:
    """Modality values, MONOCHROME1 inverted: high = dense, whatever the header says."""
    v = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    return -v if ds.PhotometricInterpretation == "MONOCHROME1" else v


# --- files and labels.csv -------------------------------------------------------------------------
def test_labels_csv_lists_exactly_the_files_written(phantom_set):
    out, rows, _, calls = phantom_set
    with open(out / "labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == phantom.LABELS_COLUMNS
        csv_rows = list(reader)
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted([r["path"] for r in csv_rows] + ["labels.csv"])
    assert len(csv_rows) == N and calls == [1] * N  # progress: one increment per file
    assert [{k: str(v) for k, v in r.items()} for r in rows] == csv_rows
    assert all("\\" not in r["path"] and not r["path"].startswith("/") for r in rows)


def test_files_read_back_and_match_their_row(phantom_set):
    out, rows, datasets, _ = phantom_set
    for r in rows:
        ds = datasets[r["path"]]
        assert ds.file_meta.TransferSyntaxUID == r["transfer_syntax"]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == r["sop_instance_uid"]
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (r["study_uid"], r["series_uid"])
        assert (ds.Modality, ds.PhotometricInterpretation) == (r["modality"], r["photometric"])
        assert (ds.BitsStored, ds.Rows, ds.Columns) == (r["bits_stored"], r["rows"], r["columns"])
        assert ds.SOPClassUID == {"DX": phantom.DX_SOP_CLASS, "CR": phantom.CR_SOP_CLASS}[ds.Modality]
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert (ds.BitsAllocated, ds.PixelRepresentation, ds.SamplesPerPixel) == (16, 0, 1)
        assert ds.HighBit == ds.BitsStored - 1
        if ds.Modality == "DX":
            assert ds.PresentationIntentType == "FOR PRESENTATION"
        arr = ds.pixel_array  # decodes RLE too
        assert arr.shape == (ds.Rows, ds.Columns) and arr.dtype == np.uint16
        assert int(arr.max()) < 2 ** ds.BitsStored
        assert max(ds.Rows, ds.Columns) <= 512
        assert r["label"] == ("normal" if r["finding"] == "none" else "urgent")
        assert r["finding"] in ("none", *phantom.FINDINGS)


def test_rle_decodes_with_pydicoms_own_decoder(phantom_set):
    out, rows, datasets, _ = phantom_set
    r = next(r for r in rows if r["transfer_syntax"] == RLE)
    ds = datasets[r["path"]]
    ds.pixel_array_options(decoding_plugin="pydicom")
    native = ds.pixel_array.copy()
    ds2 = pydicom.dcmread(out / r["path"])
    assert np.array_equal(native, ds2.pixel_array)
    # and the same pixels written uncompressed are what RLE holds (lossless)
    assert ds2.file_meta.TransferSyntaxUID == RLE and native.std() > 0


def test_the_header_mix_appears_in_a_moderate_set(phantom_set):
    _, rows, datasets, _ = phantom_set
    dsets = list(datasets.values())
    assert {d.Modality for d in dsets} == {"DX", "CR"}
    assert {d.PhotometricInterpretation for d in dsets} == {"MONOCHROME1", "MONOCHROME2"}
    assert {d.BitsStored for d in dsets} == {12, 14, 16}
    ts = Counter(r["transfer_syntax"] for r in rows)
    assert set(ts) == {RLE, EXPLICIT} and 0.1 <= ts[RLE] / N <= 0.45
    single = [d for d in dsets if "WindowCenter" in d and d["WindowCenter"].VM == 1]
    multi = [d for d in dsets if "WindowCenter" in d and d["WindowCenter"].VM > 1]
    rescaled = [d for d in dsets if "RescaleSlope" in d]
    neither = [d for d in dsets if "WindowCenter" not in d and "RescaleSlope" not in d]
    assert single and multi and rescaled and neither
    assert all(d.WindowCenterWidthExplanation and len(d.WindowCenterWidthExplanation) == d["WindowCenter"].VM
               for d in multi)
    assert all(d.RescaleType == "US" for d in rescaled)
    assert {float(d.RescaleSlope) for d in rescaled} - {1.0} and {float(d.RescaleIntercept) for d in rescaled} - {0.0}
    assert {d.ViewPosition for d in dsets} == {"PA", "AP"}
    assert len({d.Manufacturer for d in dsets}) >= 3
    assert Counter(r["label"] for r in rows)["urgent"] >= N // 3
    assert {r["finding"] for r in rows} == {"none", *phantom.FINDINGS}


def test_headers_look_like_a_chest_radiograph(phantom_set):
    _, _, datasets, _ = phantom_set
    for ds in datasets.values():
        assert str(ds.PatientName).startswith("PHANTOM^") and ds.PatientID.startswith("PHANTOM-")
        assert ds.PatientSex in ("M", "F") and len(ds.PatientBirthDate) == 8 and len(ds.StudyDate) == 8
        assert ds.AccessionNumber and ds.StudyDescription and ds.SeriesDescription
        assert ds.get("BodyPartExamined", "CHEST") == "CHEST"
        sy, sx = (float(v) for v in ds.ImagerPixelSpacing)
        assert sy == pytest.approx(sx) and 0.14 <= sy <= 2.0
        assert 300 <= max(ds.Rows, ds.Columns) * sy <= 450  # a 35-43 cm detector
        if "PixelSpacing" in ds:
            assert [float(v) for v in ds.PixelSpacing] == [sy, sx]
        if ds.Modality == "DX":
            inverse = ds.PhotometricInterpretation == "MONOCHROME1"
            assert ds.PresentationLUTShape == ("INVERSE" if inverse else "IDENTITY")


def test_studies_group_images_of_one_patient(phantom_set):
    _, rows, datasets, _ = phantom_set
    by_study = defaultdict(list)
    for r in rows:
        by_study[r["study_uid"]].append(r)
    assert len({r["sop_instance_uid"] for r in rows}) == N
    assert max(len(v) for v in by_study.values()) == 2 and min(len(v) for v in by_study.values()) == 1
    for uid, items in by_study.items():
        ds = [datasets[r["path"]] for r in items]
        assert len({(d.PatientID, d.AccessionNumber, d.StudyDate, d.Modality, d.Rows) for d in ds}) == 1
        assert len({r["finding"] for r in items}) == 1  # the finding is on every image of the study
        series = {d.SeriesInstanceUID: d.SeriesNumber for d in ds}
        assert len(set(series.values())) == len(series)  # one number per series
    # distinct studies are distinct patients
    assert len({datasets[v[0]["path"]].PatientID for v in by_study.values()}) == len(by_study)


def test_window_presets_cover_the_body(phantom_set):
    _, _, datasets, _ = phantom_set
    for ds in datasets.values():
        if "WindowCenter" not in ds:
            continue
        c = float(ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter)
        w = float(ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth)
        v = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        inside = np.mean((v > c - w / 2) & (v < c + w / 2))
        assert inside > 0.5, (ds.PhotometricInterpretation, c, w, v.min(), v.max())


# --- determinism ----------------------------------------------------------------------------------
def _tree(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = phantom.generate(tmp_path / "a", 5, seed=3, max_size=256)
    b = phantom.generate(tmp_path / "b", 5, seed=3, max_size=256)
    c = phantom.generate(tmp_path / "c", 5, seed=4, max_size=256)
    assert a == b and _tree(tmp_path / "a") == _tree(tmp_path / "b")
    ta, tc = _tree(tmp_path / "a"), _tree(tmp_path / "c")
    assert {r["sop_instance_uid"] for r in a}.isdisjoint({r["sop_instance_uid"] for r in c})
    assert all(ta[k] != tc[k] for k in set(ta) & set(tc) if k.endswith(".dcm"))


def test_output_folder_must_be_new_or_empty(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "old.dcm").write_bytes(b"")
    with pytest.raises(UsageError, match="not an empty folder"):
        phantom.generate(tmp_path / "x", 2, seed=1, max_size=128)
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError):
        phantom.generate(tmp_path / "f", 2, seed=1, max_size=128)
    for bad in (dict(n=-1, seed=1), dict(n=2, seed=-5), dict(n=2, seed=1, max_size=8)):
        with pytest.raises(UsageError):
            phantom.generate(tmp_path / "new", **bad)
    assert phantom.generate(tmp_path / "empty", 0, seed=1) == []


# --- make_case ------------------------------------------------------------------------------------
def test_make_case_gives_a_writable_dataset():
    case = phantom.make_case(np.random.default_rng(5), index=7, finding="mass", size=(300, 256), compress=True)
    assert isinstance(case, phantom.PhantomCase)
    assert (case.label, case.finding) == ("urgent", "mass") and case.study_uid == case.dataset.StudyInstanceUID
    assert not Path(case.relpath).is_absolute() and case.relpath.endswith(".dcm")
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, case.dataset, enforce_file_format=True)
    ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    assert ds.file_meta.TransferSyntaxUID == RLE and ds.pixel_array.shape == (300, 256)
    assert ds.PatientName == "PHANTOM^0007"
    plain = phantom.make_case(np.random.default_rng(5), index=7, finding="none", size=200, compress=False)
    assert plain.dataset.file_meta.TransferSyntaxUID == EXPLICIT and plain.label == "normal"
    assert plain.dataset.pixel_array.shape == (200, 200)
    capped = phantom.make_case(np.random.default_rng(5), index=7, max_size=300)
    assert max(capped.dataset.Rows, capped.dataset.Columns) == 300
    with pytest.raises(ValueError):
        phantom.make_case(np.random.default_rng(5), index=1, finding="fracture")


def test_random_findings_are_about_half_urgent():
    kinds = Counter(phantom.make_case(np.random.default_rng([8, i]), index=i, size=96).finding for i in range(48))
    assert 14 <= kinds["none"] <= 34 and kinds["mass"] >= 5 and kinds["pneumothorax"] >= 5


def test_monochrome1_stores_the_inverse_of_monochrome2():
    m2, masks = _study(21, photometric="MONOCHROME2", finding="none")
    m1, _ = _study(21, photometric="MONOCHROME1", finding="none")
    a2, a1 = m2.dataset.pixel_array.astype(np.int64), m1.dataset.pixel_array.astype(np.int64)
    lung, med = masks["lung"], masks["mediastinum"]
    assert lung.mean() > 0.1 and med.mean() > 0.02
    assert a2[lung].mean() < a2[med].mean()  # MONOCHROME2: lungs dark (low), mediastinum bright
    assert a1[lung].mean() > a1[med].mean()  # MONOCHROME1: the ordering flips...
    assert len(np.unique(a1 + a2)) <= 3  # ...because the values are mirrored (up to clipping)


def test_lungs_darker_than_mediastinum_in_every_file(phantom_set):
    _, _, datasets, _ = phantom_set
    for ds in datasets.values():
        v = _display(ds)
        h, w = v.shape
        centre = v[int(0.25 * h):int(0.5 * h), int(0.47 * w):int(0.53 * w)].mean()
        lungs = np.concatenate([v[int(0.3 * h):int(0.45 * h), int(0.18 * w):int(0.3 * w)].ravel(),
                                v[int(0.3 * h):int(0.45 * h), int(0.7 * w):int(0.82 * w)].ravel()]).mean()
        assert lungs < centre, ds.PhotometricInterpretation


@pytest.mark.parametrize("finding", phantom.FINDINGS)
def test_a_finding_changes_the_image_only_inside_the_lungs(finding):
    normal, masks = _study(33, finding="none", photometric="MONOCHROME2")
    sick, _ = _study(33, finding=finding, photometric="MONOCHROME2", strength=1.0)
    assert sick.label == "urgent" and normal.label == "normal"
    # same patient, same header mix
    assert normal.dataset.PatientID == sick.dataset.PatientID
    diff = np.abs(sick.dataset.pixel_array.astype(np.int64) - normal.dataset.pixel_array.astype(np.int64))
    assert diff.sum() > 0
    lung = masks["lung"]
    # a thin margin for the blur and the processing's unsharp mask
    near_lung = cv2.dilate(lung.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert diff[near_lung].sum() / diff.sum() > 0.9
    r, c = sick.details["center_rc"]
    assert lung[int(round(r)), int(round(c))]
    assert diff.mean() < 0.05 * normal.dataset.pixel_array.std()  # a local, low-contrast change


def test_difficulty_scales_finding_contrast(monkeypatch):
    normal, _ = _study(44, finding="none")

    def mass(difficulty):
        return phantom._make_study(np.random.default_rng(44), index=1, n_images=1, size=384,
                                   plan={"finding": "mass", "strength": 0.8}, difficulty=difficulty)[0]

    easy, hard = mass(1.0), mass(2.0)
    assert hard.details["contrast"] == pytest.approx(easy.details["contrast"] / 2)
    base = normal.dataset.pixel_array.astype(np.int64)
    d_easy = np.abs(easy.dataset.pixel_array.astype(np.int64) - base).sum()
    d_hard = np.abs(hard.dataset.pixel_array.astype(np.int64) - base).sum()
    assert 0.3 < d_hard / d_easy < 0.7
    with pytest.raises(ValueError):
        phantom.make_case(np.random.default_rng(1), index=1, difficulty=0)
    # the module-level knobs are read at call time; FINDING_CONTRAST tunes one kind only
    monkeypatch.setattr(phantom, "DIFFICULTY", 4.0)
    assert mass(None).details["contrast"] == pytest.approx(0.2)
    monkeypatch.setattr(phantom, "FINDING_CONTRAST", {"mass": 0.5, "pneumothorax": 1.0})
    assert mass(1.0).details["contrast"] == pytest.approx(0.4)


def test_importing_the_module_pulls_in_no_heavy_dependency():
    code = ("import sys, edgeinfer.phantom; bad = {'torch', 'tensorrt', 'openvino', 'scipy'} & set(sys.modules); "
            "print(sorted(bad)); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr or r.stdout


def test_the_finding_box_holds_where_the_finding_changed_the_image():
    """The same patient with and without the finding: every pixel the finding changed markedly lies in
    ``box_rc`` (labels.csv's ``finding_box``), and the box is a small part of the image."""
    from pydicom.pixels import apply_modality_lut

    for i in range(6):
        kind = phantom.FINDINGS[i % 2]
        sick = phantom.make_case(np.random.default_rng([7, i]), index=i, finding=kind, max_size=256)
        well = phantom.make_case(np.random.default_rng([7, i]), index=i, finding="none", max_size=256)
        diff = np.abs(apply_modality_lut(sick.dataset.pixel_array, sick.dataset).astype(float)
                      - apply_modality_lut(well.dataset.pixel_array, well.dataset).astype(float))
        top, left, bottom, right = sick.details["box_rc"]
        yy, xx = np.nonzero(diff > 0.25 * diff.max())
        inside = (yy >= top - 2) & (yy < bottom + 2) & (xx >= left - 2) & (xx < right + 2)
        assert inside.mean() > 0.98, (kind, i, inside.mean())
        r, c = sick.details["center_rc"]
        assert top <= r < bottom and left <= c < right
        assert (bottom - top) * (right - left) < 0.4 * diff.size
        assert "box_rc" not in well.details
