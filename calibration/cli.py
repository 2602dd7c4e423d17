"""``edgeinfer calibrate`` and ``edgeinfer validate``: argparse definitions and handlers.

``edgeinfer/cli.py`` calls :func:`add_parsers` from ``build_parser``. Importing this module
is light (argparse only); the work is imported inside the handlers, so ``edgeinfer --help``
never loads onnx, onnxruntime's quantization tools or the FP16 converter.

Exit status: 0 all done and every precision passed the gate; 2 finished, but a precision
failed the gate (or could not run here); 1 could not run.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from edgeinfer._io import emit_json

METHODS = ("minmax", "entropy", "percentile")


def _wrap(text: str) -> str:
    return textwrap.fill(text, 88)


def _examples(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def _stages(enabled: bool):
    """Progress display per stage: rich bars on stderr, only when stderr is a terminal."""
    from edgeinfer.console import progress_bar

    if not enabled or not sys.stderr.isatty():
        return None
    return lambda description, total: progress_bar(max(int(total), 1), description, True)


def _gate(args):
    from edgeinfer.gate import GateConfig

    try:
        return GateConfig(min_agreement=args.min_agreement, max_auc_drop=args.max_auc_drop,
                          max_sensitivity_drop=args.max_sensitivity_drop, max_abs_score_diff=args.max_score_diff,
                          require_labels=args.require_labels, min_heatmap_r=args.min_heatmap_r,
                          max_pointing_drop=args.max_pointing_drop, min_dice_vs_fp32=args.min_dice_vs_fp32,
                          max_volume_rel_diff=args.max_volume_rel_diff,
                          max_volume_abs_diff_ml=args.max_volume_abs_diff_ml)
    except ValueError as exc:
        from edgeinfer.errors import UsageError

        raise UsageError(str(exc)) from None


def _fmt(x, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


# --- calibrate -------------------------------------------------------------------------------------
def cmd_calibrate(args) -> int:
    from edgeinfer._lazy import lazy_import
    from edgeinfer.errors import UsageError

    if args.skip_fp16 and args.skip_int8:
        raise UsageError("--skip-fp16 and --skip-int8 together leave nothing to do")
    if args.samples < 1:
        raise UsageError("--samples must be at least 1")
    if not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data}: no such folder")
    lazy_import("onnx", extra="export", purpose="edgeinfer calibrate")
    from .calibrate import FallbackConfig, calibrate_bundle
    from .quantize import CalibrationMethod, Fp16Config, Int8Config

    try:
        int8 = None if args.skip_int8 else Int8Config(method=CalibrationMethod(args.method), percentile=args.percentile,
                                                       batch_size=args.batch_size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    fallback = None if (args.no_fallback or args.skip_int8) else FallbackConfig(
        gate=_gate(args), check_data=args.check_data, labels=args.labels, max_kept=args.max_kept)
    result = calibrate_bundle(args.bundle, args.data, out=args.out, overwrite=args.overwrite, samples=args.samples,
                              seed=args.seed, int8=int8, fp16=None if args.skip_fp16 else Fp16Config(),
                              fallback=fallback, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                              stages=_stages(not args.no_progress))
    summary = result.summary()
    if args.json:
        emit_json(summary, "-")
    else:
        cal = result.calibration
        sel = cal["set"]["selection"]
        where = (f"in {sum(1 for s in cal['set']['strata'] if s['selected'])} strata" if "strata" in cal["set"]
                 else "(slices spread through each chosen series)")
        print(f"calibrated {result.bundle_dir}: {cal.get('method') or 'fp16 only'}, {sel['samples']} images from "
              f"{sel['studies']} studies {where}{' (tensor cache hit)' if result.cache_hit else ''}")
        if result.fp16:
            f = result.fp16
            print(f"  fp16  model.fp16.onnx  FP32 inputs/outputs, {f.fp16_initializers} FP16 weights, kept in FP32: "
                  f"{', '.join(f.kept_fp32_ops) or 'nothing'}; max |diff| vs fp32 {_fmt(f.max_abs_diff, '.2e')}")
        if result.int8:
            i = result.int8
            kept = f"; kept in FP32: {', '.join(i.kept_fp32)}" if i.kept_fp32 else ""
            print(f"  int8  model.int8.onnx  {i.form.quant_form}, {i.form.per_channel_weights} per-channel weights, "
                  f"{i.form.activation_quantizers} per-tensor activations; max |diff| vs fp32 "
                  f"{_fmt(i.max_abs_diff, '.2e')}{kept}")
        if result.int8_check is not None:
            chk = result.int8_check
            verdict = "passed" if chk["passed"] else "FAILED: " + "; ".join(chk["final"]["reasons"])
            print(f"  int8 gate check on {chk['check_data']} ({chk['n_studies']} studies): {verdict}")
        if result.removed:
            print(f"  removed artifacts built from the old graphs: {', '.join(result.removed)}")
        print(f"next: edgeinfer validate {result.bundle_dir} --data HELD_OUT_STUDIES --labels LABELS.csv "
              "(the runtime uses fp16/int8 only after they pass)")
    return 2 if result.int8_passed is False else 0


# --- validate --------------------------------------------------------------------------------------
def _print_report(d: dict, labels: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    g = d["gate"]
    console.print(f"[bold]edgeinfer validate[/] {d['bundle']['name']} {d['bundle']['version']} on {d['data']['studies']} "
                  f"studies ({d['data']['images']} images) from {d['data']['path']}; gate: agreement >= "
                  f"{g['min_agreement']:.1%}, AUC drop <= {g['max_auc_drop']:g}, sensitivity drop <= "
                  f"{g['max_sensitivity_drop']:g}")
    table = Table()
    rows = list(d["precisions"].items()) + list(d["runtime_precisions"].items())
    maps = any(e.get("heatmap_agreement") for _, e in rows)
    seg = any(e.get("segmentation") for _, e in rows)
    for col in ("precision", "ran on", "AUC", "sens", "spec", "agreement", "max |Δ|", "p99 |Δ|",
                *(("pointing", "map r") if maps else ()),
                *(("Dice vs fp32", "volumes within", "Dice vs truth", "vol. error") if seg else ()), "gate"):
        table.add_column(col)
    for name, e in rows:
        ran = e.get("ran_on") or {}
        gate = {True: "[green]passed[/]", False: "[red]FAILED[/]"}.get(e.get("passed"), "[yellow]not run[/]")
        if e.get("reference"):
            gate = "reference"
        table.add_row(name, f"{ran.get('backend') or '-'}/{ran.get('device') or '?'}", _fmt(e.get("auc")),
                      _fmt(e.get("sensitivity"), ".3f"), _fmt(e.get("specificity"), ".3f"),
                      _fmt(e.get("agreement"), ".2%"), _fmt(e.get("max_abs_score_diff"), ".2e"),
                      _fmt(e.get("p99_abs_score_diff"), ".2e"),
                      *((_fmt((e.get("pointing_game") or {}).get("score"), ".3f"),
                         _fmt((e.get("heatmap_agreement") or {}).get("r_mean"), ".3f")) if maps else ()),
                      *((_fmt((e.get("segmentation") or {}).get("mean_dice_vs_fp32"), ".4f"),
                         _fmt((e.get("segmentation") or {}).get("volume_within_tolerance"), ".1%"),
                         _fmt(((e.get("segmentation") or {}).get("truth") or {}).get("mean_dice"), ".3f"),
                         _fmt(((e.get("segmentation") or {}).get("truth") or {}).get("median_volume_error"), ".1%"))
                        if seg else ()), gate)
    console.print(table)
    for name, e in rows:
        for r in e.get("reasons") or []:
            console.print(f"  {name}: {r}", markup=False)
        if e.get("skipped"):
            console.print(f"  {name}: not run here: {e['skipped']}", markup=False)
    notes = sorted({n for _, e in rows for n in (e.get("notes") or []) if n != "reference precision"})
    for n in notes:
        console.print(f"  note: {n}", markup=False)
    if not labels:
        console.print("  no --labels: AUC, sensitivity and specificity were not measured", markup=False)


def cmd_validate(args) -> int:
    from edgeinfer.bundle import load_bundle
    from edgeinfer.errors import UsageError

    from .validate import RuntimeTarget, record_validation, validate_bundle

    if not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data}: no such folder")
    if args.labels and not Path(args.labels).is_file():
        raise UsageError(f"--labels {args.labels}: no such file")
    bundle = load_bundle(args.bundle)
    runtime = [RuntimeTarget.parse(t) for t in (args.runtime_precision or [])]
    report = validate_bundle(bundle, args.data, labels_path=args.labels, gate=_gate(args),
                             artifacts=args.precision or None, runtime=runtime, device=args.device,
                             threads=args.threads, batch_size=args.batch_size, backend=args.backend,
                             stages=_stages(not args.no_progress), pointing_margin_mm=args.pointing_margin_mm)
    d = report.as_dict()
    if not args.no_record:
        record_validation(bundle.path, report)
    if args.json:
        emit_json(d, args.json)
    if args.json != "-":
        _print_report(d, bool(args.labels))
        if not args.labels and (Path(args.data) / "labels.csv").is_file():
            print(f"  hint: {Path(args.data) / 'labels.csv'} exists; pass --labels to measure AUC and sensitivity")
        print("verdicts recorded in the bundle's manifest" if not args.no_record else "not recorded (--no-record)")
    return 0 if report.passed else 2


# --- parsers ---------------------------------------------------------------------------------------
def _gate_args(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("accuracy gate (defaults: agreement >= 0.995, AUC drop <= 0.005, sensitivity drop <= 0.005; "
                             "with heatmaps: map r >= 0.9, pointing-game drop <= 2 points; segmentation: Dice vs "
                             "FP32 >= 0.98, volumes within max(2 %, 0.1 mL))")
    g.add_argument("--min-agreement", type=float, default=0.995, metavar="F",
                   help="fraction of studies whose priority must equal FP32's")
    g.add_argument("--max-auc-drop", type=float, default=0.005, metavar="F")
    g.add_argument("--max-sensitivity-drop", type=float, default=0.005, metavar="F",
                   help="at the bundle's operating point (0.005 = half a percentage point)")
    g.add_argument("--max-score-diff", type=float, default=None, metavar="F",
                   help="also require max |score - FP32 score| <= F (off by default); with calibrate, a margin "
                        "that makes the INT8 check generalise beyond the check studies")
    g.add_argument("--require-labels", action="store_true",
                   help="fail the gate when AUC and sensitivity could not be measured (no --labels)")
    g.add_argument("--min-heatmap-r", type=float, default=0.9, metavar="R",
                   help="bundles with heatmaps: mean Pearson r of each precision's maps with FP32's (default 0.9)")
    g.add_argument("--max-pointing-drop", type=float, default=0.02, metavar="F",
                   help="bundles with heatmaps: largest drop of the pointing game against FP32 (default 0.02 = 2 points)")
    g.add_argument("--min-dice-vs-fp32", type=float, default=0.98, metavar="F",
                   help="segmentation bundles: mean Dice of each precision's masks with FP32's (default 0.98)")
    g.add_argument("--max-volume-rel-diff", type=float, default=0.02, metavar="F",
                   help="segmentation bundles: a study's volume within max(F x FP32's, --max-volume-abs-diff-ml) "
                        "of FP32's (default 0.02)")
    g.add_argument("--max-volume-abs-diff-ml", type=float, default=0.1, metavar="ML", help="(default 0.1 mL)")


def add_parsers(subparsers, formatter_class=argparse.RawDescriptionHelpFormatter) -> None:
    """Add ``calibrate`` and ``validate`` to ``edgeinfer``'s subparsers."""
    s = subparsers.add_parser(
        "calibrate", help="add FP16 and INT8 (Q/DQ) graphs calibrated on DICOM studies to a bundle",
        formatter_class=formatter_class,
        description=_wrap("Select calibration images stratified by modality, manufacturer, photometric interpretation "
                    "and body part; preprocess them with the bundle's own spec; write an FP16 graph (FP32 "
                    "inputs/outputs) and a signed symmetric INT8 Q/DQ graph (per-channel weights, per-tensor "
                    "activations: the form TensorRT accepts) into the bundle. If the INT8 graph fails the accuracy "
                    "gate on the check studies, the most sensitive layers are kept in FP32 until it passes."),
        epilog=_examples("""
            edgeinfer calibrate my-bundle/ --data calib-studies/
            edgeinfer calibrate my-bundle/ --data calib-studies/ --method entropy --samples 300 --out my-bundle-q/
            edgeinfer calibrate my-bundle/ --data calib/ --check-data held-out/ --labels held-out/labels.csv
        """) + "\n\nexit status: 0 done; 2 done, but the INT8 graph fails the gate check; 1 could not run")
    s.add_argument("bundle", help="bundle folder with an fp32 ONNX artifact")
    s.add_argument("--data", required=True, help="folder of DICOM studies to calibrate on (walked recursively)")
    s.add_argument("--method", choices=METHODS, default="minmax", help="INT8 activation range method (default minmax)")
    s.add_argument("--percentile", type=float, default=99.999, help="for --method percentile (default 99.999)")
    s.add_argument("--samples", type=int, default=200, help="calibration images to select (default 200)")
    s.add_argument("--seed", type=int, default=0, help="selection seed (default 0)")
    s.add_argument("--out", default=None, help="write a new bundle here instead of updating BUNDLE in place")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.add_argument("--cache-dir", default=None, help="tensor cache folder (default $EDGEINFER_CACHE/calibration, ~/.cache/edgeinfer/calibration)")
    s.add_argument("--no-cache", action="store_true", help="neither read nor write the tensor cache")
    s.add_argument("--batch-size", type=int, default=8, help="images per calibration batch (default 8)")
    s.add_argument("--skip-fp16", action="store_true", help="do not build the FP16 graph")
    s.add_argument("--skip-int8", action="store_true", help="do not build the INT8 graph")
    fb = s.add_argument_group("INT8 gate check and mixed-precision fallback")
    fb.add_argument("--check-data", default=None,
                    help="held-out studies to check the INT8 graph on (default: the calibration images)")
    fb.add_argument("--labels", default=None, help="labels CSV (study_uid,label) for --check-data")
    fb.add_argument("--no-fallback", action="store_true", help="no gate check, no layers kept in FP32")
    fb.add_argument("--max-kept", type=int, default=None, help="keep at most this many layers in FP32")
    _gate_args(s)
    s.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_calibrate)

    s = subparsers.add_parser(
        "validate", help="compare every precision in a bundle with FP32 on the same studies; record the verdicts",
        formatter_class=formatter_class,
        description=_wrap("Runs FP32 and every other artifact of the bundle through the runtime (same reader, "
                    "preprocessing, runner and triage code) on the studies in --data and compares them: AUC, "
                    "sensitivity and specificity at the operating point (with --labels), agreement of priorities "
                    "with FP32, max and p99 |score difference|, overall and per stratum. The verdicts of the "
                    "accuracy gate go into the manifest; the runtime refuses a precision that failed or was "
                    "never validated."),
        epilog=_examples("""
            edgeinfer validate my-bundle/ --data held-out/ --labels held-out/labels.csv
            edgeinfer validate my-bundle/ --data held-out/ --json report.json
            edgeinfer validate my-bundle/ --data held-out/ --runtime-precision openvino:bf16
        """) + "\n\nexit status: 0 every precision passed; 2 some precision failed the gate or could not run here; "
               "1 could not run")
    s.add_argument("bundle", help="bundle folder")
    s.add_argument("--data", required=True, help="folder of DICOM studies (not the calibration set)")
    s.add_argument("--labels", default=None, help="CSV with study_uid,label columns (e.g. a phantom set's labels.csv)")
    s.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON to OUT ('-' for stdout)")
    s.add_argument("--precision", action="append", metavar="ARTIFACT_ID",
                   help="validate only this artifact (repeatable; default: every artifact)")
    s.add_argument("--runtime-precision", action="append", metavar="BACKEND:PRECISION",
                   help="also validate a precision a backend applies at run time, e.g. openvino:bf16 (repeatable)")
    s.add_argument("--backend", default=None, help="backend for the artifacts (default: the first that can run each)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--no-record", action="store_true", help="do not write the verdicts into the manifest")
    s.add_argument("--pointing-margin-mm", type=float, default=10.0, metavar="MM",
                   help="bundles with heatmaps: a peak this close to the finding's box points at it (default 10)")
    _gate_args(s)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_validate)


__all__ = ["add_parsers", "cmd_calibrate", "cmd_validate"]
