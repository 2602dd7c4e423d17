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

Codes: SNOMED CT where a standard one is obvious (:data:`LABEL_CODES`, SCT "Priority"), DCM
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

import copy
import datetime as _dt
import hashlib
import io
import json
import logging
import math
import re
from typing import Any, Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from .. import __version__
from ..dicomio.quiet import _DROP_FILTER, _library_quiet
from ..errors import EdgeInferError, SRError
from ..vr import shown_uid, valid_uid

log = logging.getLogger("edgeinfer.node.sr")

INDETERMINATE = "INDETERMINATE"
SERIES_NUMBER_BASE = 9900

#: private coding scheme (PS3.16 8.2: private designators start with "99")
SCHEME = "99EDGEINFER"

#: label -> (code value, scheme, meaning): standard codes where one is obvious, else a private code
LABEL_CODES: dict[str, tuple[str, str, str]] = {
    "pneumothorax": ("36118008", "SCT", "Pneumothorax"),
    "mass": ("4147007", "SCT", "Mass"),
    "nodule": ("27925004", "SCT", "Nodule"),
    "pleural effusion": ("60046008", "SCT", "Pleural effusion"),
    "pleural_effusion": ("60046008", "SCT", "Pleural effusion"),
    "pulmonary edema": ("19242006", "SCT", "Pulmonary edema"),
    "pulmonary_edema": ("19242006", "SCT", "Pulmonary edema"),
}

#: triage priorities (private codes); a bundle's other priority names get a private code too
PRIORITY_MEANINGS = {
    "STAT": "STAT - read immediately",
    "URGENT": "Urgent - read first",
    "ROUTINE": "Routine",
    INDETERMINATE: "Indeterminate - needs a human read",
}

_SCT_PRIORITY = ("260870009", "SCT", "Priority")
_DCM_FOLLOW_UP = ("111053", "DCM", "Recommended Follow-up")
_PROCEDURE = ("363679005", "SCT", "Imaging procedure")
_STUDY_SCORE = ("STUDYSCORE", SCHEME, "Triage study score")
_MAXIMUM = ("56851009", "SCT", "Maximum")           # TID 300 derivation, CID 3488
_HUMAN_READ = ("HUMANREAD", SCHEME, "Needs a human read")
_REASON = ("HUMANREADREASON", SCHEME, "Reason a human read is needed")
_PROBABILITY_UNIT = ("{probability}", "UCUM", "probability")
_SOURCE = ("260753009", "SCT", "Source")

_CODE_VALUE_OK = re.compile(r"[A-Z0-9_]{1,16}")


# --- public -----------------------------------------------------------------------------------
def build_sr(study: dict, sources: Sequence[Dataset], *, bundle: dict, run: dict, version: int,
             manufacturer: str = "edgeinfer", now: _dt.datetime | None = None,
             device_uid: str | None = None, uid_prefix: str = PYDICOM_ROOT_UID) -> Dataset:
    """The triage result of one study as a TID 1500 Comprehensive SR in that study.

    ``study``: a study record of the triage worklist; ``sources``: the headers (pixel data may be
    present; it is not read) of the study's source images, from which the patient and study modules
    are copied (sources of another study and non-image instances are left out); ``bundle``:
    ``Bundle.summary()``; ``run``: the runner report; ``version``: the study version (1, 2, ...).
    ``now``: content date/time (default: the current local time); ``device_uid``: the observer
    device UID (default: derived from the manufacturer and the bundle); ``uid_prefix``: root of the
    generated UIDs. Raises :class:`SRError` (no patient data in the message).
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
        images = _image_sources(study_uid, sources)
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
                             manufacturer=manufacturer, device_uid=device_uid, tracking_uid=tracking_uid)
            stage = "document"
            # highdicom reads the patient/study values of evidence[0] in its constructor (and echoes
            # some in warnings or errors): give it a neutral stand-in, then copy the real modules
            stand_in = _neutral_header(images[0])
            sr = hd.sr.ComprehensiveSR(
                evidence=[stand_in, *images[1:]],
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


def sr_bytes(ds: Dataset) -> bytes:
    """The Part 10 encoding of ``ds`` (preamble, file meta, Explicit VR Little Endian)."""
    buf = io.BytesIO()
    try:
        with _library_quiet():
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    except Exception as exc:
        uid = shown_uid(ds.get("SOPInstanceUID", ""), missing="missing")
        raise SRError(f"SR {uid} could not be encoded ({type(exc).__name__})") from None
    return buf.getvalue()


def sr_uids(study_uid: str, version: int, digest: str, uid_prefix: str = PYDICOM_ROOT_UID) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) that :func:`build_sr` gives this study version."""
    return (_uid(uid_prefix, study_uid, version, digest, "series"), _uid(uid_prefix, study_uid, version, digest, "sr"))


