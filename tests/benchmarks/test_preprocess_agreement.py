"""benchmarks/preprocess_agreement.py: the runtime's preprocessing changes no triage decision.

An unseen phantom set (a seed no training, calibration or validation set used) goes through the
whole triage twice, with the runtime's preprocessing and with the oracle (implementation 1, what the
embedded bundle was trained and validated with). docs/benchmarks.md reports the same check on 480 files.
"""
from __future__ import annotations

import importlib.util

import pytest

from helpers import ROOT


@pytest.fixture(scope="module")
def agreement():
    spec = importlib.util.spec_from_file_location("preprocess_agreement", ROOT / "benchmarks" / "preprocess_agreement.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_the_fast_path_gives_the_oracle_s_priorities_on_unseen_studies(agreement, tmp_path):
    from edgeinfer import phantom
    from edgeinfer.bundle import default_bundle_path, load_bundle
    from edgeinfer.intake import discover
    from edgeinfer.triage import read_study_labels

    data = tmp_path / "unseen"
    phantom.generate(data, 48, seed=4005, max_size=1024)
    r = agreement.compare(load_bundle(default_bundle_path()), discover([data]), read_study_labels(data / "labels.csv"))
    assert r["runtime_impl"] != r["oracle_impl"]
    assert r["studies"] >= 30 and r["rejections_that_differ"] == []
    assert r["priority_agreement"] == 1.0, r["transitions"]
    assert abs(r["auc_diff"]) <= 0.002
    assert 0 < r["tensor_max_abs_diff"] < 0.5 and r["tensor_mean_abs_diff"] < 0.01
    md = agreement.render(r, str(data))
    assert "priority agreement: 100.0 %" in md


@pytest.mark.slow
def test_jpeg_2000_decoded_smaller_gives_the_oracle_s_priorities(agreement, tmp_path):
    """Full-detector phantoms re-encoded in JPEG 2000: the runtime decodes them at reduced resolution,
    the oracle in full; the same priorities (docs/benchmarks.md reports the same check on 240 files)."""
    from edgeinfer import phantom
    from edgeinfer.bundle import default_bundle_path, load_bundle
    from edgeinfer.dicomio import codecs
    from edgeinfer.intake import discover
    from edgeinfer.triage import read_study_labels

    data = tmp_path / "unseen-j2k"
    phantom.generate(data, 8, seed=4006)
    agreement.reencode(data, "jpeg2000-lossless")
    files = discover([data])
    reduced = []
    real = codecs.decode_j2k_reduced
    with pytest.MonkeyPatch.context() as m:
        m.setattr(codecs, "decode_j2k_reduced", lambda *a: reduced.append(a[1]) or real(*a))
        r = agreement.compare(load_bundle(default_bundle_path()), files, read_study_labels(data / "labels.csv"))
    assert reduced and r["rejections_that_differ"] == [] and r["priority_agreement"] == 1.0, r["transitions"]
    assert 0 < r["tensor_max_abs_diff"] < 0.5


@pytest.mark.slow
@pytest.mark.parametrize("syntax", ["jpeg-baseline", "jpeg-extended"])
def test_lossy_jpeg_by_libjpeg_turbo_gives_the_oracle_s_priorities(agreement, tmp_path, syntax):
    """Full-detector phantoms as lossy JPEG (8 or 12 bits): the runtime decodes them with libjpeg-turbo
    (edgeinfer's plugin), the oracle with pydicom's own plugins (pylibjpeg's libjpeg); their inverse
    DCTs round differently, and the priorities stay the same (docs/benchmarks.md reports 240 files)."""
    import imagecodecs
    from pydicom.uid import JPEGBaseline8Bit

    from edgeinfer import phantom
    from edgeinfer.bundle import default_bundle_path, load_bundle
    from edgeinfer.dicomio import codecs
    from edgeinfer.intake import discover
    from edgeinfer.triage import read_study_labels

    data = tmp_path / f"unseen-{syntax}"
    phantom.generate(data, 6, seed=4007)
    agreement.reencode(data, syntax)
    files = discover([data])
    turbo = []  # for each libjpeg-turbo decode: was it the runtime's (the oracle asks pydicom's plugins)?
    real = imagecodecs.jpeg8_decode
    with pytest.MonkeyPatch.context() as m:
        m.setattr(imagecodecs, "jpeg8_decode",
                  lambda *a, **k: turbo.append(codecs.preferred(JPEGBaseline8Bit) == codecs.PLUGIN) or real(*a, **k))
        r = agreement.compare(load_bundle(default_bundle_path()), files, read_study_labels(data / "labels.csv"))
    assert len(turbo) >= len([f for f in files if f.suffix == ".dcm"]) and all(turbo)
    assert r["rejections_that_differ"] == [] and r["priority_agreement"] == 1.0, r["transitions"]
    assert 0 < r["tensor_max_abs_diff"] < 0.5
