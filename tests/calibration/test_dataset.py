"""Calibration sets: stratified deterministic selection, the runtime's preprocessing, a cache never stale."""
from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from edgeinfer_calibration import CalibrationError
from edgeinfer_calibration.dataset import (STRATUM_FIELDS, TensorReader, allocate, build_calibration_set, plan_selection, scan,
                                 select)
from edgeinfer import dicomio
from edgeinfer.bundle import load_bundle, sha256_file, write_manifest
from edgeinfer.intake import prepare_dataset
from edgeinfer.preprocess import PreprocessSpec


@pytest.fixture(scope="module")
def bundle(model_bundle):
    return load_bundle(model_bundle)


@pytest.fixture(scope="module")
def scanned(cal_dir, bundle):
    return scan(cal_dir, bundle)


# --- allocation (pure) --------------------------------------------------------------------------
@pytest.mark.parametrize("sizes, n", [([5, 1, 1, 10], 4), ([5, 1, 1, 10], 9), ([3, 3], 5), ([7], 3), ([2, 9, 4, 1, 1], 12)])
def test_allocate_covers_every_stratum_then_shares_in_proportion(sizes, n):
    q = allocate(sizes, n)
    assert sum(q) == min(n, sum(sizes))
    assert all(0 <= a <= s for a, s in zip(q, sizes))
    if n >= len(sizes):
        assert all(a >= 1 for a in q)
    # the biggest stratum never gets fewer than a smaller one
    big = max(range(len(sizes)), key=lambda i: sizes[i])
    assert q[big] == max(q)


def test_allocate_fewer_samples_than_strata_takes_the_largest():
    assert allocate([5, 1, 1, 10], 2) == [1, 0, 0, 1]
    assert allocate([1, 1], 0) == [0, 0]
    assert allocate([2, 3], 100) == [2, 3]


# --- scanning and selection ---------------------------------------------------------------------
def test_scan_reads_strata_from_headers_and_lists_what_it_skips(tmp_path, cal_dir, bundle):
    data = tmp_path / "data"
    shutil.copytree(cal_dir, data)
    first = sorted(data.rglob("*.dcm"))[0]
    shutil.copy(first, data / "duplicate.dcm")
    (data / "notes.bin").write_bytes(b"not a dicom file at all" * 10)
    s = scan(data, bundle)
    codes = Counter(x["code"] for x in s.skipped)
    assert codes["ignored"] == 1            # labels.csv
    assert codes["duplicate"] == 1
    assert codes["not-dicom"] == 1
    assert s.n_files == len(s.candidates) + len(s.skipped)
    c = next(c for c in s.candidates if c.sha256 == sha256_file(first))   # kept once, under one of its names
    ds = dicomio.read_dataset(first)
    assert c.stratum.modality == ds.Modality and c.stratum.manufacturer == ds.Manufacturer
    assert c.stratum.photometric == ds.PhotometricInterpretation
    assert c.study_uid == ds.StudyInstanceUID


def test_selection_is_stratified_and_deterministic(scanned):
    strata = scanned.strata()
    assert len(strata) >= 3                  # the phantom mix really has several strata
    n = len(strata) + 2
    a = select(scanned.candidates, n, seed=7)
    b = select(list(reversed(scanned.candidates)), n, seed=7)   # listing order does not matter
    assert [c.sha256 for c in a] == [c.sha256 for c in b]
    assert len(a) == n
    assert {c.stratum for c in a} == set(strata)                 # every stratum represented
    others = {tuple(c.sha256 for c in select(scanned.candidates, n, seed=s)) for s in range(6)}
    assert len(others) > 1                                       # the seed matters


def test_one_image_per_study_before_a_second(scanned):
    plan = plan_selection(scanned.candidates, len(scanned.candidates), seed=1)
    for _, queue in plan.strata.values():
        seen, repeats = set(), False
        for c in queue:
            if c.study_uid in seen:
                repeats = True
            elif repeats:
                pytest.fail("a study's second image came before another study's first")
            seen.add(c.study_uid)


def test_bad_sample_count():
    with pytest.raises(CalibrationError):
        plan_selection([], 0)


# --- building, caching --------------------------------------------------------------------------
def test_tensors_are_the_runtimes_preprocessing(cal_dir, bundle, tmp_path):
    cs = build_calibration_set(cal_dir, bundle, samples=6, seed=2, cache_dir=tmp_path)
    spec = PreprocessSpec.from_manifest(bundle.manifest["preprocessing"])
    assert cs.tensors.shape == (6, 1, *spec.target_size) and cs.tensors.dtype == np.float32
    for t, c in zip(cs.tensors, cs.samples):
        np.testing.assert_array_equal(t, prepare_dataset(dicomio.read_dataset(c.path), spec).tensor)


