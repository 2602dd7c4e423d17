"""A study's triage result as a DICOM Structured Report, sent back into the same study.

The document is a TID 1500 "Imaging Measurement Report" in a Comprehensive SR (88.33): every
value type used here (CONTAINER, CODE, NUM, TEXT, UIDREF, IMAGE) fits it, it has no 3D
coordinates (so Comprehensive 3D SR buys nothing), and more archives and viewers accept it.
Built with highdicom:

* observation context: a device observer (TID 1004): edgeinfer, the bundle as model name;
* procedure reported: (363679005, SCT, "Imaging procedure") from CID 100;
* an image library (TID 1600) with one IMAGE item per source image, grouped by series;
* one measurement group (TID 1501) holding the algorithm identification (TID 4019: bundle name,
  version, and digest/precision/backend as parameters), the study score and one probability per
  label (TID 300, unit ``{probability}`` UCUM; per label the maximum over the study's analysed
  images, derivation (56851009, SCT, "Maximum")), the triage
  priority (CODE), and, when a human has to read the study, a "Recommended Follow-up" CODE plus a
  TEXT giving the reason.

Codes: SNOMED CT where a standard one is obvious (:data:`.codes.LABEL_CODES`, SCT "Priority"), DCM
"Recommended Follow-up", and the private scheme ``99EDGEINFER`` (declared in the Coding Scheme
Identification Sequence) for the priorities, the study score, the human-read concepts and any
label without a standard code.

Identity is deterministic: series and instance UIDs are hashes of the study UID, the study
version and the bundle digest, so a resend after a crash is the same instance (the archive keeps
one) and a new version or a new model is a new instance in a new series (Series Number 9900 +
version).

Patient data: the patient and study modules are copied from the source headers into the SR
(that is what files it under the right patient). Nothing else here carries them: free text is
made of UIDs, bundle name/version, numbers and fixed phrases (the study record's ``reason`` and
paths are not copied; the reason is rebuilt from counts), and log records and exception messages
carry UIDs, counts and exception class names only. Library warnings and log records (pydicom and
highdicom echo values, names among them) are dropped while the document is built and encoded.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
from typing import Any, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, SecondaryCaptureImageStorage, SegmentationStorage

from .. import __version__
from ..dicomio.quiet import _library_quiet
from ..errors import EdgeInferError, SRError
from ..worklist import INDETERMINATE
from ..vr import shown_uid, valid_uid
from .codes import (_DCM_FOLLOW_UP, _HEATMAP, _HUMAN_READ, _MAXIMUM, _ML_UNIT, _MORPHOLOGICALLY_ABNORMAL,
                    _PROBABILITY_UNIT, _PROCEDURE, _REASON, _SCT_PRIORITY, _SOURCE, _STUDY_SCORE, _VOLUME, _coding_scheme,
                    _private_code, label_code, priority_code)
from .common import (_character_set, _copy_patient_and_study, _image_sources, _lo, _neutral_header,
                     _quiet_highdicom, _uid, part10_bytes)

log = logging.getLogger("edgeinfer.dicomout.sr")

SC_SOP_CLASS = SecondaryCaptureImageStorage   # the heatmaps
SEG_SOP_CLASS = SegmentationStorage            # the segmentation whose volumes the SR reports

SERIES_NUMBER_BASE = 9900


# --- public -----------------------------------------------------------------------------------
def build_sr(study: dict, sources: Sequence[Dataset], *, bundle: dict, run: dict, version: int,
             manufacturer: str = "edgeinfer", now: _dt.datetime | None = None,
             device_uid: str | None = None, uid_prefix: str = PYDICOM_ROOT_UID,
             heatmaps: Sequence[tuple[str, str]] = (), segmentation: tuple[str, str] | None = None) -> Dataset:
    """The triage result of one study as a TID 1500 Comprehensive SR in that study.

    ``study``: a study record of the triage worklist; ``sources``: the headers (pixel data may be
    present; it is not read) of the study's source images, from which the patient and study modules
    are copied (sources of another study and non-image instances are left out); ``bundle``:
    ``Bundle.summary()``; ``run``: the runner report; ``version``: the study version (1, 2, ...).
    ``now``: content date/time (default: the current local time); ``device_uid``: the observer
    device UID (default: derived from the manufacturer and the bundle); ``uid_prefix``: root of the
    generated UIDs; ``heatmaps``: (Series, SOP Instance UID) of the heatmap Secondary Captures sent with it
    (one IMAGE item each in the measurement group, listed as evidence); ``segmentation``: (Series, SOP Instance
    UID) of the DICOM SEG sent with it: each label's volume (the record's ``volumes_ml``) becomes a volumetric
    measurement group (TID 1411) referencing that label's segment. Raises :class:`SRError` (no patient data in
    the message).
    """
    try:
        import highdicom as hd
    except ImportError:
        raise SRError("building a DICOM SR needs highdicom: pip install 'highdicom>=0.28'") from None
    from pydicom.sr.codedict import codes

    _quiet_highdicom()
    study_uid = str(study.get("study_uid", "")).strip()
    if not valid_uid(study_uid):
        raise SRError(f"study record has no valid study UID ({shown_uid(study_uid, missing='missing')})")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SRError(f"study {study_uid}: version must be a positive integer, got {version!r}")
    digest = str(bundle.get("digest") or "")
    try:
        images = _image_sources(study_uid, sources, what="SR", error=SRError)
    except EdgeInferError:
        raise
    except Exception as exc:   # a malformed header element: pydicom's message may quote its value
        raise SRError(f"study {study_uid}: a source header could not be read ({type(exc).__name__})") from None
    missing = {i.get("sop_instance_uid") for i in study.get("images") or []} - {str(d.SOPInstanceUID) for d in images}
    if missing:
        log.warning("study %s: %d scored image(s) have no source header; the SR does not reference them",
                    study_uid, len(missing))
    now = now or _dt.datetime.now().astimezone()

    series_uid = _uid(uid_prefix, study_uid, version, digest, "series")
    sop_uid = _uid(uid_prefix, study_uid, version, digest, "sr")
    tracking_uid = _uid(uid_prefix, study_uid, version, digest, "tracking")
    if device_uid is None:
        device_uid = _uid(uid_prefix, manufacturer, bundle.get("name"), bundle.get("version"), digest, "device")
    elif not valid_uid(device_uid):
        raise SRError("device_uid is not a valid UID")

    stage = "content"
    try:
        with _library_quiet() as caught:
            report = _report(hd, codes, study, images, bundle=bundle, run=run, version=version,
                             manufacturer=manufacturer, device_uid=device_uid, tracking_uid=tracking_uid,
                             heatmaps=heatmaps, segmentation=segmentation, uid_prefix=uid_prefix)
            stage = "document"
            # highdicom reads the patient/study values of evidence[0] in its constructor (and echoes
            # some in warnings or errors): give it a neutral stand-in, then copy the real modules
            stand_in = _neutral_header(images[0])
            sr = hd.sr.ComprehensiveSR(
                evidence=[stand_in, *images[1:], *(_evidence(study_uid, series, uid) for series, uid in heatmaps),
                          *([_evidence(study_uid, *segmentation, SEG_SOP_CLASS)] if segmentation else [])],
                content=report,
                series_instance_uid=series_uid,
                series_number=SERIES_NUMBER_BASE + version,
                sop_instance_uid=sop_uid,
                instance_number=1,
                manufacturer=_lo(manufacturer),
                is_complete=_complete(study),
                is_final=False,      # a machine triage, never the final report
                is_verified=False,
                manufacturer_model_name="edgeinfer serve",
                software_versions=[_lo(f"edgeinfer {__version__}"),
                                   _lo(f"{bundle.get('name', '')} {bundle.get('version', '')}")],
                series_description=f"edgeinfer triage v{version}",
                coding_schemes=[_coding_scheme(hd, manufacturer)],
                content_date=now.date(),
                content_time=now.time().replace(tzinfo=None),
                series_date=now.date(),
                series_time=now.time().replace(tzinfo=None),
                specific_character_set=_character_set(images[0]),
            )
            stage = "patient and study modules"
            _copy_patient_and_study(sr, images[0])
            sr.InstanceCreationDate = now.strftime("%Y%m%d")
            sr.InstanceCreationTime = now.strftime("%H%M%S")
            if now.utcoffset() is not None:
                sr.TimezoneOffsetFromUTC = now.strftime("%z")
            for item in sr.get("ContributingEquipmentSequence", []):   # highdicom itself, stamped "now"
                if "ContributionDateTime" in item:
                    item.ContributionDateTime = now.strftime("%Y%m%d%H%M%S%z")
    except EdgeInferError:
        raise
    except Exception as exc:
        raise SRError(f"study {study_uid}: building the SR failed ({stage}: {type(exc).__name__})") from None
    if caught:
        log.debug("study %s: %d library warning(s) dropped while building the SR", study_uid, len(caught))
    log.info("SR built for study %s version %d: SOP instance %s, %d source image(s)",
             study_uid, version, sop_uid, len(images))
    return sr


def _evidence(study_uid: str, series_uid: str, sop_uid: str, sop_class: str = SC_SOP_CLASS) -> Dataset:
    """What the SR lists as evidence for an object of ours it references (a heatmap image, the SEG; no patient
    data: it is ours)."""
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, sop_uid
    ds.SOPClassUID = sop_class
    return ds


def sr_bytes(ds: Dataset) -> bytes:
    """The Part 10 encoding of ``ds`` (preamble, file meta, Explicit VR Little Endian)."""
    return part10_bytes(ds, what="SR", error=SRError)


def sr_uids(study_uid: str, version: int, digest: str, uid_prefix: str = PYDICOM_ROOT_UID) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) that :func:`build_sr` gives this study version."""
    return (_uid(uid_prefix, study_uid, version, digest, "series"), _uid(uid_prefix, study_uid, version, digest, "sr"))


