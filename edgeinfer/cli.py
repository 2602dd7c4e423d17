"""``edgeinfer``: one entry point, one subcommand per job.

Exit status: 0 all done; 2 finished, but some inputs were rejected; 1 could not run.
A subcommand whose extra is not installed says which extra to install.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import Callable, Iterator

from . import __version__
from ._io import atomic_write, check_output_path, emit_json
from .errors import EdgeInferError, UsageError

log = logging.getLogger("edgeinfer")


# --- shared helpers --------------------------------------------------------------------------
def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # piped output (CI logs, files) gets a wide, stable layout instead of rich's 80 columns
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=None if stream.isatty() else 132)


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (only on a terminal); yields an ``advance(n)`` callback."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=_console(stderr=True), transient=True) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else (logging.INFO if verbose == 1 else logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("edgeinfer")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # pydicom's own log and warnings can echo header values (patient names): never show them
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    logging.getLogger("pydicom").propagate = False


def _load_bundle(path, trust=None):
    from .bundle import load_bundle

    return load_bundle(path, trust=trust)


# --- phantom -------------------------------------------------------------------------------------
def cmd_phantom(args) -> int:
    from . import phantom

    if args.n < 1:
        raise UsageError("--n must be at least 1")
    out = Path(args.out_dir)
    with progress_bar(args.n, f"writing {args.n} phantom images", not args.no_progress) as advance:
        rows = phantom.generate(out, args.n, args.seed, max_size=args.max_size, progress=advance)
    studies = {r["study_uid"] for r in rows}
    urgent = {r["study_uid"] for r in rows if r["label"] == "urgent"}
    print(f"wrote {len(rows)} images in {len(studies)} studies ({len(urgent)} urgent) to {out}; "
          f"labels in {out / 'labels.csv'}")
    return 0


# --- inspect -------------------------------------------------------------------------------------
def cmd_inspect(args) -> int:
    from .bundle import describe

    bundle = _load_bundle(args.bundle, args.trust)
    if args.json:
        emit_json(bundle.manifest, "-")
        return 0
    from rich.table import Table

    table = Table(title=f"bundle {bundle.path}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for k, v in describe(bundle):
        table.add_row(k, v)
    _console().print(table)
    print("integrity: every artifact's size and sha256 match the manifest")
    sig = bundle.signature
    print(f"signature: verified by key {sig.get('key')} ({sig['key_id']})" if sig.get("verified")
          else f"signature: {sig.get('note')}")
    return 0


# --- preview -------------------------------------------------------------------------------------
def cmd_preview(args) -> int:
    import cv2
    import numpy as np

    from . import dicomio
    from .errors import InputError
    from .preprocess import PreprocessSpec, prepare

    out = check_output_path(args.out, option="--out", inputs=[args.file])
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        raise UsageError(f"--out {out}: name a .png (or .jpg, .tif, .bmp) file")
    if args.npy:
        check_output_path(args.npy, option="--npy", inputs=[args.file])
    bundle = _load_bundle(args.bundle, args.trust)
    spec = PreprocessSpec.from_manifest(bundle.manifest["preprocessing"])
    try:
        prepared = prepare(dicomio.read_dataset(args.file), spec)
    except InputError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 2
    img = np.clip(np.rint(prepared.display * 255.0), 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(out.suffix.lower(), img)
    if not ok:
        raise UsageError(f"could not encode {out} as {out.suffix}; use a .png path")
    atomic_write(out, encoded.tobytes())
    if args.npy:
        buf = io.BytesIO()
        np.save(buf, prepared.tensor)
        atomic_write(args.npy, buf.getvalue())
    w = prepared.window
    print(f"wrote {out}: {img.shape[1]}x{img.shape[0]}, the image as the model sees it "
          f"(window {w.get('source')}" + (f" c={w['center']} w={w['width']}" if "center" in w else "") +
          f", {'inverted MONOCHROME1, ' if prepared.inverted else ''}frame {prepared.frame}, "
          f"from {prepared.source_shape[1]}x{prepared.source_shape[0]}); "
          f"tensor = (pixel/255 - {spec.mean}) / {spec.std}")
    for why in w.get("rejected", []):
        print(f"  window source passed over: {why}")
    return 0


# --- triage --------------------------------------------------------------------------------------
def _runner_for(bundle, args):
    """The runner triage uses: pinned by flags/environment, else the fastest allowed mode here."""
    from . import autoselect
    from .backends import RunnerOptions, select

    backend = None if args.backend in (None, "auto") else args.backend
    precision = None if args.precision in (None, "auto") else args.precision
    sel = autoselect.choose(bundle, threads=args.threads, device=args.device, backend=backend,
                            precision=precision, force=args.force)
    options = RunnerOptions(device=args.device, threads=args.threads, allow_fallback=args.allow_fallback)
    artifact, cls = select(bundle, sel.precision, options, backend=sel.backend)
    if args.force and sel.precision != "fp32":
        from .gate import check_runtime_precision

        verdict = check_runtime_precision(bundle.manifest, cls.name, sel.precision, artifact.record, force=True)
        if verdict.forced:
            sel.forced = verdict.message
            log.warning("%s", verdict.message)
    return cls.create(artifact, options), sel


def _print_worklist(wl, console) -> None:
    from rich.table import Table

    colours = {"STAT": "bold red", "URGENT": "yellow", "INDETERMINATE": "magenta", "ROUTINE": "green"}
    run = wl.run
    console.print(f"[bold]edgeinfer triage[/] {wl.bundle['name']} {wl.bundle['version']} | "
                  f"{run['backend']} {run['provider']} {run['precision']} | batch {run['batch_size']}")
    sig = wl.bundle.get("signature") or {}
    console.print(f"bundle digest {str(wl.bundle.get('digest', ''))[:16]}…: {sig.get('note', 'not verified')}",
                  markup=False)
    sel = run.get("selection")
    if sel:
        console.print(f"mode: {sel['backend']} {sel['precision']}: {sel['reason']}", markup=False)
        if sel.get("forced"):
            console.print(f"[bold red]{sel['forced']}[/]")
    table = Table(show_lines=False)
    for col in ("#", "priority", "score", "study", "images", "modality", "note"):
        table.add_column(col, overflow="fold")
    for i, s in enumerate(wl.studies, 1):
        score = "-" if s["score"] is None else f"{s['score']:.3f}"
        uid = s["study_uid"]
        uid = uid if len(uid) <= 28 else "…" + uid[-27:]
        n = len(s["images"]) + len(s["failed_images"])
        table.add_row(str(i), f"[{colours.get(s['priority'], '')}]{s['priority']}[/]", score, uid, str(n),
                      s["modality"], s.get("reason", ""))
    console.print(table)
    sm = wl.summary
    console.print(f"{sm['files']} files: {sm['images_scored']} images scored in {sm['studies']} studies "
                  f"({', '.join(f'{k} {v}' for k, v in sm['by_priority'].items())}), "
                  f"{sm['skipped']} skipped, {sm['errors']} rejected; {sm['wall_ms'] / 1e3:.1f} s")
    for title, rows in (("rejected", wl.errors), ("skipped", wl.skipped)):
        if not rows:
            continue
        groups: dict[str, list[str]] = {}
        for r in rows:
            groups.setdefault(r["reason"], []).append(r["path"])
        console.print(f"[bold]{title}[/] ({len(rows)}):")
        for reason, paths in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:12]:
            more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
            console.print(f"  {paths[0]}{more}: {reason}", markup=False)
        if len(groups) > 12:
            console.print(f"  … {len(groups) - 12} more reasons; see the JSON output")


def cmd_triage(args) -> int:
    from .triage import DEFAULT_IGNORE, TriageEngine, discover

    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    files = discover(args.inputs)
    if args.output:  # before any work: a bad output path must not cost a whole run, nor destroy an input
        check_output_path(args.output, inputs=[*args.inputs, *files])
    bundle = _load_bundle(args.bundle, args.trust)
    ignore = DEFAULT_IGNORE if args.ignore is None else tuple(x for x in args.ignore.split(",") if x)
    runner, selection = _runner_for(bundle, args)
    with runner:
        engine = TriageEngine(bundle, runner, batch_size=args.batch_size, ignore=ignore)
        with progress_bar(len(files), f"triage {len(files)} files", not args.no_progress) as advance:
            wl = engine.run(files, progress=advance)
    wl.run["selection"] = selection.as_dict()
    if args.labels:
        from .triage import evaluate_worklist, read_study_labels

        wl.summary["evaluation"] = evaluate_worklist(wl.studies, read_study_labels(args.labels),
                                                     bundle.manifest["triage"]["operating_point"])
    unwritten = None
    if args.output:
        try:
            emit_json(wl.as_dict(), args.output)
        except OSError as exc:  # full disk, ulimit -f, a folder that became read-only: keep the results
            unwritten = f"could not write the worklist to {args.output} ({exc.strerror or exc})"
    if args.json:
        emit_json(wl.as_dict(), "-")
    else:
        _print_worklist(wl, _console())
        ev = wl.summary.get("evaluation")
        if ev and ev.get("n"):
            print(f"against {args.labels}: AUC {ev['auc']:.4f} over {ev['n']} studies ({ev['positives']} urgent); "
                  f"at the operating point {ev['threshold']:g}: sensitivity {ev['sensitivity']:.3f}, "
                  f"specificity {ev['specificity']:.3f}")
        if args.output and not unwritten:
            print(f"worklist written to {args.output}")
    if unwritten:
        print(f"edgeinfer triage: {unwritten}; the table above is the whole result of this run, and any "
              "previous file there is unchanged. Free space or fix the path, then run again.", file=sys.stderr)
        return 1
    return wl.exit_code


# --- export --------------------------------------------------------------------------------------
def cmd_export(args) -> int:
    from ._lazy import lazy_import

    lazy_import("torch", extra="export", purpose="edgeinfer export")
    sys.path.insert(0, str(Path.cwd()))  # let --factory name a module in the current project
    from export.onnx_export import describe_report, export_bundle, load_config, load_module, real_inputs_from_dicom

    config = load_config(args.config)
    model = load_module(factory=args.factory, weights=args.weights, torchscript=args.torchscript,
                        exported=args.exported)
    real = None
    if args.data:
        from .triage import discover

        real = real_inputs_from_dicom(discover([args.data]), config)
    source = {k: str(v) for k, v in (("factory", args.factory), ("weights", args.weights),
                                     ("torchscript", args.torchscript), ("exported", args.exported)) if v}
    report = export_bundle(model, config, args.out, real_inputs=real, opset=args.opset,
                           tolerance=args.tolerance, source=source, overwrite=args.overwrite)
    d = describe_report(report)
    if args.json:
        emit_json(d, "-")
    else:
        print(f"exported {d['bundle']} (opset {d['opset']}, {d['onnx_bytes']:,} bytes); "
              f"max |ONNX Runtime - PyTorch| = {d['max_abs_diff_vs_torch']:.2e} over {', '.join(d['checked'])}")
    return 0


# --- build (TensorRT) -------------------------------------------------------------------------------
def cmd_build(args) -> int:
    from export.trt_build import cli_build

    return cli_build(args)


# --- parser --------------------------------------------------------------------------------------
def _examples(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def _add_trust(s: argparse.ArgumentParser) -> None:
    s.add_argument("--trust", default=None, metavar="DIR",
                   help="folder of trusted Ed25519 public keys (*.pub): refuse a bundle not signed by one of them "
                        "(default: $EDGEINFER_TRUST; without either, the bundle is used unverified and the "
                        "worklist says so)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="edgeinfer", formatter_class=fmt,
                                description="Edge inference for medical-imaging AI: DICOM studies in, a triage worklist out.",
                                epilog=_examples("""
                                    edgeinfer phantom studies/ --n 40 --seed 7
                                    edgeinfer triage studies/ --output worklist.json
                                    edgeinfer inspect
                                """))
    p.add_argument("--version", action="version", version=f"edgeinfer {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("--debug", action="store_true", help="show a traceback for internal errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("phantom", help="write synthetic chest radiographs as DICOM (labelled)", formatter_class=fmt,
                       epilog=_examples("edgeinfer phantom out/ --n 100 --seed 1\nedgeinfer phantom out/ --n 8 --max-size 768"))
    s.add_argument("out_dir")
    s.add_argument("--n", type=int, default=20, help="number of images (default 20)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-size", type=int, default=None, help="cap the larger image side (default: detector sizes)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_phantom)

    s = sub.add_parser("inspect", help="show a bundle's manifest and check its integrity", formatter_class=fmt,
                       epilog=_examples("edgeinfer inspect            # the embedded phantom bundle\nedgeinfer inspect my-bundle/ --json"))
    s.add_argument("bundle", nargs="?", default=None)
    s.add_argument("--json", action="store_true", help="print the manifest as JSON")
    _add_trust(s)
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("preview", help="write the image exactly as the model sees it", formatter_class=fmt,
                       epilog=_examples("edgeinfer preview study/img.dcm --out preview.png"))
    s.add_argument("file")
    s.add_argument("--bundle", default=None, help="bundle folder (default: the embedded phantom bundle)")
    s.add_argument("--out", required=True, help="PNG to write")
    s.add_argument("--npy", default=None, help="also save the exact input tensor as .npy")
    _add_trust(s)
    s.set_defaults(func=cmd_preview)

    s = sub.add_parser("triage", help="score DICOM studies and print a triage worklist", formatter_class=fmt,
                       epilog=_examples("""
                           edgeinfer triage studies/
                           edgeinfer triage studies/ --output worklist.json
                           edgeinfer triage studies/ --bundle my-bundle/ --device cuda --allow-fallback
                       """) + "\n\nexit status: 0 all files processed; 2 finished, some files rejected; 1 could not run")
    s.add_argument("inputs", nargs="+", help="DICOM files or folders (walked recursively)")
    s.add_argument("--bundle", default=None, help="bundle folder (default: the embedded phantom bundle)")
    _add_trust(s)
    s.add_argument("--output", "-o", default=None, help="write the worklist JSON here")
    s.add_argument("--json", action="store_true", help="print the worklist JSON instead of the table")
    s.add_argument("--backend", default=os.environ.get("EDGEINFER_BACKEND", "auto"),
                   help="onnxruntime | openvino | tensorrt | auto (default: $EDGEINFER_BACKEND or auto = "
                        "the fastest validated mode on this machine)")
    s.add_argument("--precision", default=os.environ.get("EDGEINFER_PRECISION", "auto"),
                   help="fp32 | fp16 | int8 | bf16 | auto (default: $EDGEINFER_PRECISION or auto)")
    s.add_argument("--force", action="store_true",
                   help="run a precision that was not validated or failed the accuracy gate (recorded in the worklist)")
    s.add_argument("--device", default="cpu", help="cpu | cuda | tensorrt (onnxruntime execution providers)")
    s.add_argument("--allow-fallback", action="store_true",
                   help="if the device is unavailable, run on the CPU instead (reported in the worklist)")
    s.add_argument("--threads", type=int, default=None, help="inference threads (default: backend's choice)")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--ignore", default=None,
                   help="comma-separated name patterns listed as skipped without reading "
                        "(default: *.csv,*.json,*.txt,*.md,*.png,*.jpg,.*; '' for none)")
    s.add_argument("--labels", default=None,
                   help="CSV with study_uid,label columns (e.g. a phantom set's labels.csv): report AUC, "
                        "sensitivity and specificity of the worklist's scores")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_triage)

    s = sub.add_parser("export", help="PyTorch model -> verified ONNX bundle (needs the 'export' extra)",
                       formatter_class=fmt, epilog=_examples("""
                           edgeinfer export --factory export.models:phantom_triage_net \\
                               --weights export/weights/phantom_triage.pt \\
                               --config export/configs/phantom-cxr.json --out my-bundle/
                           edgeinfer export --torchscript model.ts --config cfg.json --out b/ --data studies/
                       """))
    s.add_argument("--factory", help="'package.module:function' returning an nn.Module")
    s.add_argument("--weights", help="state_dict file for --factory")
    s.add_argument("--torchscript", help="a TorchScript file (torch.jit.save)")
    s.add_argument("--exported", help="a torch.export program (.pt2)")
    s.add_argument("--config", required=True, help="bundle config JSON: labels, triage, applies_to, preprocessing")
    s.add_argument("--out", required=True, help="bundle folder to create")
    s.add_argument("--data", help="DICOM folder: a few real images are compared too, not only random input")
    s.add_argument("--opset", type=int, default=17)
    s.add_argument("--tolerance", type=float, default=1e-4, help="max |ONNX - PyTorch| allowed (default 1e-4)")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("build", help="build a TensorRT plan for this GPU from a bundle's graph (needs the 'trt' extra)",
                       formatter_class=fmt, epilog=_examples("""
                           edgeinfer build my-bundle/ --precision fp16
                           edgeinfer build my-bundle/ --precision int8 --batch 1,4,8 --workspace 1024
                           edgeinfer build my-bundle/ --precision fp16 --dla-core 0 --batch 4
                       """))
    from .signing import add_parsers as add_signing_parsers

    add_signing_parsers(sub, formatter_class=fmt)

    from export.trt_build import add_arguments as add_build_arguments  # argparse only; TensorRT loads at build time

    add_build_arguments(s)
    s.set_defaults(func=cmd_build)

    from calibration.cli import add_parsers as add_calibration_parsers  # argparse only; heavy imports at run time

    add_calibration_parsers(sub, formatter_class=fmt)

    from .bench import add_parser as add_bench_parser

    add_bench_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except EdgeInferError as exc:
        print(f"edgeinfer {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: say so plainly; the traceback only on request
        if args.debug:
            raise
        print(f"edgeinfer {args.command}: internal error {exc.__class__.__name__}: {exc} "
              "(run with --debug for a traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
