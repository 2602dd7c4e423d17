"""Triage with the embedded head-CT segmentation bundle: a study's series read as a volume, segmented with the
real exported U-Net, measured in mL and ranked by volume; every awkward series with its stated outcome at the
worklist; every file accounted for; the SEG and the SR built from the study record alone, valid for dciodvfy,
the SEG's frames on the source slices with the record's mask."""
from __future__ import annotations

import io
import json
import subprocess

import highdicom as hd
import jsonschema
import numpy as np
import pydicom
import pytest

import peers
from edgeinfer.backends import create_runner
from edgeinfer.bundle import load_bundle
from edgeinfer.dicomout import source_header, write_results
from edgeinfer.errors import InferenceError
from edgeinfer.evaluation import dice
from edgeinfer.intake import discover
from edgeinfer.phantom.ct_head import AWKWARD, awkward_series, make_head_ct
from edgeinfer.segmentation import unpack_mask
from edgeinfer.triage import engine_for
from edgeinfer.volume_triage import VolumeTriageEngine
from helpers import ROOT


@pytest.fixture(scope="module")
def bundle():
    return load_bundle("phantom-ct-head")


@pytest.fixture(scope="module")
def runner(bundle):
    with create_runner(bundle.artifact(precision="fp32")) as r:
        yield r


@pytest.fixture(scope="module")
def bleed():
    """A 5 mm head CT with an intraparenchymal bleed of several mL, and one without."""
    return (make_head_ct(np.random.default_rng([23, 5]), index=1, finding="iph", thickness=5.0),
            make_head_ct(np.random.default_rng([23, 6]), index=2, finding="none", thickness=5.0))