def label_code(label: str) -> tuple[str, str, str]:
    """(code value, scheme designator, meaning) for a bundle label."""
    key = str(label).strip().lower()
    if key in LABEL_CODES:
        return LABEL_CODES[key]
    return _private_code("L", str(label), _lo(str(label)) or "label")


def priority_code(priority: str) -> tuple[str, str, str]:
    """(code value, scheme designator, meaning) for a triage priority name."""
    name = str(priority)
    if name in PRIORITY_MEANINGS:
        return name, SCHEME, PRIORITY_MEANINGS[name]
    return _private_code("P", name, _lo(name) or "priority")


# --- content -----------------------------------------------------------------------------------
def _report(hd, codes, study: dict, images: list[Dataset], *, bundle: dict, run: dict, version: int,
            manufacturer: str, device_uid: str, tracking_uid: str):
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

    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=cc(_PROCEDURE),
                                     imaging_measurements=[group])
    # TID 1500 row 7 (TID 1600 image library) goes before the Imaging Measurements container
    items = report[0].ContentSequence
    at = next(i for i, item in enumerate(items)
              if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "126010")
    items.insert(at, _image_library(hd, codes, images, cc(_SOURCE)))
    return report


def _image_library(hd, codes, images: list[Dataset], source_name):
    """TID 1600: one Image Library Group per series, one IMAGE item per source image.

    Descriptors (TID 1602/1603) come from highdicom when the header has what it reads; an image
    whose header lacks them (a CR without Imager Pixel Spacing, say) is still listed, without them.
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
                descriptors = list(hd.sr.ImageLibraryEntryDescriptors(ds))
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


# --- sources -------------------------------------------------------------------------------------
def _image_sources(study_uid: str, sources: Sequence[Dataset]) -> list[Dataset]:
    """The study's image instances, unique, in a stable order; checked for one patient."""
    keep: dict[str, Dataset] = {}
    other_study = not_image = bad = 0
    for ds in sources:
        with _library_quiet():
            uids = [str(ds.get(k, "") or "").strip() for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                                  "SOPInstanceUID", "SOPClassUID")]
            is_image = "Rows" in ds and "Columns" in ds
        if not all(valid_uid(u) for u in uids):
            bad += 1
        elif uids[0] != study_uid:
            other_study += 1
        elif not is_image:
            not_image += 1
        else:
            keep.setdefault(uids[2], ds)
    if other_study or not_image or bad:
        log.warning("study %s: %d source(s) of another study, %d non-image instance(s) and %d with invalid "
                    "UIDs left out of the SR", study_uid, other_study, not_image, bad)
    if not keep:
        raise SRError(f"study {study_uid}: no source image header of this study; the SR needs at least one "
                      "(its patient and study modules are copied from it)")
    images = sorted(keep.values(), key=lambda d: (str(d.SeriesInstanceUID), str(d.SOPInstanceUID)))
    with _library_quiet():
        patients = {(str(d.get("PatientID", "") or ""), str(d.get("IssuerOfPatientID", "") or "")) for d in images}
    if len(patients) > 1:
        raise SRError(f"study {study_uid}: its {len(images)} source images name {len(patients)} different "
                      "patients (Patient ID / Issuer); refusing to file a result under one of them")
    return images


_NEUTRAL = {"PatientID": "", "PatientName": "", "PatientBirthDate": "", "PatientSex": "", "AccessionNumber": "",
            "StudyID": "", "StudyDate": "", "StudyTime": "", "ReferringPhysicianName": ""}


