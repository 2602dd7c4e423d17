"""A segmentation as a DICOM Segmentation (highdicom ``Segmentation``): binary, one segment per label with a
coded category and type, one frame per source slice (empty frames kept by default, so every viewer lines the
frames up with the slices), in the source study, in a series of its own.

Identity is deterministic, as for the SR: series and instance UIDs are hashes of the study UID, the study
version and the bundle digest (a resend is the same instance). Series Number 9700 + version.

Patient data: highdicom copies the patient and study modules from the source headers (that is what files the
SEG under the right patient); it runs inside ``_library_quiet``, and errors carry UIDs and class names only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, SegmentationStorage

from .. import __version__
from ..dicomio.quiet import _library_quiet
from ..errors import EdgeInferError, SRError
from ..vr import shown_uid, valid_uid
from .codes import _MORPHOLOGICALLY_ABNORMAL, LABEL_CODES
from .common import _lo, _model, _quiet_highdicom, _uid, part10_bytes

SEG_SOP_CLASS = SegmentationStorage
SERIES_NUMBER_BASE = 9700


def seg_uids(study_uid: str, version: int, digest: str, uid_prefix: str = PYDICOM_ROOT_UID) -> tuple[str, str]:
    return (_uid(uid_prefix, study_uid, version, digest, "seg-series"), _uid(uid_prefix, study_uid, version, digest, "seg"))


def build_seg(masks: dict[str, np.ndarray], sources: Sequence[Dataset], *, bundle: dict, version: int,
              keep_empty_frames: bool = True, manufacturer: str = "edgeinfer",
              uid_prefix: str = PYDICOM_ROOT_UID) -> Dataset:
    """The DICOM SEG of ``masks`` (label -> (slices, rows, cols) booleans, slice k on ``sources[k]``, the source
    headers of one series in the order of the volume). SRError (UIDs and class names only) when it cannot be
    built."""
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError:
        raise SRError("building a DICOM SEG needs highdicom: pip install 'highdicom>=0.28'") from None
    _quiet_highdicom()
    if not masks:
        raise SRError("a SEG needs at least one label's mask")
    with _library_quiet():
        study_uid = str(sources[0].get("StudyInstanceUID", "")) if sources else ""
    if not valid_uid(study_uid):
        raise SRError(f"the SEG's source slices have no valid study UID ({shown_uid(study_uid, missing='missing')})")
    shapes = {m.shape for m in masks.values()}
    if len(shapes) != 1 or next(iter(shapes))[0] != len(sources):
        raise SRError(f"study {study_uid}: the masks ({sorted(shapes)}) do not match the {len(sources)} source slices")
    labels = list(masks)
    stack = np.stack([np.asarray(masks[lab], bool) for lab in labels], axis=-1).astype(np.uint8)  # (f, r, c, segs)
    series_uid, sop_uid = seg_uids(study_uid, version, str(bundle.get("digest") or ""), uid_prefix)
    name, bver = _model(bundle)

    def cc(code):
        return hd.sr.CodedConcept(value=code[0], scheme_designator=code[1], meaning=code[2])

    stage = "segments"
    try:
        with _library_quiet():
            algorithm = hd.AlgorithmIdentificationSequence(name=name, version=bver,
                                                           family=codes.cid7162.ArtificialIntelligence)
            segments = [hd.seg.SegmentDescription(
                segment_number=i + 1, segment_label=_lo(lab), segmented_property_category=cc(_MORPHOLOGICALLY_ABNORMAL),
                segmented_property_type=cc(LABEL_CODES.get(str(lab).lower(), LABEL_CODES["hemorrhage"])),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
                for i, lab in enumerate(labels)]
            stage = "segmentation"
            seg = hd.seg.Segmentation(
                source_images=list(sources), pixel_array=stack, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=segments, series_instance_uid=series_uid,
                series_number=SERIES_NUMBER_BASE + version, sop_instance_uid=sop_uid, instance_number=1,
                manufacturer=_lo(manufacturer), manufacturer_model_name=_lo(f"{name} {bver}"),
                software_versions=_lo(f"edgeinfer {__version__}"), device_serial_number="0",
                series_description=f"edgeinfer segmentation v{version}", omit_empty_frames=not keep_empty_frames)
    except EdgeInferError:
        raise
    except Exception as exc:
        raise SRError(f"study {study_uid}: building the SEG failed ({stage}: {type(exc).__name__})") from None
    return seg


def seg_bytes(ds: Dataset) -> bytes:
    return part10_bytes(ds, what="SEG", error=SRError)
