"""The whole ``edgeinfer bench`` run: plan the matrix, measure every row, compare, run end to end,
and return the report (a JSON-ready dict).

The report's top-level ``edgeinfer_bench`` field is its format version (:data:`REPORT_VERSION`).
Version 2 gave the fast CPU path target a key that says what it measures,
``targets.openvino_gated_3x_vs_ort_fp32`` (:data:`~edgeinfer.bench.compare.OPENVINO_TARGET_KEY`;
version 1 named it after a tracker issue); nothing else changed.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from .. import __version__
from .accuracy import accuracy_for
from .compare import OPENVINO_TARGET_KEY, _compare, openvino_speedup_target
from .e2e import _e2e_cases, attach_inference_only, run_e2e
from .inputs import discover_files, load_inputs
from .measure import measure_case
from .memory import PeakRss
from .plan import BenchSettings, plan_cases
from .stats import _clean, _ms

log = logging.getLogger("edgeinfer.bench")

#: the report's format version (the top-level ``edgeinfer_bench`` field); 2: the target key renamed
REPORT_VERSION = 2


def run(bundle_path: str | os.PathLike | None, settings: BenchSettings,
        progress: Callable[[int], None] | None = None, status: Callable[[str], None] | None = None) -> dict:
    """Measure the matrix and return the report (a JSON-ready dict)."""
    from ..bundle import load_bundle
    from ..sysinfo import machine_info, openvino_cpu_info

    status = status or (lambda msg: log.info("%s", msg))
    machine = machine_info()
    t0 = time.perf_counter_ns()
    bundle = load_bundle(bundle_path)
    bundle_load_ms = _ms(time.perf_counter_ns() - t0)
    rss = PeakRss()
    rows: list[dict] = []
    e2e: list[dict] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgeinfer-bench-") as tmp:
        status(f"preparing {settings.images} real input images")
        inputs = load_inputs(bundle, settings.data, settings.images, Path(tmp), settings.seed)
        notes += inputs.notes
        cases = plan_cases(bundle, settings.backends, settings.precisions, ort_device=settings.device,
                           cache_dir=settings.cache_dir)
        by_key = {(c.backend, c.precision): c for c in cases}
        for case in cases:
            for batch in settings.batches:
                status(f"{case.label} batch {batch}")
                try:
                    rows.append(measure_case(case, bundle, inputs, batch, settings, rss, bundle_load_ms))
                except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
                    log.warning("%s batch %d failed: %s", case.label, batch, exc)
                    rows.append({"backend": case.backend, "precision": case.precision, "batch": batch,
                                 "artifact": getattr(case.artifact, "id", None), "status": "error",
                                 "reason": f"failed while measuring: {exc.__class__.__name__}: {exc}",
                                 "accuracy": accuracy_for(bundle, case.backend, case.precision, case.artifact)})
                if progress:
                    progress(1)
        _compare(rows)
        e2e_chosen = _e2e_cases(rows, by_key, settings.e2e)
        if e2e_chosen:
            files = discover_files(inputs.data_dir)
            for case in e2e_chosen:
                status(f"end to end over {len(files)} files: {case.label}")
                try:
                    e2e.append(run_e2e(bundle, case, files, settings))
                    attach_inference_only(e2e[-1], rows)
                except Exception as exc:  # noqa: BLE001 - reported, not fatal
                    e2e.append({"backend": case.backend, "precision": case.precision, "status": "error",
                                "reason": f"{exc.__class__.__name__}: {exc}"})
        data_info = {"source": inputs.source, "images_used": len(inputs.images),
                     "files": [str(f.relative_to(inputs.data_dir)) for f in inputs.files]}
    if any(r["backend"] == "openvino" and r["status"] == "ok" for r in rows):
        machine["openvino"] = openvino_cpu_info()
    load_end = machine.pop("load_average_at_start", None)
    from ..sysinfo import load_average

    machine["load_average"] = {"start": load_end, "end": load_average()}
    busy = max((x[0] for x in (load_end, machine["load_average"]["end"]) if x), default=0.0)
    if busy > 0.5:
        notes.append(f"the machine was busy (1-minute load average up to {busy:.2f} on "
                     f"{machine['cpu']['usable_cpus']} CPUs): absolute timings are inflated and noisy; "
                     "compare rows within this run only, and repeat on an idle machine for published numbers")
    return _clean({
        "edgeinfer_bench": REPORT_VERSION, "edgeinfer": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv) if sys.argv and sys.argv[0] else None,
        "bundle": {**bundle.summary(), "load_ms": bundle_load_ms,
                   "artifacts": [{"id": a.id, "precision": a.precision, "format": a.format,
                                  "bytes": a.record.get("bytes"), "sha256": a.sha256[:16]} for a in bundle.artifacts]},
        "settings": settings.as_dict(),
        "method": {
            "clock": "time.perf_counter_ns (monotonic) around each synchronous call; outputs are host arrays, "
                     "so device work has finished when the clock is read (TensorRT synchronizes its stream)",
            "inputs": "rotated over distinct batches of real images preprocessed by edgeinfer's own "
                      "dicomio + preprocess (never zeros)",
            "blocks": f"{settings.blocks} blocks per row; in each, the runtime call and the raw backend call are "
                      "timed in alternating order (ABBA)",
            "spread": "range of the per-block p50s; two rows whose ranges overlap are 'no difference'",
            "throughput": "images/s = batch x calls / time spent in calls (one synchronous stream)",
            "peak_rss": rss.method,
            "cold_start": "in this process: the backend library import is timed once per backend (first use); "
                          "session creation and first inference per row",
        },
        "data": data_info,
        "machine": machine,
        "rows": rows,
        "targets": {OPENVINO_TARGET_KEY: openvino_speedup_target(rows)},
        "e2e": e2e,
        "notes": notes,
    })
