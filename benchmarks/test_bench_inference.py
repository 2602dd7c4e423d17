"""Inference latency over the same matrix as ``edgeinfer bench``: bundle x backend x precision x batch,
the runtime's ``Runner.infer`` and the raw backend call side by side (one group per row).

Inputs rotate over real preprocessed images (never zeros). A (backend, precision) that cannot run
here is skipped with its reason. No timing is ever asserted.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from benchutil import batches, bundle_paths, threads
from edgeinfer import bench

MATRIX = [(b, p) for b in bench.BACKENDS for p in bench.PRECISIONS]
WARMUP_CALLS = 5


def _bundle_id(path):
    return "embedded" if path is None else Path(path).name


@pytest.mark.parametrize("call", ["runtime", "raw"])
@pytest.mark.parametrize("batch", batches(), ids=lambda b: f"b{b}")
@pytest.mark.parametrize("backend,precision", MATRIX, ids=[f"{bench.SHORT[b]}-{p}" for b, p in MATRIX])
@pytest.mark.parametrize("bundle_path", bundle_paths(), ids=_bundle_id)
def test_infer(benchmark, bundle_path, backend, precision, batch, call, runners, inputs, bundles):
    runner = runners(bundle_path, backend, precision)
    if isinstance(runner, str):
        pytest.skip(runner)
    meta = runner.inputs[0]
    fixed = meta.shape[0] if meta.shape else None
    if isinstance(fixed, int) and fixed > 0 and fixed != batch:
        pytest.skip(f"the graph has a fixed batch of {fixed}")
    name = bundles(bundle_path).manifest["inputs"][0]["name"]
    feeds = bench.make_feeds(inputs(bundle_path).images, batch, name)
    if call == "runtime":
        cycle = itertools.cycle(feeds)
        infer = runner.infer

        def fn():
            return infer(next(cycle))
    elif backend == "tensorrt":
        # TensorRT's raw call stages inputs into shared pinned buffers: stage per call (counted)
        cycle = itertools.cycle(feeds)

        def fn():
            return runner.raw_call(next(cycle))()
    else:
        cycle = itertools.cycle([runner.raw_call(f) for f in feeds])

        def fn():
            return next(cycle)()

    for _ in range(WARMUP_CALLS):
        fn()
    report = runner.report()
    benchmark.group = f"{_bundle_id(bundle_path)} {bench.SHORT[backend]} {precision} batch {batch}"
    benchmark.extra_info.update({
        "backend": backend, "precision": precision, "precision_executed": report.precision,
        "provider": report.provider, "batch": batch, "call": call, "threads": threads(),
        "images_rotated": len(feeds), "gate": bench.accuracy_for(bundles(bundle_path), backend, precision,
                                                                  runner.artifact)["gate"],
    })
    benchmark(fn)
