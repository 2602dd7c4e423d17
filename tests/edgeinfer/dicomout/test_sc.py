"""Heatmap Secondary Captures: in the study, a series of their own, the overlay and the banner burned in,
referenced by the SR, valid for dicom3tools, no patient data outside the copied modules."""
from __future__ import annotations

import copy
import datetime as dt
import io
import logging
import subprocess

import numpy as np
import pydicom
import pytest

import peers
from edgeinfer.dicomout import (DEFAULT_RESULTS, SRError, build_heatmap_scs, sc_bytes, sc_uids, write_results)

CANARY = "CANARY^PHI"
NOW = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
SC = "1.2.840.10008.5.1.4.1.1.7"


def _hot_grid(at=(2, 6)):
    g = np.zeros((8, 8))
    g[at] = 3.0
    return g.tolist()


@pytest.fixture
def flagged(triaged):
    """(study record with a heatmap on its first image, sources, bundle, run), deep copies."""
    wl, headers = triaged
    study = copy.deepcopy(next(s for s in wl.studies if len(s["images"]) == 2))
    for img in study["images"]:
        img.pop("heatmaps", None)                # the model's own, if it flagged the study: one known map instead
    img = study["images"][0]
    img["heatmaps"] = [{"label": "mass", "score": 0.97, "grid": _hot_grid(),
                        "input": {"size": [256, 256], "keep_aspect": False}, "peak_rc": [0, 0], "spacing_mm": None}]
    return study, copy.deepcopy(headers[study["study_uid"]]), copy.deepcopy(wl.bundle), copy.deepcopy(wl.run)


def _make(case, **kw):
    study, sources, bundle, run = case
    return build_heatmap_scs(study, sources, bundle=bundle, run=run, version=1, now=NOW, **kw)


def test_one_sc_per_heatmap_in_the_study_in_its_own_series_with_the_overlay_and_banner(flagged, tmp_path):
    (sc,) = _make(flagged)
    ds = pydicom.dcmread(io.BytesIO(sc_bytes(sc)))
    study, sources, bundle, _ = flagged
    source = next(s for s in sources if s.SOPInstanceUID == study["images"][0]["sop_instance_uid"])
    assert ds.SOPClassUID == SC and ds.StudyInstanceUID == study["study_uid"]
    assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == sc_uids(study["study_uid"], 1, bundle["digest"],
                                                                 source.SOPInstanceUID, "mass")
    assert ds.SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources} and ds.SeriesNumber == 9801
    assert ds.PatientName == CANARY and ds.PatientID == source.PatientID      # filed under the right patient
    assert ds.BurnedInAnnotation == "YES" and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    px = ds.pixel_array
    rows, cols = study["images"][0]["source_shape"]
    assert ds.PhotometricInterpretation == "RGB" and px.shape[2] == 3 and px.shape[1] == cols
    band = px.shape[0] - rows
    assert 20 < band < 200, band
    assert (px[:band] > 200).all(axis=2).sum() > 200                  # white text on the black band
    assert (px[:band] == 0).all(axis=2).mean() > 0.7
    image = px[band:].astype(int)
    colour = np.abs(image[:, :, 0] - image[:, :, 2]) > 60             # grey has R == G == B
    ys, xs = np.nonzero(colour)
    assert colour.mean() < 0.1                                         # only around the hot cell
    # cell (2, 6) of 8 x 8 covers rows 2/8..3/8 and columns 6/8..7/8 of the image
    assert 2 / 8 * rows - rows / 8 < ys.mean() < 3 / 8 * rows + rows / 8
    assert 6 / 8 * cols - cols / 8 < xs.mean() < 7 / 8 * cols + cols / 8


def test_dicom3tools_dciodvfy_finds_no_error_in_the_sc_or_the_sr_that_references_it(flagged, tmp_path):
    dciodvfy = peers.require_binary("dciodvfy")   # skips when dicom3tools is missing, fails under CI
    study, sources, bundle, run = flagged
    objects = write_results(DEFAULT_RESULTS, study, sources, bundle=bundle, run=run, version=1)
    assert [o.kind for o in objects] == ["heatmap", "sr"]
    sr = pydicom.dcmread(io.BytesIO(objects[1].data))
    refs = [i for i in _walk(sr.ContentSequence) if i.ValueType == "IMAGE"
            and i.ConceptNameCodeSequence[0].CodeValue == "HEATMAP"]
    assert [r.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for r in refs] == [objects[0].sop_uid]
    assert refs[0].ReferencedSOPSequence[0].ReferencedSOPClassUID == SC
    for obj in objects:
        path = tmp_path / f"{obj.kind}.dcm"
        path.write_bytes(obj.data)
        out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
        text = out.stdout + out.stderr
        assert not [line for line in text.splitlines() if line.startswith("Error")], text


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def test_a_study_without_heatmaps_gets_no_sc_and_an_sr_without_references(flagged):
    study, sources, bundle, run = flagged
    del study["images"][0]["heatmaps"]
    assert _make((study, sources, bundle, run)) == []
    (sr,) = write_results(DEFAULT_RESULTS, study, sources, bundle=bundle, run=run, version=1)
    assert sr.kind == "sr" and b"HEATMAP" not in sr.data


def test_an_image_that_cannot_be_read_again_is_an_sr_error_naming_uids_only(flagged, tmp_path):
    study, *_ = flagged
    study["images"][0]["path"] = str(tmp_path / "CANARY-gone.dcm")
    with pytest.raises(SRError, match="could not be read again for its heatmap") as info:
        _make(flagged)
    assert "CANARY" not in str(info.value)
    # through the writers: the SR still goes (without the reference), the heatmap does not
    study, sources, bundle, run = flagged
    (sr,) = write_results(DEFAULT_RESULTS, study, sources, bundle=bundle, run=run, version=1)
    assert sr.kind == "sr" and b"HEATMAP" not in sr.data


def test_no_patient_data_in_logs(flagged, caplog):
    caplog.set_level(logging.DEBUG)
    _make(flagged)
    assert "CANARY" not in caplog.text and "PHI" not in caplog.text
