"""The codes edgeinfer's objects use: SNOMED CT, DCM and UCUM where a standard code is obvious, and
the private coding scheme ``99EDGEINFER`` (declared in each object's Coding Scheme Identification
Sequence) for the priorities, the study score, the human-read concepts and any label without a
standard code."""
from __future__ import annotations

import hashlib
import re

from ..worklist import INDETERMINATE
from .common import _lo

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
    "hemorrhage": ("50960005", "SCT", "Hemorrhage"),
    "bleed": ("50960005", "SCT", "Hemorrhage"),
    "ich": ("1386000", "SCT", "Intracranial hemorrhage"),
    "iph": ("274100004", "SCT", "Cerebral hemorrhage"),
    "sdh": ("35486000", "SCT", "Subdural hemorrhage"),
    "sah": ("21454007", "SCT", "Subarachnoid hemorrhage"),
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
_VOLUME = ("118565006", "SCT", "Volume")              # a segment's volume (TID 1411 measurement)
_ML_UNIT = ("ml", "UCUM", "milliliter")
_SOURCE = ("260753009", "SCT", "Source")
_MORPHOLOGICALLY_ABNORMAL = ("49755003", "SCT", "Morphologically abnormal structure")   # a SEG segment's category
_HEATMAP = ("HEATMAP", SCHEME, "AI heatmap (class-activation map), not for diagnosis")

_CODE_VALUE_OK = re.compile(r"[A-Z0-9_]{1,16}")


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
