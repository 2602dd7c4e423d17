"""Heatmaps as images PACS displays: one DICOM Secondary Capture (highdicom ``SCImage``) per heatmap of a
flagged study, in that study, in a series of its own.

Each is the source image as the model saw it (the bundle's own windowing, through the one preprocessing
implementation, at most :data:`DISPLAY_MAX` pixels on its long side), the class-activation map blended
over it (:func:`edgeinfer.heatmap.colour_overlay`), and a black band above it saying what it is: "AI
HEATMAP - NOT FOR DIAGNOSIS", the label and score, the algorithm's name and version. RGB, 8 bits,
Burned In Annotation YES (the banner is in the pixels), Image Type DERIVED\\SECONDARY.

Identity is deterministic, like the SR's: series and instance UIDs are hashes of the study UID, the study
version, the bundle digest (and the source instance and label), so a resend is the same instance and the
SR can reference the SC without building it (:func:`sc_uids`). Series Number 9800 + version.

Patient data: the patient and study modules are copied from the source header (as in the SR); the text
in the pixels is the label, the score, the bundle's name and version and fixed phrases, never a header
value; log records and errors carry UIDs and counts only.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID

from .. import __version__
from ..dicomio.quiet import _library_quiet
from ..errors import EdgeInferError, InputError, SRError
from ..vr import shown_uid, valid_uid
from .common import (_character_set, _copy_patient_and_study, _image_sources, _lo, _model, _neutral_header,
                     _quiet_highdicom, _uid, part10_bytes)

log = logging.getLogger("edgeinfer.dicomout.sc")

SERIES_NUMBER_BASE = 9800
#: the long side of the image in a heatmap SC, in pixels (a display image, not the source's resolution)
DISPLAY_MAX = 1024


def heatmaps_of(study: dict) -> list[tuple[dict, dict]]:
    """(image record, heatmap) for every heatmap of the study's images, in a stable order."""
    out = []
    for img in sorted(study.get("images") or [], key=lambda i: str(i.get("sop_instance_uid", ""))):
        for heat in img.get("heatmaps") or []:
            if valid_uid(str(img.get("sop_instance_uid", ""))):
                out.append((img, heat))
    return out


