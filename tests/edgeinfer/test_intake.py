"""The one intake stage: discovery, ignore rules, applicability, and read -> decode -> preprocess."""
import os
import shutil
import threading
import time

import numpy as np
import pydicom
import pytest

from edgeinfer import dicomio
from edgeinfer.bundle import load_bundle
from edgeinfer.errors import NotApplicable
from edgeinfer.intake import (NO_STUDY_UID, Image, Intake, Rejection, applicability, discover, ignored,
                              prepare_dataset, study_uid)
from edgeinfer.preprocess import PreprocessSpec


@pytest.fixture
def intake(tiny_bundle):
    return Intake.for_bundle(load_bundle(tiny_bundle))


def test_take_gives_an_image_with_stage_timings_or_a_reason_never_raises(intake, phantom_dir, corpus_dir, tmp_path):
    d = tmp_path / "in"
    shutil.copytree(phantom_dir, d)
    (d / "junk.dcm").write_bytes(b"\x00" * 300)
    shutil.copy(corpus_dir / "CT_small.dcm", d / "ct.dcm")
    outcomes = {p.name: intake.take(p) for p in discover([d])}
    images = [o for o in outcomes.values() if isinstance(o, Image)]
    assert images and all(set(i.timings_ms) == {"read", "decode", "preprocess"} for i in images)
    assert all(i.tensor.shape == (1, *intake.spec.target_size) and i.tensor.dtype == np.float32 for i in images)
    assert outcomes["labels.csv"] == Rejection(d / "labels.csv", True, "ignored", "ignored (name matches *.csv)")
    assert outcomes["ct.dcm"].skipped and outcomes["ct.dcm"].code == "not-applicable"
    junk = outcomes["junk.dcm"]
    assert not junk.skipped and junk.record()["path"] == str(d / "junk.dcm") and junk.reason


def test_a_failed_image_keeps_its_study_for_a_human_read(intake, phantom_dir, tmp_path):
    src = next(p for p in sorted(phantom_dir.rglob("*.dcm")) if "RLE" not in p.name)
    data = src.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 5000])  # header intact, pixels short
    out = intake.take(tmp_path / "cut.dcm")
    assert isinstance(out, Rejection) and not out.skipped
    assert out.study_uid == str(pydicom.dcmread(src, stop_before_pixels=True).StudyInstanceUID)
    assert out.record()["study_uid"] == out.study_uid


def test_header_then_prepare_equals_read_and_prepare_dataset(intake, phantom_dir):
    f = sorted(phantom_dir.rglob("*.dcm"))[0]
    whole = intake.read(f)
    staged = intake.prepare(intake.header(f), f)
    one_off = prepare_dataset(dicomio.read_dataset(f), intake.spec)
    np.testing.assert_array_equal(whole.tensor, staged.tensor)
    np.testing.assert_array_equal(whole.tensor, one_off.tensor)
    assert whole.study_uid == staged.study_uid == study_uid(whole.ds)


def test_applicability_names_the_rule_without_echoing_header_text():
    rules = {"modalities": ["DX", "CR"], "body_parts": ["CHEST"], "photometric": ["MONOCHROME1", "MONOCHROME2"]}
    ds = pydicom.Dataset()
    ds.Modality, ds.BodyPartExamined, ds.PhotometricInterpretation = "DX", "CHEST", "MONOCHROME2"
    assert applicability(ds, rules, "m") is None
    ds.BodyPartExamined = "ABC123XYZ"
    assert applicability(ds, rules, "m") == "body part <unlisted CS> is not handled by m (it reads CHEST)"
    ds.BodyPartExamined, ds.Modality = "CHEST", "CT"
    assert applicability(ds, rules, "m") == "modality CT is not handled by m (it reads DX, CR)"
    ds.Modality, ds.PhotometricInterpretation = "DX", "RGB"
    assert "photometric interpretation RGB" in applicability(ds, rules, "m")


