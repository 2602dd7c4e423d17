import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/helpers.py

#: ``make test-gpu`` sets it: no usable GPU, or no GPU test passing, fails the run instead of skipping
REQUIRE_GPU = os.environ.get("EDGEINFER_REQUIRE_GPU") == "1"
_gpu_passed: list[str] = []


def _gpu() -> tuple[bool, str]:
    """The runner's own probe (cuda-python's device count), never nvidia-smi."""
    try:
        from edgeinfer.backends import cuda

        n = cuda.gpu_count()
    except Exception as exc:  # noqa: BLE001 - no cuda-python, no driver, a driver too old
        return False, str(exc)
    return (n > 0), ("" if n else "cudaGetDeviceCount found no GPU")


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    ok, why = (False, "EDGEINFER_SKIP_GPU=1") if os.environ.get("EDGEINFER_SKIP_GPU") == "1" else _gpu()
    if ok:
        return
    if REQUIRE_GPU:
        raise pytest.UsageError(f"the GPU tests were asked for (EDGEINFER_REQUIRE_GPU=1) but no CUDA GPU is usable: {why}")
    skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU ({why[:200]}); run make test-gpu on a Jetson or GPU host")
    for item in gpu_items:
        item.add_marker(skip)


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed and "gpu" in report.keywords:
        _gpu_passed.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if REQUIRE_GPU and exitstatus == 0 and not _gpu_passed:
        session.exitstatus = 1
        sys.stderr.write("\nEDGEINFER_REQUIRE_GPU=1: no GPU test passed (all skipped or none selected); "
                         "that is a failure, not a pass\n")


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
def triton_host(tmp_path_factory):
    """One real Triton server for the session (``edgeinfer triton-host phantom-cxr --precision fp32`` in the
    PyTriton venv, :class:`peers.TritonHost`), shared read-only: a test that stops or kills a server starts its own."""
    import peers

    host = peers.TritonHost(tmp_path_factory.mktemp("triton"))
    yield host
    host.stop()


@pytest.fixture(scope="session")
def corpus_dir():
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(autouse=True)
def _edgeinfer_logger_as_found():
    """``edgeinfer.cli.main`` run in-process configures the "edgeinfer" logger (its own handler, no propagation):
    put it back after each test, so that a later test's caplog sees edgeinfer's records whatever the order."""
    import logging

    lg = logging.getLogger("edgeinfer")
    saved = (lg.propagate, lg.level, list(lg.handlers))
    yield
    lg.propagate, lg.level = saved[0], saved[1]
    lg.handlers[:] = saved[2]