# --- content -----------------------------------------------------------------------------------
def _report(hd, codes, study: dict, images: list[Dataset], *, bundle: dict, run: dict, version: int,
            manufacturer: str, device_uid: str, tracking_uid: str, heatmaps: Sequence[tuple[str, str]] = (),
            segmentation: tuple[str, str] | None = None, uid_prefix: str = PYDICOM_ROOT_UID):
    def cc(code: tuple[str, str, str]):
        return hd.sr.CodedConcept(value=code[0], scheme_designator=code[1], meaning=code[2])

    model = study.get("model") or {}
    bundle_name = _lo(str(bundle.get("name") or model.get("bundle") or "model"))
    bundle_version = _lo(str(bundle.get("version") or model.get("bundle_version") or "unknown"))
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid, name="edgeinfer", manufacturer_name=_lo(manufacturer),
        model_name=_lo(f"{bundle_name} {bundle_version}"))
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.DCM.Device,
                                                      observer_identifying_attributes=device))

    params = [f"bundle digest sha256:{bundle.get('digest') or 'unknown'}"]
    for key, label in (("sha256", "artifact sha256:"), ("precision", "precision "), ("backend", "backend "),
                       ("provider", "provider ")):
        value = run.get(key) or model.get(key)
        if value:
            params.append(f"{label}{value}")
    sig = bundle.get("signature") or {}
    params.append("bundle signature verified" if sig.get("verified") else "bundle signature not verified")
    params.append(f"edgeinfer {__version__}")
    algorithm = hd.sr.AlgorithmIdentification(name=bundle_name, version=bundle_version, parameters=params,
                                              manufacturer=_lo(manufacturer))

    unit = cc(_PROBABILITY_UNIT)
    measurements = []
    score = _probability(study.get("score"))
    if score is not None:
        measurements.append(hd.sr.Measurement(name=cc(_STUDY_SCORE), value=score, unit=unit))
    used: set[tuple[str, str]] = set()
    for label, value in _label_maxima(study).items():
        code = label_code(label)
        if code[:2] in used:      # two labels sanitised to one private code value: hash the later one
            code = _private_code("L", str(label), code[2], hashed=True)
        used.add(code[:2])
        measurements.append(hd.sr.Measurement(name=cc(code), value=value, unit=unit, derivation=cc(_MAXIMUM)))

    priority = str(study.get("priority") or INDETERMINATE)
    evaluations = [hd.sr.QualitativeEvaluation(name=cc(_SCT_PRIORITY), value=cc(priority_code(priority)))]
    reason = _human_read_reason(study)
    if reason is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(name=cc(_DCM_FOLLOW_UP), value=cc(_HUMAN_READ)))

    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=f"edgeinfer triage v{version}"),
        algorithm_id=algorithm,
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
    )
    if reason is not None:   # TID 1501 allows TEXT qualitative evaluations; highdicom only builds CODE ones
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=cc(_REASON), value=reason, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))

    for _, uid in heatmaps:   # the heatmap images sent with this SR (edgeinfer/dicomout/sc.py)
        group[0].ContentSequence.append(hd.sr.ImageContentItem(
            name=cc(_HEATMAP), referenced_sop_class_uid=SC_SOP_CLASS, referenced_sop_instance_uid=uid,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))

    groups = [group]
    seg_record = study.get("segmentation") or {}
    volumes = study.get("volumes_ml") or {}
    if segmentation is not None:   # one volumetric group (TID 1411) per label, on its segment of the SEG
        series_uid = str(seg_record.get("series_uid") or "")
        for number, label in enumerate(seg_record.get("labels") or [], start=1):
            ml = volumes.get(label)
            if ml is None or not math.isfinite(float(ml)):
                continue
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(uid_prefix, tracking_uid, label, "segment"),
                                                             identifier=_lo(f"{label} segment {number}")),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=SEG_SOP_CLASS, sop_instance_uid=segmentation[1], segment_number=number,
                    source_series=hd.sr.SourceSeriesForSegmentation(series_uid)),
                finding_type=cc(label_code(label)), finding_category=cc(_MORPHOLOGICALLY_ABNORMAL),
                algorithm_id=algorithm,
                measurements=[hd.sr.Measurement(name=cc(_VOLUME), value=float(ml), unit=cc(_ML_UNIT))]))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=cc(_PROCEDURE),
                                     imaging_measurements=groups)
    # TID 1500 row 7 (TID 1600 image library) goes before the Imaging Measurements container
    items = report[0].ContentSequence
    at = next(i for i, item in enumerate(items)
              if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "126010")
    items.insert(at, _image_library(hd, codes, images, cc(_SOURCE)))
    return report