def sc_uids(study_uid: str, version: int, digest: str, source_uid: str, label: str,
            uid_prefix: str = PYDICOM_ROOT_UID) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) of the heatmap SC of ``label`` on image ``source_uid``."""
    return (_uid(uid_prefix, study_uid, version, digest, "heatmap-series"),
            _uid(uid_prefix, study_uid, version, digest, "heatmap", source_uid, label))


def _spec(bundle: dict):
    """The bundle's preprocessing spec, from its manifest (the SC shows the image windowed as the model saw it)."""
    from ..preprocess import PreprocessSpec

    try:
        manifest = json.loads((Path(str(bundle.get("path") or "")) / "manifest.json").read_text())
        return PreprocessSpec.from_manifest(manifest["preprocessing"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SRError(f"the heatmap images need the bundle's preprocessing and its manifest could not be read "
                      f"({exc.__class__.__name__})") from None


def banner_lines(heat: dict, bundle: dict) -> list[str]:
    """What a heatmap image says about itself: not for diagnosis, the label and score, the algorithm."""
    from ..heatmap import NOT_FOR_DIAGNOSIS

    name, version = _model(bundle)
    return [NOT_FOR_DIAGNOSIS, f"{_lo(heat['label'])}: score {float(heat['score']):.3f}",
            f"{name} {version} (edgeinfer {__version__}), class-activation map"]


def build_heatmap_scs(study: dict, sources: Sequence[Dataset], *, bundle: dict, run: dict, version: int,
                      manufacturer: str = "edgeinfer", now: _dt.datetime | None = None,
                      uid_prefix: str = PYDICOM_ROOT_UID) -> list[Dataset]:
    """One Secondary Capture per heatmap of ``study`` (a worklist study record whose images carry
    ``heatmaps``; none: an empty list). The pixels are read again from each image's ``path``. SRError (no
    patient data in the message) when an image cannot be read or the object cannot be built."""
    pairs = heatmaps_of(study)
    if not pairs:
        return []
    try:
        import highdicom as hd
    except ImportError:
        raise SRError("building a heatmap image needs highdicom: pip install 'highdicom>=0.28'") from None
    from ..heatmap import render_on_source

    _quiet_highdicom()
    study_uid = str(study.get("study_uid", "")).strip()
    if not valid_uid(study_uid):
        raise SRError(f"study record has no valid study UID ({shown_uid(study_uid, missing='missing')})")
    images = _image_sources(study_uid, sources, what="heatmap image", error=SRError)
    by_uid = {str(d.SOPInstanceUID): d for d in images}
    spec, digest = _spec(bundle), str(bundle.get("digest") or "")
    name, bver = _model(bundle)
    now = now or _dt.datetime.now().astimezone()
    out = []
    for number, (img, heat) in enumerate(pairs, start=1):
        source_uid = str(img["sop_instance_uid"])
        source = by_uid.get(source_uid)
        if source is None:
            raise SRError(f"study {study_uid}: image {source_uid} has a heatmap but no source header")
        try:
            pixels = render_on_source(str(img["path"]), img["source_shape"], heat, spec, max_side=DISPLAY_MAX,
                                      lines=banner_lines(heat, bundle))
        except (InputError, OSError) as exc:
            raise SRError(f"study {study_uid}: image {source_uid} could not be read again for its heatmap "
                          f"({exc.__class__.__name__})") from None
        series_uid, sop_uid = sc_uids(study_uid, version, digest, source_uid, str(heat["label"]), uid_prefix)
        stage = "image"
        try:
            with _library_quiet():
                orientation = _orientation(source)
                sc = hd.sc.SCImage.from_ref_dataset(
                    _neutral_header(source), np.ascontiguousarray(pixels), photometric_interpretation="RGB",
                    bits_allocated=8, coordinate_system="PATIENT", patient_orientation=orientation or ("L", "F"),
                    series_instance_uid=series_uid,
                    series_number=SERIES_NUMBER_BASE + version, sop_instance_uid=sop_uid, instance_number=number,
                    manufacturer=_lo(manufacturer), transfer_syntax_uid="1.2.840.10008.1.2.1",
                    series_description=f"edgeinfer heatmaps v{version}")
                if orientation is None:   # unknown in the source: empty (type 2), not made up
                    sc.PatientOrientation = None
                sc.Laterality = _laterality(source)   # General Series, type 2C: the source's, or empty
                stage = "patient and study modules"
                _copy_patient_and_study(sc, source)
                cs = _character_set(source)
                if cs is not None:
                    sc.SpecificCharacterSet = cs
                sc.ImageType = ["DERIVED", "SECONDARY"]
                sc.BurnedInAnnotation = "YES"
                sc.ConversionType = "WSD"
                sc.SecondaryCaptureDeviceManufacturer = _lo(manufacturer)
                sc.SecondaryCaptureDeviceManufacturerModelName = _lo(f"{name} {bver}")
                sc.SecondaryCaptureDeviceSoftwareVersions = _lo(f"edgeinfer {__version__}")
                sc.DerivationDescription = _lo(f"class-activation map of {heat['label']}")
                sc.ContentDate, sc.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
                sc.InstanceCreationDate, sc.InstanceCreationTime = sc.ContentDate, sc.ContentTime
                src = Dataset()
                src.ReferencedSOPClassUID, src.ReferencedSOPInstanceUID = source.SOPClassUID, source_uid
                sc.SourceImageSequence = [src]
        except EdgeInferError:
            raise
        except Exception as exc:
            raise SRError(f"study {study_uid}: building the heatmap image failed ({stage}: {type(exc).__name__})"
                          ) from None
        out.append(sc)
    log.info("heatmap images built for study %s version %d: %d", study_uid, version, len(out))
    return out


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source image's Patient Orientation (row and column directions), which the SC keeps (it is the same
    image, scaled, with a band above it); None when the source has no usable one."""
    with _library_quiet():
        value = source.get("PatientOrientation")
    try:
        parts = [str(v).strip() for v in value] if value is not None and not isinstance(value, str) else []
    except TypeError:
        return None
    if len(parts) == 2 and all(p and set(p) <= set("APRLHF") for p in parts):
        return parts[0], parts[1]
    return None


def _laterality(source: Dataset) -> str | None:
    with _library_quiet():
        for keyword in ("Laterality", "ImageLaterality"):
            value = str(source.get(keyword, "") or "").strip()
            if value in ("R", "L"):
                return value
    return None


def sc_bytes(ds: Dataset) -> bytes:
    return part10_bytes(ds, what="heatmap image", error=SRError)
