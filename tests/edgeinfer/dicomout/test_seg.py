"""DICOM SEG from a mask volume: one frame per source slice (empty ones kept unless asked), each frame on its
slice's position with its pixels, coded segments, loadable by highdicom, no dciodvfy error."""
from __future__ import annotations

import io
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

import peers
from edgeinfer.dicomout.seg import SEG_SOP_CLASS, build_seg, seg_bytes, seg_uids
from edgeinfer.errors import SRError

BUNDLE = {"name": "ct-bleed", "version": "0.1.0", "digest": "ab" * 32}


@pytest.fixture(scope="module")
def head():
    from edgeinfer.phantom.ct_head import make_head_ct

    ct = make_head_ct(np.random.default_rng([4, 1]), index=1, finding="iph", size=64, thickness=5.0)
    sources = [pydicom.dcmread(io.BytesIO(_part10(d))) for d in ct.datasets]
    return ct, sources


def _part10(ds):
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def test_every_source_slice_has_its_frame_in_place_and_the_seg_is_valid(head, tmp_path):
    ct, sources = head
    seg = build_seg({"iph": ct.mask.astype(bool)}, sources, bundle=BUNDLE, version=2)
    data = seg_bytes(seg)
    path = tmp_path / "seg.dcm"
    path.write_bytes(data)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == SEG_SOP_CLASS and ds.StudyInstanceUID == ct.study_uid and ds.SeriesNumber == 9702
    assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == seg_uids(ct.study_uid, 2, BUNDLE["digest"])
    assert int(ds.NumberOfFrames) == len(sources)                         # empty frames kept
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "274100004"
    frames = ds.pixel_array
    for f, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ipp = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        src = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = next(i for i, s in enumerate(sources) if s.SOPInstanceUID == src)
        assert ipp == pytest.approx([float(v) for v in sources[k].ImagePositionPatient])
        assert np.array_equal(frames[f].astype(bool), ct.mask[k].astype(bool))
    assert type(hd.seg.segread(path)).__name__ == "Segmentation"
    dciodvfy = peers.require_binary("dciodvfy")
    out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    assert not [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")], out.stdout + out.stderr


def test_empty_frames_can_be_left_out_and_bad_input_is_refused(head):
    ct, sources = head
    slim = build_seg({"iph": ct.mask.astype(bool)}, sources, bundle=BUNDLE, version=1, keep_empty_frames=False)
    assert int(slim.NumberOfFrames) == int(ct.mask.any(axis=(1, 2)).sum()) < len(sources)
    with pytest.raises(SRError, match="do not match the"):
        build_seg({"iph": ct.mask[:-1].astype(bool)}, sources, bundle=BUNDLE, version=1)
    with pytest.raises(SRError, match="at least one label"):
        build_seg({}, sources, bundle=BUNDLE, version=1)