def test_header_raises_not_applicable_and_rules_are_optional(phantom_dir, tiny_bundle):
    f = sorted(phantom_dir.rglob("*.dcm"))[0]
    spec = PreprocessSpec.from_manifest(load_bundle(tiny_bundle).manifest["preprocessing"])
    with pytest.raises(NotApplicable, match="modality"):
        Intake(spec, applies_to={"modalities": ["MR"]}, name="m").header(f)
    assert isinstance(Intake(spec).take(f), Image)  # no rules: every image


def test_study_uid_fallback_and_ignore_patterns(tmp_path):
    assert study_uid(pydicom.Dataset()) == NO_STUDY_UID
    assert ignored(tmp_path / ".hidden.dcm", (".*",)) == ".*"
    assert ignored(tmp_path / "a.dcm", ("*.csv",)) is None


# --- the stream: intake working ahead of inference ----------------------------------------------
def _mixed(phantom_dir, corpus_dir, tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"DICM" * 10)
    files = discover([phantom_dir])[:12] + [bad, tmp_path / "gone.dcm", corpus_dir / "CT_small.dcm"]
    return files


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_stream_gives_what_take_gives_in_order(intake, phantom_dir, corpus_dir, tmp_path, workers):
    files = _mixed(phantom_dir, corpus_dir, tmp_path)
    want = [intake.take(f) for f in files]
    got = list(intake.stream(files, workers=workers))
    assert [type(o) for o in got] == [type(o) for o in want]
    for g, w in zip(got, want):
        if isinstance(w, Image):
            assert g.path == w.path
            np.testing.assert_array_equal(g.tensor, w.tensor)
        else:
            assert (g.path, g.code, g.reason) == (w.path, w.code, w.reason)


def test_stream_keeps_a_bounded_number_in_flight(intake, phantom_dir, monkeypatch):
    files = discover([phantom_dir])
    taken, lock = [], threading.Lock()
    real = intake.take

    def counting(path):
        with lock:
            taken.append(path)
        return real(path)

    monkeypatch.setattr(intake, "take", counting)
    stream = intake.stream(files, workers=2, ahead=3)
    first = next(stream)
    assert first.path == files[0]
    time.sleep(0.5)  # the pool has had time to run ahead as far as it may
    assert len(taken) <= 1 + 3  # the one consumed and at most three ahead
    stream.close()  # a consumer that stops early: nothing more is started
    n = len(taken)
    time.sleep(0.3)
    assert len(taken) == n and n < len(files)


def test_stream_in_processes_gives_what_take_gives(intake, phantom_dir, corpus_dir, tmp_path):
    files = _mixed(phantom_dir, corpus_dir, tmp_path)
    want = [intake.take(f) for f in files]
    got = list(intake.stream(files, workers=2, processes=True))
    assert [type(o) for o in got] == [type(o) for o in want]
    for g, w in zip(got, want):
        if isinstance(w, Image):
            assert g.path == w.path and g.study_uid == w.study_uid and g.notes == w.notes
            np.testing.assert_array_equal(g.tensor, w.tensor)
            assert "PixelData" not in g.ds  # the tensor travels back, not the pixels
        else:
            assert (g.path, g.code, g.reason) == (w.path, w.code, w.reason)


def test_a_pool_serves_stream_after_stream_and_belongs_to_its_intake(intake, phantom_dir, corpus_dir, tmp_path):
    """Processes start once (warm) and serve every stream; a stream leaves the pool running."""
    files = _mixed(phantom_dir, corpus_dir, tmp_path)
    want = [intake.take(f) for f in files]
    with intake.pool(2, processes=True) as pool:
        pool.warm()
        executor = pool.executor
        for _ in range(2):
            got = list(intake.stream(files, pool=pool))
            assert [(type(o), o.path) for o in got] == [(type(o), o.path) for o in want]
            for g, w in zip(got, want):
                if isinstance(w, Image):
                    np.testing.assert_array_equal(g.tensor, w.tensor)
        assert pool.executor is executor  # the same processes, never restarted
        with pytest.raises(ValueError, match="another Intake"):
            next(Intake(intake.spec).stream(files, pool=pool))
    with pytest.raises(RuntimeError):  # closed with the block
        pool.executor.submit(len, "x")