def _neutral_header(ds: Dataset) -> Dataset:
    """What highdicom's constructor needs from evidence[0], without any patient or study value."""
    out = Dataset()
    for key in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality",
                "Rows", "Columns"):
        if key in ds:
            setattr(out, key, ds.get(key))
    for key, value in _NEUTRAL.items():
        setattr(out, key, value)
    return out


def _copy_patient_and_study(sr: Dataset, source: Dataset) -> None:
    """Patient and study modules from ``source`` (copies, not shared elements); type 2 ones empty if absent."""
    header = Dataset()
    for elem in source:
        group = elem.tag.group
        if elem.tag.is_private or group >= 0x7FE0 or 0x6000 <= group <= 0x60FF or group == 0x0002:
            continue
        header.add(copy.deepcopy(elem))
    # highdicom picks the modules to copy by the SOP class: ask for the SR's own patient and study
    # modules (a private image SOP class would be unknown to it)
    header.SOPClassUID = sr.SOPClassUID
    for key in _NEUTRAL:           # set by highdicom from the stand-in: clear what the source lacks
        if key not in header:
            setattr(sr, key, None)
    sr.copy_patient_and_study_information(header)


# --- small helpers -------------------------------------------------------------------------------
def _character_set(source: Dataset) -> str | list[str] | None:
    """The source's Specific Character Set when pydicom and highdicom accept it (the copied names
    stay encoded as the archive knows them), None for the default repertoire, else UTF-8. Our own
    text is ASCII (see :func:`_lo`), so it fits any of them."""
    from pydicom.charset import python_encoding

    with _library_quiet():
        value = source.get("SpecificCharacterSet")
    if value is None or value == "":
        return None
    terms = [str(t).strip() for t in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue))
                                      else [value])]
    if not any(terms) or not all(t == "" or t in python_encoding for t in terms):
        return "ISO_IR 192"
    candidate = terms[0] if len(terms) == 1 else terms
    try:
        from highdicom.base import _check_specific_character_set

        _check_specific_character_set(candidate)
    except Exception:
        return "ISO_IR 192"
    return candidate


def _uid(prefix: str, *parts: Any) -> str:
    # one JSON string: pydicom joins entropy sources without a separator ("1.2.3"+"12" == "1.2.31"+"2")
    return str(generate_uid(prefix=prefix, entropy_srcs=[json.dumps([str(p) for p in parts])]))


def _probability(value: Any) -> float | None:
    try:
        p = float(value)
    except (TypeError, ValueError):
        return None
    return p if math.isfinite(p) and 0.0 <= p <= 1.0 else None


def _lo(text: str) -> str:
    """A Long String value of our own: printable ASCII without backslash, at most 64 characters."""
    return re.sub(r"[^\x20-\x5b\x5d-\x7e]", "?", str(text)).strip()[:64]


def _private_code(kind: str, name: str, meaning: str, hashed: bool = False) -> tuple[str, str, str]:
    """A private code: ``{kind}_{NAME}`` (other characters as ``_``) when that fits a code value (16
    characters of A-Z, 0-9, _), else ``{kind}`` and a hash of the name. The prefix keeps labels and
    priorities apart from the fixed codes."""
    value = kind + "_" + re.sub(r"[^A-Z0-9]", "_", name.strip().upper())
    if hashed or not _CODE_VALUE_OK.fullmatch(value):
        value = kind + hashlib.sha256(name.encode("utf-8")).hexdigest()[:15].upper()
    return value, SCHEME, meaning


def _coding_scheme(hd, manufacturer: str):
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return CodingSchemeIdentificationItem(designator=SCHEME, name="edgeinfer triage codes",
                                          responsible_organization=_lo(manufacturer) or "edgeinfer")


_highdicom_quiet = False


def _quiet_highdicom() -> None:
    """Drop highdicom's log records inside ``_library_quiet`` (it echoes values, names among them)."""
    global _highdicom_quiet
    if _highdicom_quiet:
        return
    import highdicom  # noqa: F401  (creates its module loggers)

    for name in list(logging.Logger.manager.loggerDict):
        if name == "highdicom" or name.startswith("highdicom."):
            logging.getLogger(name).addFilter(_DROP_FILTER)
    _highdicom_quiet = True