def test_calibration_manifest(cal_dir, bundle, tmp_path):
    cs = build_calibration_set(cal_dir, bundle, samples=8, seed=2, cache_dir=tmp_path)
    m = json.loads(json.dumps(cs.manifest))   # JSON-ready
    assert m["preprocessing"]["spec_digest"] == PreprocessSpec.from_manifest(bundle.manifest["preprocessing"]).digest()
    assert m["selection"]["samples"] == len(m["files"]) == 8
    assert sum(s["selected"] for s in m["strata"]) == 8
    assert sum(s["available"] for s in m["strata"]) == m["data"]["usable_images"]
    assert all(set(STRATUM_FIELDS) <= set(s) for s in m["strata"])
    for f in m["files"]:
        assert sha256_file(cal_dir / f["path"]) == f["sha256"]


def test_cache_is_reused_and_never_stale(tmp_path, cal_dir, model_bundle):
    data = tmp_path / "data"
    shutil.copytree(cal_dir, data)
    cache = tmp_path / "cache"
    b = load_bundle(model_bundle)
    first = build_calibration_set(data, b, samples=5, seed=4, cache_dir=cache)
    assert not first.from_cache and first.cache_path.is_file()
    again = build_calibration_set(data, b, samples=5, seed=4, cache_dir=cache)
    assert again.from_cache
    np.testing.assert_array_equal(again.tensors, first.tensors)

    # a changed preprocessing spec: another key, the old tensors are not used
    bdir = tmp_path / "bundle"
    shutil.copytree(model_bundle, bdir)
    m = json.loads((bdir / "manifest.json").read_text())
    m["preprocessing"]["normalize"] = {"mean": 0.4, "std": 0.3}
    write_manifest(bdir, m)
    respec = build_calibration_set(data, load_bundle(bdir), samples=5, seed=4, cache_dir=cache)
    assert not respec.from_cache and respec.cache_path != first.cache_path
    assert not np.allclose(respec.tensors, first.tensors)

    # a changed file (same name, other content): another key
    victim = first.samples[0].path
    other = next(p for p in sorted(data.rglob("*.dcm")) if p != victim)
    shutil.copy(other, victim)
    changed = build_calibration_set(data, b, samples=5, seed=4, cache_dir=cache)
    assert not changed.from_cache and changed.manifest["tensor_cache"]["key"] != first.manifest["tensor_cache"]["key"]

    # a cache file whose content does not match its name is rebuilt, not trusted
    np.savez(changed.cache_path, key=np.array("forged"), spec_digest=np.array("x"), sha256=np.array([]),
             tensors=np.zeros((0, 1, 2, 2), np.float32), failed=np.array("[]"))
    rebuilt = build_calibration_set(data, b, samples=5, seed=4, cache_dir=cache)
    assert not rebuilt.from_cache
    np.testing.assert_array_equal(rebuilt.tensors, changed.tensors)


def test_no_usable_images_is_a_clear_error(tmp_path, bundle):
    (tmp_path / "junk.txt").write_text("x")
    (tmp_path / "x.dcm").write_bytes(b"\0" * 300)
    with pytest.raises(CalibrationError, match="no usable image"):
        build_calibration_set(tmp_path, bundle, samples=4, cache_dir=tmp_path / "c")


# --- the reader protocol ------------------------------------------------------------------------
def test_reader_follows_onnxruntimes_protocol():
    from onnxruntime.quantization import CalibrationDataReader

    x = np.arange(10 * 4, dtype=np.float32).reshape(10, 1, 2, 2)
    seen = []
    r = TensorReader(x, "image", batch_size=4, progress=seen.append)
    assert isinstance(r, CalibrationDataReader)
    batches = []
    while (b := r.get_next()) is not None:
        batches.append(b["image"])
    assert [len(b) for b in batches] == [4, 4, 2] and seen == [4, 4, 2] and len(r) == 3
    assert r.get_next() is None
    np.testing.assert_array_equal(np.concatenate(batches), x)
    r.set_range(1, 2)
    assert len(r.get_next()["image"]) == 4 and r.get_next() is None
    r.rewind()
    assert sum(len(b["image"]) for b in r) == 10
    with pytest.raises(CalibrationError):
        TensorReader(np.zeros((0, 1, 2, 2), np.float32), "image")