#: a series of more images than this (a CT or MR volume) is listed without per-image descriptors: they are
#: optional (TID 1601), and for a 300-slice head CT they made the SR take 8 s to build instead of 0.35 s
DESCRIBED_IMAGES_PER_SERIES = 16


def _image_library(hd, codes, images: list[Dataset], source_name):
    """TID 1600: one Image Library Group per series, one IMAGE item per source image.

    Descriptors (TID 1602/1603) come from highdicom when the header has what it reads; an image
    whose header lacks them (a CR without Imager Pixel Spacing, say) is still listed, without them,
    and so is every image of a series of more than :data:`DESCRIBED_IMAGES_PER_SERIES` (a volume: the
    SEG beside the SR carries its geometry).
    """
    rel = hd.sr.RelationshipTypeValues
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=rel.CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence()
    by_series: dict[str, list[Dataset]] = {}
    for ds in images:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    for series in by_series.values():
        group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=rel.CONTAINS)
        group.ContentSequence = hd.sr.ContentSequence()
        for ds in series:
            item = hd.sr.ImageContentItem(name=source_name, referenced_sop_class_uid=str(ds.SOPClassUID),
                                          referenced_sop_instance_uid=str(ds.SOPInstanceUID),
                                          relationship_type=rel.CONTAINS)
            try:
                descriptors = (list(hd.sr.ImageLibraryEntryDescriptors(ds))
                               if len(series) <= DESCRIBED_IMAGES_PER_SERIES else [])
            except Exception:
                descriptors = []
            if descriptors:
                item.ContentSequence = hd.sr.ContentSequence(descriptors)
            group.ContentSequence.append(item)
        library.ContentSequence.append(group)
    return library


