"""atheris harness for edgeinfer.dicomio and edgeinfer.preprocess: read -> decode -> preprocess
on arbitrary bytes.

Only edgeinfer's ``InputError`` may escape; anything else is a finding (libFuzzer
reports it with the input that caused it), and so is a numpy ``RuntimeWarning`` from
preprocessing (it would reach a device's stderr): arbitrary bytes are read or cleanly
rejected, never crash (see docs/RELIABILITY.md).

Every decoded frame goes through :func:`edgeinfer.preprocess.preprocess_pixels` with the
embedded bundle's preprocessing spec, as the triage engine does.

Short run: ``tests/edgeinfer/test_dicomio.py::test_fuzz_short_run`` (a few seconds,
skipped when atheris is not installed). Long run on demand, seeded with pydicom's test
files (libFuzzer reads seed directories recursively)::

    pip install atheris
    mkdir -p /tmp/dicomio-corpus
    python tests/edgeinfer/fuzz_dicomio.py -rss_limit_mb=1024 -timeout=5 \
        -max_total_time=3600 /tmp/dicomio-corpus \
        "$(python -c 'import pydicom, pathlib; print(pathlib.Path(pydicom.__file__).parent / "data" / "test_files")')"

Replay one crashing input: ``python tests/edgeinfer/fuzz_dicomio.py crash-<hash>``.
"""
from __future__ import annotations

import os
import sys
import tempfile
import warnings

import atheris

with atheris.instrument_imports(include=["edgeinfer", "pydicom"]):
    from edgeinfer.bundle import load_bundle
    from edgeinfer.dicomio import (
        ReadLimits,
        decode_frame,
        describe_transfer_syntax,
        number_of_frames,
        read_dataset,
    )
    from edgeinfer.errors import InputError
    from edgeinfer.preprocess import PreprocessSpec, preprocess_pixels

# smaller than the device defaults so that one input stays well inside -rss_limit_mb
LIMITS = ReadLimits(max_file_bytes=16 * 1024**2, max_pixels=4 * 1024**2, max_inflated_bytes=64 * 1024**2)
SPEC = PreprocessSpec.from_manifest(load_bundle().manifest["preprocessing"])

# Each input is written to a file, since read_dataset reads a path. libFuzzer ends the process
# with exit() or _Exit() (at -max_total_time, on a finding, a -timeout or -rss_limit_mb), so no
# ``finally`` or atexit handler runs then: a named scratch file would be left behind. Where
# the system has memfd_create (Linux) the file is anonymous memory, reached through
# /proc/self/fd and gone with the process however it ends; elsewhere a named file is written
# and removed for each input.
if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
    _FD = os.memfd_create("fuzz_dicomio")
    PATH = f"/proc/self/fd/{_FD}"
else:
    _FD = None
    _dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    PATH = os.path.join(_dir or tempfile.gettempdir(), f"fuzz_dicomio_{os.getpid()}.dcm")


def _load(data: bytes) -> None:
    if _FD is not None:
        os.ftruncate(_FD, 0)
        os.pwrite(_FD, data, 0)
    else:
        with open(PATH, "wb") as fh:
            fh.write(data)


def _check() -> None:
    ds = read_dataset(PATH, LIMITS)
    describe_transfer_syntax(ds)
    frames = number_of_frames(ds)
    for frame in (0, frames - 1) if frames > 1 else (0,):
        stored = decode_frame(ds, frame, LIMITS)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # overflow etc. must not reach stderr
            preprocess_pixels(stored, ds, SPEC, frame=frame)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    _load(data)
    try:
        _check()
    except InputError:
        pass
    finally:
        if _FD is None:
            os.unlink(PATH)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
