"""What every object edgeinfer writes shares: deterministic UIDs, the source images (one study of
one patient), a neutral stand-in header for highdicom's constructors, the patient and study modules
copied from a source, the character set, ASCII Long String values of our own, highdicom's log
records dropped, and the Part 10 encoding.

Patient data: messages and log records name UIDs, counts and exception class names only; library
work on the source headers runs inside ``_library_quiet`` (pydicom and highdicom echo values).
"""
from __future__ import annotations

import copy
import io
import json
import logging
import re
from typing import Any, Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ..dicomio.quiet import _DROP_FILTER, _library_quiet
from ..errors import EdgeInferError
from ..vr import shown_uid, valid_uid

log = logging.getLogger(__package__)


def part10_bytes(ds: Dataset, *, what: str, error: type[EdgeInferError]) -> bytes:
    """The Part 10 encoding of ``ds`` (preamble, file meta, Explicit VR Little Endian); ``error``
    naming ``what`` ("SR", say) and the SOP Instance UID when it cannot be encoded."""
    buf = io.BytesIO()
    try:
        with _library_quiet():
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    except Exception as exc:
        uid = shown_uid(ds.get("SOPInstanceUID", ""), missing="missing")
        raise error(f"{what} {uid} could not be encoded ({type(exc).__name__})") from None
    return buf.getvalue()


def _uid(prefix: str, *parts: Any) -> str:
    # one JSON string: pydicom joins entropy sources without a separator ("1.2.3"+"12" == "1.2.31"+"2")
    return str(generate_uid(prefix=prefix, entropy_srcs=[json.dumps([str(p) for p in parts])]))


# --- sources -------------------------------------------------------------------------------------
def _image_sources(study_uid: str, sources: Sequence[Dataset], *, what: str,
                   error: type[EdgeInferError]) -> list[Dataset]:
    """The study's image instances, unique, in a stable order; checked for one patient. ``what``
    ("SR", say) names the object in log records and in ``error``'s messages."""
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
                    "UIDs left out of the %s", study_uid, other_study, not_image, bad, what)
    if not keep:
        raise error(f"study {study_uid}: no source image header of this study; the {what} needs at least one "
                    "(its patient and study modules are copied from it)")
    images = sorted(keep.values(), key=lambda d: (str(d.SeriesInstanceUID), str(d.SOPInstanceUID)))
    with _library_quiet():
        patients = {(str(d.get("PatientID", "") or ""), str(d.get("IssuerOfPatientID", "") or "")) for d in images}
    if len(patients) > 1:
        raise error(f"study {study_uid}: its {len(images)} source images name {len(patients)} different "
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


def _copy_patient_and_study(target: Dataset, source: Dataset) -> None:
    """Patient and study modules from ``source`` (copies, not shared elements) into ``target``, a
    highdicom object built from the stand-in; type 2 ones empty if absent."""
    header = Dataset()
    for elem in source:
        group = elem.tag.group
        if elem.tag.is_private or group >= 0x7FE0 or 0x6000 <= group <= 0x60FF or group == 0x0002:
            continue
        header.add(copy.deepcopy(elem))
    # highdicom picks the modules to copy by the SOP class: ask for the target's own patient and
    # study modules (a private image SOP class would be unknown to it)
    header.SOPClassUID = target.SOPClassUID
    for key in _NEUTRAL:           # set by highdicom from the stand-in: clear what the source lacks
        if key not in header:
            setattr(target, key, None)
    target.copy_patient_and_study_information(header)


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


def _model(bundle: dict) -> tuple[str, str]:
    """The bundle's name and version as our objects write them (Long String values)."""
    return _lo(str(bundle.get("name") or "model")), _lo(str(bundle.get("version") or "unknown"))


def _lo(text: str) -> str:
    """A Long String value of our own: printable ASCII without backslash, at most 64 characters."""
    return re.sub(r"[^\x20-\x5b\x5d-\x7e]", "?", str(text)).strip()[:64]


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
