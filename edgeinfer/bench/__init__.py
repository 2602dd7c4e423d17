"""``edgeinfer bench``: how fast is each backend and precision on this machine, and at what accuracy cost.

For every (backend, precision, batch) it measures, in one process and one run:

* latency (min, mean, p50, p90, p95, p99, max) and throughput, with ``time.perf_counter_ns``
  (monotonic) around each synchronous call, after a warm-up, with the inputs rotated over
  several *real* images read and preprocessed by the runtime's own intake stage
  (:class:`edgeinfer.intake.Intake`; never zeros);
* the raw backend call (:meth:`Runner.raw_call`: ONNX Runtime's ``session.run``, OpenVINO's
  ``InferRequest.infer``, TensorRT's execute with its copies and a stream synchronize) on the
  same artifact and the same inputs, in alternating blocks with the runtime call (ABBA order),
  so both see the same machine; ``overhead_ratio`` = runtime p50 / raw p50;
* run-to-run spread: the measurement is split into ``blocks`` blocks and the per-block p50s are
  kept. Two rows whose per-block p50 ranges overlap are reported as "no difference";
* cold start: bundle load (manifest + sha256 of every artifact), first import of the backend
  library, session or engine creation (``Runner.activate_ms``) and the first inference;
* peak resident memory per row (Linux ``VmHWM``, reset before each row through
  ``/proc/self/clear_refs``; elsewhere ``getrusage`` whose peak is never reset, and the report
  says which), and device memory where there is an NVIDIA GPU;
* the accuracy figures from the bundle's validation records, or "not validated".

A (backend, precision) that cannot run here gets a row with ``status: "unavailable"`` and the
reason; nothing is invented for it. End-to-end mode times reading, decoding, preprocessing,
inference and postprocessing per image over a folder of studies, serially and with decoding
overlapped with inference in a small thread pool.

The backends are the registry's (:func:`edgeinfer.backends.registered`), in report order.

One module per job; each imports only from the ones above it in this list:

* :mod:`.stats`: percentiles, latency summaries, block spread, "no difference" (pure)
* :mod:`.memory`: peak RSS (``/proc`` clear_refs / ``VmHWM``) and GPU memory probes
* :mod:`.plan`: :class:`BenchSettings`, :class:`Case`, ``--backend``/``--precision`` lists, :func:`plan_cases`
* :mod:`.accuracy`: the accuracy columns from the bundle's validation records
* :mod:`.inputs`: real input images through the intake stage, and the rotated feeds
* :mod:`.measure`: one row (:func:`measure_case`)
* :mod:`.e2e`: DICOM file to priority (:func:`run_e2e`)
* :mod:`.compare`: speed-up against ORT fp32 and the fast CPU path target
* :mod:`.matrix`: the whole run (:func:`run`) and the report's format version
* :mod:`.report`: Markdown and JSON
* :mod:`.plot`: the PNG
* :mod:`.cli`: ``edgeinfer bench`` (:func:`add_parser`, :func:`cmd_bench`)

Importing this package imports only the standard library and numpy; backends load their
libraries when a row needs them, matplotlib only when a plot is asked for.
"""
from __future__ import annotations

from .accuracy import accuracy_for
from .cli import add_parser, cmd_bench
from .compare import openvino_speedup_target
from .e2e import run_e2e
from .inputs import load_inputs, make_feeds
from .matrix import run
from .measure import measure_case
from .memory import PeakRss
from .plan import BenchSettings, Case, plan_cases
from .plot import render_plot
from .report import render_markdown, write_json
from .stats import block_spread, distribution, latency_stats, no_difference, percentile

# outside __all__, used as edgeinfer.bench.X by the benchmark suites, tests and scripts
from .accuracy import ACCURACY_KEYS, gate_ok  # noqa: F401
from .cli import EXAMPLES, exit_code, settings_from_args  # noqa: F401
from .compare import OPENVINO_TARGET_KEY, OPENVINO_TARGET_SPEEDUP  # noqa: F401
from .e2e import STAGES  # noqa: F401
from .inputs import Inputs, discover_files  # noqa: F401
from .matrix import REPORT_VERSION  # noqa: F401
from .memory import gpu_memory_used_mb  # noqa: F401
from .plan import BACKEND_ORDER, BASELINE, PRECISIONS, SHORT, backend_names, parse_batches, parse_list  # noqa: F401
from .report import _gate_cell, row_label  # noqa: F401
from .stats import split  # noqa: F401

def __getattr__(name: str):
    """``BACKENDS``: the registered backends in report order, looked up when asked for (so that
    importing this package does not load the registry)."""
    if name == "BACKENDS":
        return backend_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BenchSettings", "Case", "PeakRss", "run", "plan_cases", "measure_case", "run_e2e", "accuracy_for",
           "latency_stats", "percentile", "block_spread", "no_difference", "distribution", "openvino_speedup_target",
           "render_markdown", "render_plot", "write_json", "add_parser", "cmd_bench", "load_inputs", "make_feeds"]
