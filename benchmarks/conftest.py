"""Fixtures for the pytest-benchmark suites (not collected by the normal test run: testpaths = tests).

Run from the repository root (see benchmarks/README.md):

    .venv/bin/python -m pytest benchmarks/ --benchmark-only --benchmark-autosave

Environment knobs (all optional):
  EDGEINFER_BENCH_BUNDLES  comma list of bundle folders (default: the embedded phantom bundle)
  EDGEINFER_BENCH_DATA     DICOM folder for inputs and the preprocessing suite (default: generated phantoms)
  EDGEINFER_BENCH_THREADS  inference threads per backend (default: the CPUs this process may use)
  EDGEINFER_BENCH_BATCHES  comma list of batch sizes (default 1,4)
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchutil import threads

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
_DEFAULT_STORAGE = "file://./.benchmarks"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Save results in benchmarks/results (committed, for ``pytest-benchmark compare``), not ./.benchmarks."""
    if getattr(config.option, "benchmark_storage", None) == _DEFAULT_STORAGE:
        config.option.benchmark_storage = f"file://{RESULTS}"


def pytest_benchmark_update_machine_info(config, machine_info):
    """Put edgeinfer's machine block (CPU flags, thread settings, library versions, load) in every saved run."""
    from edgeinfer.sysinfo import machine_info as edgeinfer_machine_info

    machine_info["edgeinfer"] = edgeinfer_machine_info()
    machine_info["edgeinfer"]["bench_threads"] = threads()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Real DICOM inputs: EDGEINFER_BENCH_DATA, or 8 phantoms at detector size (about 2500 x 2048)."""
    value = os.environ.get("EDGEINFER_BENCH_DATA")
    if value:
        return Path(value)
    from edgeinfer import phantom

    out = tmp_path_factory.mktemp("bench-data") / "phantoms"
    phantom.generate(out, 8, seed=2024)
    return out


@pytest.fixture(scope="session")
def bundles():
    """bundle path (None = embedded) -> loaded bundle, or the reason it cannot load."""
    from edgeinfer.bundle import load_bundle
    from edgeinfer.errors import EdgeInferError

    cache: dict = {}

    def get(path):
        if path not in cache:
            try:
                cache[path] = load_bundle(path)
            except EdgeInferError as exc:
                cache[path] = str(exc)
        return cache[path]

    return get


@pytest.fixture(scope="session")
def inputs(bundles, data_dir, tmp_path_factory):
    """bundle path -> edgeinfer.bench.Inputs (real images, preprocessed by the runtime)."""
    from edgeinfer import bench

    cache: dict = {}

    def get(path):
        if path not in cache:
            cache[path] = bench.load_inputs(bundles(path), data_dir, 8, tmp_path_factory.mktemp("inputs"))
        return cache[path]

    return get


@pytest.fixture(scope="session")
def runners(bundles):
    """(bundle path, backend, precision) -> an active Runner, or the reason it cannot run; all closed at the end."""
    from edgeinfer import bench
    from edgeinfer.backends import RunnerOptions, get_backend
    from edgeinfer.errors import BackendUnavailable, MissingDependency

    cache: dict = {}

    def get(path, backend, precision):
        key = (path, backend, precision)
        if key not in cache:
            bundle = bundles(path)
            if isinstance(bundle, str):
                cache[key] = f"bundle {path or '(embedded)'} cannot load: {bundle}"
                return cache[key]
            case = bench.plan_cases(bundle, [backend], [precision])[0]
            if case.reason:
                cache[key] = case.reason
                return cache[key]
            options = RunnerOptions(device=case.device, threads=threads(), precision_hint=case.hint)
            runner = get_backend(backend).create(case.artifact, options)
            try:
                cache[key] = runner.activate()
            except (BackendUnavailable, MissingDependency) as exc:
                cache[key] = str(exc)
        return cache[key]

    yield get
    for value in cache.values():
        if not isinstance(value, str):
            value.deactivate()