def _label_maxima(study: dict) -> dict[str, float]:
    """label -> max probability over the study's analysed (status ok) images, labels in first-seen order."""
    out: dict[str, float] = {}
    seen: list[str] = []
    for img in study.get("images") or []:
        for label, value in (img.get("label_scores") or {}).items():
            if label not in seen:
                seen.append(label)
            p = _probability(value) if img.get("status") == "ok" else None
            if p is not None and (label not in out or p > out[label]):
                out[label] = p
    return {label: out[label] for label in seen if label in out}


def _human_read_reason(study: dict) -> str | None:
    """Why a human has to read this study, from counts and fixed phrases only; None when no need."""
    images = study.get("images") or []
    failed = len(study.get("failed_images") or [])
    n_bad = sum(1 for i in images if i.get("status") != "ok") + failed
    total = len(images) + failed
    priority = str(study.get("priority") or INDETERMINATE)
    score = _probability(study.get("score"))
    if not (priority == INDETERMINATE or n_bad or score is None or study.get("reason")):
        return None
    parts = []
    if n_bad:
        parts.append(f"{n_bad} of {total} image(s) could not be analysed")
    if score is None:
        parts.append("no study score" if total else "no image could be analysed")
    if not parts:
        parts.append("the automated result is incomplete")
    return "; ".join(parts) + " - needs a human read"


def _complete(study: dict) -> bool:
    return _human_read_reason(study) is None


# --- small helpers -------------------------------------------------------------------------------
def _probability(value: Any) -> float | None:
    try:
        p = float(value)
    except (TypeError, ValueError):
        return None
    return p if math.isfinite(p) and 0.0 <= p <= 1.0 else None
