"""Shared by the DICOM object tests: a real triage run on phantoms, and the source headers with a canary
patient name (which must never reach a log or an error)."""
from __future__ import annotations

import pydicom
import pytest

from edgeinfer import phantom
from edgeinfer.backends import create_runner
from edgeinfer.bundle import load_bundle
from edgeinfer.intake import discover
from edgeinfer.triage import TriageEngine

CANARY = "CANARY^PHI"


@pytest.fixture(scope="session")
def triaged(tmp_path_factory):
    """(worklist, {study uid: [source headers with a canary patient name]}) from a real triage run."""
    folder = tmp_path_factory.mktemp("dicomout_phantoms") / "set"
    phantom.generate(folder, 4, seed=1, max_size=256)
    bundle = load_bundle()
    with create_runner(bundle.artifact(precision="fp32")) as runner:
        wl = TriageEngine(bundle, runner).run(discover([folder]))
    headers: dict[str, list[pydicom.Dataset]] = {}
    for f in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        ds.PatientName = CANARY
        headers.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    return wl, headers
