"""Header values checked against their VR grammar before anyone sees them.

A site that puts a patient ID or name into a technical field (Modality, BodyPartExamined,
a UID) must not have it echoed into a log, a message, a table or a worklist. Every header
value that edgeinfer shows goes through one of these functions: a value that fails its
grammar is replaced by a marker such as ``<invalid CS>``.

Code strings are shown only when they are also a known defined term (PS3.3 C.7.3.1.1.1 for
Modality, PS3.16 Annex L for body parts, PS3.3 C.7.6.3.1.2 for the photometric
interpretation): an 11-letter patient ID is valid CS grammar, so grammar alone is not enough.
"""
from __future__ import annotations

import re

#: PS3.5 6.2: UI is digits and dots, at most 64 characters, no empty component
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
#: PS3.5 6.2: CS is upper-case letters, digits, space and underscore, at most 16 characters
_CS_RE = re.compile(r"[A-Z0-9 _]{1,16}")

INVALID_UID = "<invalid UI>"
INVALID_CS = "<invalid CS>"
UNLISTED_CS = "<unlisted CS>"

#: PS3.3 C.7.3.1.1.1 defined terms, retired ones included (old archives hold them)
MODALITIES = frozenset("""
    ANN AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DMS DG DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD
    IO IOL IVOCT IVUS KER KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA PLAN
    POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV
    SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC
    AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF
""".split())

#: PS3.3 C.7.6.3.1.2 enumerated values, retired ones included
PHOTOMETRIC = frozenset({
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422",
    "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "HSV", "ARGB", "CMYK",
})

#: PS3.16 Annex L (CID 4031 and relatives): the body-part code strings seen in projection
#: radiography, CT and MR headers. A value not listed here is shown as ``<unlisted CS>``.
BODY_PARTS = frozenset("""
    ABDOMEN ABDOMENPELVIS ACJOINT ADRENAL AORTA ANKLE ANUS APPENDIX ARM AXILLA BACK BILEDUCT BLADDER
    BRAIN BREAST BRONCHUS BUTTOCK CALCANEUS CALF CAROTID CEREBELLUM CERVIX CHEST CHESTABDOMEN
    CHESTABDPELVIS CIRCLEOFWILLIS CLAVICLE COCCYX COLON CORNEA CORONARYARTERY CSPINE CTSPINE DUODENUM
    EAR ELBOW ESOPHAGUS EXTREMITY EYE EYELID FACE FEMUR FINGER FOOT GALLBLADDER HAND HEAD HEADNECK HEART
    HIP HUMERUS ILEUM ILIUM IAC JAW JEJUNUM KIDNEY KNEE LARYNX LEG LIVER LSPINE LSSPINE LUNG MAXILLA
    MEDIASTINUM MOUTH NECK NECKCHEST NECKCHESTABDOMEN NECKCHESTABDPELV NOSE ORBIT OVARY PANCREAS
    PAROTID PATELLA PELVIS PENIS PHARYNX PROSTATE RECTUM RIB SACRUM SCALP SCAPULA SCLERA SCROTUM
    SHOULDER SKULL SPINE SPLEEN SSPINE STERNUM STOMACH SUBMANDIBULAR TESTIS THIGH THUMB THYMUS THYROID
    TIBIA TOE TONGUE TRACHEA TSPINE TLSPINE UTERUS VAGINA VULVA WHOLEBODY WRIST ZYGOMA
""".split())


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return str(value).strip(" \x00")


def valid_uid(value: object) -> bool:
    text = _text(value)
    return len(text) <= 64 and _UID_RE.fullmatch(text) is not None


def shown_uid(value: object, missing: str = "") -> str:
    """A UID fit to show: the value if it is dotted-decimal and at most 64 characters."""
    text = _text(value)
    if not text:
        return missing
    return text if valid_uid(text) else INVALID_UID


def valid_cs(value: object) -> bool:
    return _CS_RE.fullmatch(_text(value)) is not None


def shown_cs(value: object, vocabulary: frozenset[str] | None = None, missing: str = "missing") -> str:
    """A code string fit to show: valid CS grammar and, when a vocabulary is given, a known term."""
    text = _text(value)
    if not text:
        return missing
    if not valid_cs(text):
        return INVALID_CS
    if vocabulary is not None and text not in vocabulary:
        return UNLISTED_CS
    return text


def shown_modality(value: object, missing: str = "missing") -> str:
    return shown_cs(value, MODALITIES, missing)


def shown_body_part(value: object, missing: str = "missing") -> str:
    return shown_cs(value, BODY_PARTS, missing)


def shown_photometric(value: object, missing: str = "missing") -> str:
    return shown_cs(value, PHOTOMETRIC, missing)