def _write(datasets, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for k, ds in enumerate(datasets):
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    return folder


def _triage(bundle, runner, *folders):
    engine = engine_for(bundle, runner)
    assert isinstance(engine, VolumeTriageEngine)
    files = discover([str(f) for f in folders])
    wl = engine.run(files)
    assert wl.summary["files"] == len(files)          # every file exactly once (the engine checks it too)
    return wl


def test_a_bleed_is_segmented_measured_and_ranked_and_a_normal_head_is_routine(bundle, runner, bleed, tmp_path):
    sick, well = bleed
    wl = _triage(bundle, runner, _write(sick.datasets, tmp_path / "sick"), _write(well.datasets, tmp_path / "well"))
    by_uid = {s["study_uid"]: s for s in wl.studies}
    s, w = by_uid[sick.study_uid], by_uid[well.study_uid]
    assert sick.volume_ml > 2 and s["priority"] == "STAT" and w["priority"] == "ROUTINE"
    assert wl.studies[0] is s                                           # the bleed heads the worklist
    assert s["volumes_ml"]["hemorrhage"] == pytest.approx(sick.volume_ml, rel=0.3)
    assert w["volumes_ml"]["hemorrhage"] < 0.1
    mask = unpack_mask(s["segmentation"]["mask"])
    assert mask.shape == (1, *sick.mask.shape)                          # one frame per source slice, source size
    assert dice(mask[0], sick.mask) > 0.7
    assert [i["sop_instance_uid"] for i in s["images"]] == [str(d.SOPInstanceUID) for d in sick.datasets]
    assert all(i["status"] == "ok" for i in s["images"]) and s["score"] > 0.9
    assert s["segmentation"]["voxel_mm"] == pytest.approx([5.0, sick.spacing, sick.spacing], rel=1e-3)
    schema = json.loads((ROOT / "edgeinfer" / "schema" / "worklist-v1.schema.json").read_text())
    jsonschema.validate(json.loads(json.dumps(wl.as_dict())), schema)


@pytest.mark.parametrize("kind", sorted(AWKWARD))
def test_each_awkward_series_has_its_stated_outcome_on_the_worklist(bundle, runner, bleed, tmp_path, kind):
    sick = bleed[0]
    made = awkward_series(sick, kind, np.random.default_rng(7))
    series = sick.datasets + made if kind in ("scout", "bone") else made
    wl = _triage(bundle, runner, _write(series, tmp_path / kind))
    (s,) = wl.studies
    codes = [x["code"] for x in wl.skipped]
    if kind in ("tilt", "mixed"):                      # refused with the reason, to a human read
        assert s["priority"] == "INDETERMINATE" and not s["images"] and len(s["failed_images"]) == len(series)
        assert {e["code"] for e in wl.errors} == {"series-geometry"}
        assert ("gantry tilt" if kind == "tilt" else "mixes image orientations") in s["reason"]
        return
    assert s["priority"] == "STAT" and s["segmentation"]["series_uid"] == sick.series_uid
    if kind in ("scout", "bone"):                      # passed over, each of its files said so
        assert codes == ["series-passed-over"] * len(made)
        assert ("localizer" if kind == "scout" else "'bone' reconstruction") in wl.skipped[0]["reason"]
        assert len(s["images"]) == len(sick.datasets)
    elif kind == "missing":                            # the volume is made and the gap is said
        assert len(s["images"]) == len(sick.datasets) - 1 and "gap" in " ".join(s["segmentation"]["notes"])
    elif kind == "duplicate":                          # one kept, the other listed
        assert codes == ["duplicate-slice"] and len(s["images"]) == len(sick.datasets)
    else:                                              # shuffled: back in order along the normal
        assert [i["sop_instance_uid"] for i in s["images"]] == [str(d.SOPInstanceUID) for d in sick.datasets]


def test_a_study_with_only_a_scout_goes_to_a_human_read_saying_why(bundle, runner, bleed, tmp_path):
    scout = awkward_series(bleed[0], "scout", np.random.default_rng(2))
    wl = _triage(bundle, runner, _write(scout, tmp_path / "scout"))
    (s,) = wl.studies
    assert s["priority"] == "INDETERMINATE" and "no series of the study fits the model" in s["reason"]
    assert "localizer" in s["reason"] and [x["code"] for x in wl.skipped] == ["series-passed-over"]


def test_a_model_that_fails_makes_the_study_a_human_read_not_routine(bundle, bleed, tmp_path):
    class Broken:
        activate_ms = 0.0

        def report(self):
            return type("R", (), {"as_dict": lambda self: {"precision": "fp32", "sha256": "x", "backend": "test",
                                                           "provider": "test"}})()

        def infer(self, feeds):
            raise InferenceError("the device went away")

    wl = _triage(bundle, Broken(), _write(bleed[0].datasets, tmp_path / "s"))
    (s,) = wl.studies
    assert s["priority"] == "INDETERMINATE" and s["score"] is None and "segmentation" not in s
    assert {i["status"] for i in s["images"]} == {"indeterminate"}


def test_the_seg_and_the_sr_come_from_the_record_and_are_valid(bundle, runner, bleed, tmp_path):
    sick = bleed[0]
    folder = _write(sick.datasets, tmp_path / "sick")
    wl = _triage(bundle, runner, folder)
    (s,) = wl.studies
    sources = [source_header(i["path"]) for i in s["images"]]
    objects = write_results(("sr", "heatmaps", "seg"), s, sources, bundle=wl.bundle, run=wl.run, version=1)
    assert [o.kind for o in objects] == ["seg", "sr"]
    seg_obj, sr_obj = objects
    dciodvfy = peers.require_binary("dciodvfy")
    for o in objects:
        path = tmp_path / f"{o.kind}.dcm"
        path.write_bytes(o.data)
        out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
        assert not [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")], out.stderr[-2000:]
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(seg_obj.data)))
    assert seg.SeriesInstanceUID == seg_obj.series_uid and int(seg.NumberOfFrames) == len(sick.datasets)
    mask = unpack_mask(s["segmentation"]["mask"])[0]
    uids = [str(d.SOPInstanceUID) for d in sick.datasets]
    frames = seg.pixel_array.astype(bool)
    seen = set()
    for f, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):       # each frame on its slice, its pixels
        k = uids.index(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        seen.add(k)
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
            [float(v) for v in sick.datasets[k].ImagePositionPatient])
        assert (frames[f] == mask[k]).all()
    assert seen == set(range(len(uids))) and mask.any()
    sr = pydicom.dcmread(io.BytesIO(sr_obj.data))
    text = str(sr)
    assert "Volume" in text and seg_obj.sop_uid in text and "milliliter" in text
