"""atheris harness for edgeinfer.dicomio: read -> decode on arbitrary bytes.

Only edgeinfer's ``InputError`` may escape; anything else is a finding (libFuzzer
reports it with the input that caused it). RELIABILITY.md item 1.

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

import atheris

with atheris.instrument_imports(include=["edgeinfer", "pydicom"]):
    from edgeinfer.dicomio import (
        ReadLimits,
        decode_frame,
        describe_transfer_syntax,
        number_of_frames,
        read_dataset,
    )
    from edgeinfer.errors import InputError

# smaller than the device defaults so that one input stays well inside -rss_limit_mb
LIMITS = ReadLimits(max_file_bytes=16 * 1024**2, max_pixels=4 * 1024**2, max_inflated_bytes=64 * 1024**2)

_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
_fd, PATH = tempfile.mkstemp(prefix="fuzz_dicomio_", suffix=".dcm", dir=_dir)
os.close(_fd)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    with open(PATH, "wb") as fh:
        fh.write(data)
    try:
        ds = read_dataset(PATH, LIMITS)
        describe_transfer_syntax(ds)
        frames = number_of_frames(ds)
        decode_frame(ds, 0, LIMITS)
        if frames > 1:
            decode_frame(ds, frames - 1, LIMITS)
    except InputError:
        pass


def main() -> None:
    try:
        atheris.Setup(sys.argv, TestOneInput)
        atheris.Fuzz()
    finally:
        try:
            os.unlink(PATH)
        except OSError:
            pass


if __name__ == "__main__":
    main()
