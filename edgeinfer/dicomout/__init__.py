"""The DICOM objects edgeinfer writes back into a study, built with highdicom.

Now: the triage result of a study as a TID 1500 Comprehensive SR (``sr``). A Secondary Capture
per flagged image and a DICOM SEG come with their issues, each one module beside ``sr``, as
highdicom keeps one package per object type (``highdicom.sr``, ``highdicom.sc``, ``highdicom.seg``).

Modules: ``common`` (what every object shares: deterministic UIDs, the source images of one
study of one patient, the patient and study modules copied from them, the character set,
highdicom's log records dropped, the Part 10 encoding), ``codes`` (the coding scheme: standard
codes where one is obvious, the private scheme ``99EDGEINFER`` for the rest), ``sr`` (the SR),
``writers`` (the result writers the node runs per study version, by name). Each imports only those
before it.

Patient data: the patient and study modules are copied from the source headers into the object
(that is what files it under the right patient); log records, warnings and exception messages
carry UIDs, counts and exception class names only.
"""
from __future__ import annotations

from ..errors import SRError
from .codes import LABEL_CODES, PRIORITY_MEANINGS, SCHEME, label_code, priority_code
from .common import part10_bytes
from .sr import SERIES_NUMBER_BASE, build_sr, sr_bytes, sr_uids
from .writers import WRITERS, ResultObject, resolve, source_header, write_results

__all__ = [
    "build_sr",
    "sr_bytes",
    "sr_uids",
    "SERIES_NUMBER_BASE",
    "part10_bytes",
    "label_code",
    "priority_code",
    "SCHEME",
    "LABEL_CODES",
    "PRIORITY_MEANINGS",
    "SRError",
    "ResultObject",
    "WRITERS",
    "resolve",
    "write_results",
    "source_header",
]
