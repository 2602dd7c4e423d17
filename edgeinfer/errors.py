"""One exception hierarchy for edgeinfer.

Every message says what was asked, what was found, and what to do. Messages never
contain patient data: callers pass paths and technical values only.
"""
from __future__ import annotations


class EdgeInferError(Exception):
    """Base of every error edgeinfer raises on purpose."""

    #: exit status a CLI should use when this error ends a command
    exit_code = 1


# --- inputs: one file at a time; a batch never stops for these -------------------------
class InputError(EdgeInferError):
    """A single input file cannot be used. ``reason`` is short and readable by a radiographer."""

    #: machine-readable category, stable across versions (goes into the worklist JSON)
    code = "input-error"

    def __init__(self, reason: str, *, hint: str | None = None, study_uid: str | None = None):
        self.reason = reason
        self.hint = hint
        #: set when the header was readable, so a failed image still sends its study to a human read
        self.study_uid = study_uid
        super().__init__(reason if hint is None else f"{reason} ({hint})")


class NotDicomError(InputError):
    code = "not-dicom"


class CorruptDicomError(InputError):
    code = "corrupt"


class InvalidUIDError(InputError):
    """An identifying UID (study, series, instance) breaks the UID grammar: the image cannot be
    placed in a study, and the value is never shown (it may be a patient ID typed in the wrong field)."""

    code = "invalid-uid"


class UnreadableError(InputError):
    """The file or folder exists but cannot be read (permissions, I/O error, not a regular file)."""

    code = "unreadable"


class UnsupportedError(InputError):
    """Valid DICOM that this runtime cannot decode (e.g. no decoder plugin installed)."""

    code = "unsupported"


class TooLargeError(InputError):
    code = "too-large"


class PreprocessError(InputError):
    code = "preprocess"


class SeriesError(InputError):
    """The slices of a series do not make one volume the runtime will use as it is (mixed orientations, a
    gantry tilt, slices of different sizes): refused with a reason, never silently resampled."""

    code = "series-geometry"


class NotApplicable(InputError):
    """Valid input that this bundle does not handle (not an image, wrong modality...).

    Files raising this are *skipped*, not errors.
    """

    code = "not-applicable"


# --- bundles and artifacts ---------------------------------------------------------------
class BundleError(EdgeInferError):
    """A model bundle is malformed, changed, or incompatible."""


class ManifestError(BundleError):
    pass


class IntegrityError(BundleError):
    """An artifact is missing, changed, unknown, or unsafe to load."""


class PrecisionNotValidated(BundleError):
    pass


class ArtifactNotFound(BundleError):
    """The bundle has no artifact of the precision or format asked for (it is intact, just lacking it)."""


class PlanIncompatible(IntegrityError):
    """A TensorRT plan that must not be deserialized on this device.

    ``differences`` lists, one readable line each, what differs between the plan's
    compatibility record and this device.
    """

    def __init__(self, message: str, differences=()):
        self.differences = list(differences)
        super().__init__(message)


class SignatureError(BundleError):
    """A bundle's signature is missing, unknown, invalid or stale, or a key / trust folder is unusable."""


# --- backends ----------------------------------------------------------------------------
class BackendError(EdgeInferError):
    pass


class BackendUnavailable(BackendError):
    """The backend or execution provider asked for cannot run here."""


class InferenceError(BackendError):
    pass


class CudaError(InferenceError):
    """A CUDA runtime call failed; the message names the call and CUDA's error."""


class JsonFileError(EdgeInferError):
    """A JSON file edgeinfer trusts (manifest, record, cache) is unreadable, too big, too deep or
    holds non-finite numbers."""


class MissingDependency(EdgeInferError):
    """An optional extra is not installed."""


# --- workstation side -------------------------------------------------------------------
class ExportError(EdgeInferError):
    pass


class SRError(EdgeInferError):
    """A result's DICOM SR cannot be built or encoded. Messages carry UIDs and counts only."""


class UsageError(EdgeInferError):
    """The command line asked for something impossible."""


class OutputPathError(EdgeInferError):
    """An output path that could not be written, or that would destroy an input."""


class LabelsError(EdgeInferError):
    """A reference-labels file (study_uid,label) that cannot be read."""


class PolicyError(UsageError):
    """A TensorRT build or load request that the TensorRT policy refuses, with the reason."""


class CalibrationError(EdgeInferError):
    """Calibration, quantization or validation could not produce a usable result."""
