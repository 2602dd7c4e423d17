import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/helpers.py


def _has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu() and os.environ.get("EDGEINFER_SKIP_GPU") != "1":
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (nvidia-smi found none); run on a Jetson or GPU host")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    from helpers import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """A small phantom set (read-only: copy it before changing anything)."""
    from edgeinfer import phantom

    out = tmp_path_factory.mktemp("phantoms") / "set"
    phantom.generate(out, 14, seed=99, max_size=512)
    return out


@pytest.fixture(scope="session")
def corpus_dir():
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"