def test_a_pool_whose_worker_was_killed_while_idle_starts_afresh(intake, phantom_dir):
    """A worker killed between streams (the OOM killer, an operator) breaks the executor; the next stream
    of a kept pool (the node's) gets a fresh one instead of failing on its first file."""
    import signal

    files = [f for f in discover([phantom_dir]) if f.suffix == ".dcm"][:3]
    with intake.pool(1, processes=True) as pool:
        pool.warm()
        assert all(isinstance(o, Image) for o in intake.stream(files, pool=pool))
        broken = pool.executor
        for pid in list(broken._processes):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not broken._broken and time.monotonic() < deadline:  # the executor notices the death
            time.sleep(0.02)
        assert broken._broken
        got = list(intake.stream(files, pool=pool))
        assert [o.path for o in got] == files and all(isinstance(o, Image) for o in got)
        assert pool.executor is not broken


def test_a_worker_that_dies_costs_its_file_only(intake, phantom_dir, tmp_path):
    from helpers import DyingIntake

    files = [f for f in discover([phantom_dir]) if f.suffix == ".dcm"][:6]
    die = tmp_path / "die.dcm"
    shutil.copy(files[0], die)
    order = files[:3] + [die] + files[3:]
    got = list(DyingIntake.of(intake).stream(order, workers=2, processes=True))
    assert [o.path for o in got] == order
    dead = got[3]
    assert isinstance(dead, Rejection) and dead.code == "worker-died" and "decoder crashed" in dead.reason
    assert dead.study_uid == str(pydicom.dcmread(die, stop_before_pixels=True).StudyInstanceUID)  # a human read
    assert all(isinstance(o, Image) for i, o in enumerate(got) if i != 3)


def test_workers_that_cannot_run_at_all_raise(intake, phantom_dir, tmp_path):
    from edgeinfer.errors import EdgeInferError
    from helpers import DyingIntake

    src = next(f for f in discover([phantom_dir]) if f.suffix == ".dcm")
    files = []
    for i in range(5):
        files.append(tmp_path / f"die{i}.dcm")
        shutil.copy(src, files[-1])
    with pytest.raises(EdgeInferError, match="died on 3 files in a row"):
        list(DyingIntake.of(intake).stream(files, workers=2, processes=True))


def test_a_large_jpeg_2000_image_is_decoded_smaller_and_prepared_as_the_full_one(tmp_path, monkeypatch):
    """The intake asks for the size its preprocessing averages to (twice that): a 2400 x 2048 JPEG 2000
    image for a 256 x 256 model decodes at 1200 x 1024, and its tensor stays within the halving bound of
    the full decode's (test_preprocess_fast.py holds the bound on more cases)."""
    from pydicom.uid import JPEG2000Lossless

    from edgeinfer import phantom
    from edgeinfer.dicomio import codecs
    from edgeinfer.phantom.dicom import compress

    [case] = phantom._make_study(np.random.default_rng(7), index=0, n_images=1, size=(2400, 2048),
                                 plan={"compress": False, "modality": "DX", "photometric": "MONOCHROME2",
                                       "bits": 12, "voi": "window"})
    ds = case.dataset
    compress(ds, JPEG2000Lossless, ds.pixel_array)
    ds.save_as(tmp_path / "j2k.dcm")
    intake = Intake(PreprocessSpec(target_size=(256, 256), mean=0.5, std=0.25))
    shapes = []
    real = codecs.decode_j2k_reduced
    monkeypatch.setattr(codecs, "decode_j2k_reduced", lambda *a: shapes.append(real(*a).shape) or real(*a))
    small = intake.take(tmp_path / "j2k.dcm")
    assert shapes == [(1200, 1024)] and small.prepared.source_shape == (2400, 2048)
    monkeypatch.setattr(codecs, "reduced_decoder_available", lambda: False)
    full = intake.take(tmp_path / "j2k.dcm")
    assert shapes == [(1200, 1024)] and small.prepared.window == full.prepared.window
    assert np.abs(small.prepared.display - full.prepared.display).max() <= 0.05
