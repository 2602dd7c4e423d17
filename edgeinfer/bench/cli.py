"""``edgeinfer bench`` on the command line: the parser, its settings, the printed summary, the exit
status, and the handler that writes the reports asked for."""
from __future__ import annotations

import argparse
import sys
import textwrap

from .._io import atomic_write
from ..errors import UsageError
from .compare import OPENVINO_TARGET_KEY
from .e2e import STAGES
from .matrix import run
from .plan import PRECISIONS, BenchSettings, backend_names, parse_batches, parse_list
from .plot import render_plot
from .report import _f, _gate_cell, _overhead_cell, _speedup_cell, render_markdown, row_label, write_json


EXAMPLES = """\
edgeinfer bench                                   # embedded bundle, every backend and precision, batch 1
edgeinfer bench my-bundle/ --backend ort --precision fp32,fp16,int8 --batch 1,4
edgeinfer bench --backend all --threads 2 --json bench.json --report bench.md --plot bench.png
edgeinfer bench my-bundle/ --data studies/ --e2e all      # plus DICOM-to-priority end to end
edgeinfer bench --duration-s 0.2 --warmup-s 0.1            # a quick smoke run"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``edgeinfer bench`` on the CLI's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "bench", formatter_class=fmt,
        help="latency, throughput, cold start and memory per backend x precision x batch, beside accuracy",
        description="Benchmark a bundle: every (backend, precision, batch) is timed against the raw backend call "
                    "in the same run, with run-to-run spread, cold start, peak memory and the bundle's accuracy "
                    "records. Rows that cannot run here are listed with the reason.",
        epilog="examples:\n" + textwrap.indent(EXAMPLES, "  ") +
               "\n\nexit status: 0 measured; 2 finished, but a row failed while running or files were rejected "
               "end to end; 1 nothing could be measured")
    s.add_argument("bundle", nargs="?", default=None, help="bundle folder (default: the embedded phantom bundle)")
    s.add_argument("--backend", default="all", help="ort, openvino, trt, a comma list, or all (default all)")
    s.add_argument("--precision", default="all", help="fp32, fp16, int8, bf16, a comma list, or all (default all)")
    s.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1)")
    s.add_argument("--warmup-s", type=float, default=1.0, help="warm-up seconds per row before timing (default 1)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--duration-s", type=float, default=None,
                   help="timed seconds per row for each of the runtime and the raw call (default 3)")
    g.add_argument("--iterations", type=int, default=None, help="timed calls per row and side, instead of a duration")
    s.add_argument("--blocks", type=int, default=5, help="blocks per row, for the run-to-run spread (default 5)")
    s.add_argument("--threads", type=int, default=None,
                   help="inference threads for every backend (default: the CPUs this process may use; 0 = each "
                        "backend's own default)")
    s.add_argument("--device", default="cpu", help="ONNX Runtime device: cpu | cuda | tensorrt (default cpu)")
    s.add_argument("--cuda-options", default=None, metavar="KEY=VALUE,...",
                   help="ONNX Runtime CUDA provider settings with --device cuda: iobinding, pinned, graph, tf32, nhwc "
                        "(on/off), conv (exhaustive/heuristic/default), arena (pow2/exact), gpu (ordinal); default "
                        "iobinding=on,pinned=on,graph=on,conv=heuristic,arena=pow2,tf32=off,nhwc=off")
    s.add_argument("--cache-dir", default=None, help="OpenVINO model cache folder (faster cold starts)")
    s.add_argument("--data", default=None, help="DICOM folder: inputs come from it, and end-to-end mode walks it "
                                                "(default: a few generated phantoms)")
    s.add_argument("--images", type=int, default=8, help="distinct real images the inputs rotate over (default 8)")
    s.add_argument("--e2e", choices=("auto", "all", "none"), default="auto",
                   help="end-to-end modes: auto = ORT fp32 and the fastest gated mode; all; none (default auto)")
    s.add_argument("--e2e-workers", type=int, default=2, help="decode threads in the overlapped pass (default 2)")
    s.add_argument("--e2e-processes", action="store_true",
                   help="the overlapped pass's workers are processes, as with triage --processes (started once; the start is reported apart)")
    s.add_argument("--e2e-repeats", type=int, default=3,
                   help="end-to-end passes over the folder, serial and overlapped alternating (default 3)")
    s.add_argument("--json", default=None, metavar="OUT", help="write the JSON report here ('-' for stdout)")
    s.add_argument("--report", default=None, metavar="OUT.md", help="write the Markdown report here")
    s.add_argument("--plot", default=None, metavar="OUT.png", help="write the PNG plot here (needs matplotlib)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_bench)
    return s


def settings_from_args(args) -> BenchSettings:
    from ..backends import ALIASES
    from ..sysinfo import usable_cpus

    backends = parse_list(args.backend, backend_names(), "backend", aliases=ALIASES)  # all: every registered one
    precisions = parse_list(args.precision, PRECISIONS, "precision")
    if args.iterations is not None and args.iterations < 1:
        raise UsageError("--iterations must be at least 1")
    duration = 3.0 if args.duration_s is None else args.duration_s
    if args.iterations is None and not duration > 0:
        raise UsageError("--duration-s must be > 0")
    if not args.warmup_s >= 0:
        raise UsageError("--warmup-s must be >= 0")
    if min(args.blocks, args.images, args.e2e_workers, args.e2e_repeats) < 1:
        raise UsageError("--blocks, --images, --e2e-workers and --e2e-repeats must be at least 1")
    if args.threads is not None and args.threads < 0:
        raise UsageError("--threads must be >= 0 (0 = each backend's default)")
    threads = usable_cpus() if args.threads is None else (args.threads or None)
    if args.cuda_options:
        from ..backends.onnxruntime import CudaSettings

        CudaSettings.parse(args.cuda_options)  # a typo fails here, not after minutes of measuring
    return BenchSettings(backends=tuple(backends), precisions=tuple(precisions), batches=tuple(parse_batches(args.batch)),
                         warmup_s=args.warmup_s, duration_s=None if args.iterations else duration,
                         iterations=args.iterations, blocks=args.blocks, threads=threads, device=args.device,
                         cuda_options=args.cuda_options,
                         cache_dir=args.cache_dir, images=args.images, data=args.data, e2e=args.e2e,
                         e2e_workers=args.e2e_workers, e2e_processes=args.e2e_processes,
                         e2e_repeats=args.e2e_repeats)


def _print_summary(report: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a runtime dependency; plain text if it is missing anyway
        print(render_markdown(report))
        return
    console = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 160)
    b, m = report["bundle"], report["machine"]
    console.print(f"[bold]edgeinfer bench[/] {b['name']} {b['version']} | {m['cpu']['model']}, "
                  f"{m['cpu']['usable_cpus']} CPUs | threads {report['settings'].get('threads') or 'default'}")
    table = Table()
    for col in ("backend / precision", "batch", "p50 ms", "p99 ms", "spread ms", "img/s", "vs ORT fp32",
                "overhead", "gate"):
        table.add_column(col, overflow="fold")
    for r in report["rows"]:
        if r["status"] != "ok":
            continue
        sp = r["spread"]
        table.add_row(row_label(r), str(r["batch"]), _f(r["p50_ms"], 3), _f(r["p99_ms"], 3),
                      f"{_f(sp['min_ms'], 3)}-{_f(sp['max_ms'], 3)}", _f(r["throughput"], 1), _speedup_cell(r),
                      _overhead_cell(r), _gate_cell(r["accuracy"], r["backend"]))
    console.print(table)
    seen = set()
    for r in report["rows"]:
        if r["status"] != "ok" and (r["backend"], r["precision"], r.get("reason")) not in seen:
            seen.add((r["backend"], r["precision"], r.get("reason")))
            console.print(f"  {r['status']}: {row_label(r)}: {r.get('reason')}", markup=False)
    for e in report.get("e2e", []):
        if e.get("serial"):
            ser = e["serial"]
            parts = ", ".join(f"{st} {_f(ser['per_image_ms'][st], 1)}" for st in STAGES)
            console.print(f"end to end {row_label(e)}: {e['images']} images, {e['studies']} studies; per image ms: "
                          f"{parts}; {_f(ser['studies_per_s'], 2)} studies/s serial, "
                          f"{_f(e['overlapped']['studies_per_s'], 2)} overlapped", markup=False)
    t = report["targets"][OPENVINO_TARGET_KEY]
    if t.get("evaluated") and t.get("best"):
        console.print(f"best gated OpenVINO mode: {t['best']['precision']} {t['speedup']:.2f}x ORT fp32 "
                      f"(target {t['target']:g}x: {'met' if t['met'] else 'not met'})", markup=False)
    for n in report.get("notes", []):
        console.print(f"note: {n}", markup=False)


def exit_code(report: dict) -> int:
    rows = report["rows"]
    if not any(r["status"] == "ok" for r in rows):
        return 1
    failed = any(r["status"] == "error" for r in rows) or any(
        e.get("status") == "error" or e.get("errors") for e in report.get("e2e", []))
    return 2 if failed else 0


def cmd_bench(args) -> int:
    """The ``edgeinfer bench`` handler: measure, print a summary, write the reports asked for."""
    from ..console import progress_bar

    settings = settings_from_args(args)
    if args.plot:  # fail before minutes of measuring, not after
        from .._lazy import lazy_import

        lazy_import("matplotlib", extra="dev", purpose="edgeinfer bench --plot")
    n_rows = len(settings.backends) * len(settings.precisions) * len(settings.batches)
    with progress_bar(n_rows, f"bench {n_rows} rows", not args.no_progress) as advance:
        report = run(args.bundle, settings, progress=advance)
    if args.json:
        write_json(report, args.json)
    if args.report:
        atomic_write(args.report, render_markdown(report))
    if args.plot:
        render_plot(report, args.plot)
    if args.json != "-":
        _print_summary(report)
        written = [p for p in (args.json, args.report, args.plot) if p]
        if written:
            print("wrote " + ", ".join(written))
    return exit_code(report)

