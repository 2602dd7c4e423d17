"""The DICOM objects edgeinfer writes back into a study, built with highdicom.

The triage result of a study as a TID 1500 Comprehensive SR (``sr``), one Secondary Capture per heatmap of
a flagged study (``sc``) and, for a segmentation bundle, a DICOM Segmentation of the study's masks (``seg``):
the SR references the heatmaps and reports each label's volume on its segment of the SEG.
One module per object type, as highdicom keeps one package each (``highdicom.sr``, ``highdicom.sc``,
``highdicom.seg``).

Modules: ``common`` (what every object shares: deterministic UIDs, the source images of one
study of one patient, the patient and study modules copied from them, the character set,
highdicom's log records dropped, the Part 10 encoding), ``codes`` (the coding scheme: standard
codes where one is obvious, the private scheme ``99EDGEINFER`` for the rest), ``sr`` (the SR), ``sc``
(the heatmap images), ``seg`` (the segmentation), ``writers`` (the result writers the node runs per study version, by name). Each imports only those
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
from .sc import build_heatmap_scs, sc_bytes, sc_uids
from .writers import DEFAULT_RESULTS, WRITERS, ResultObject, resolve, source_header, write_results

__all__ = [
    "build_sr",
    "build_heatmap_scs",
    "sc_bytes",
    "sc_uids",
    "DEFAULT_RESULTS",
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
