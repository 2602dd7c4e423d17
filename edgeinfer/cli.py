"""``edgeinfer``: one entry point, one subcommand per job.

Exit status: 0 all done; 2 finished, but some inputs were rejected; 1 could not run.
A subcommand whose extra is not installed says which extra to install.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import os
import sys
import textwrap
from pathlib import Path

from . import __version__
from . import triton as triton_policy
from ._io import atomic_write, check_output_path, emit_json
from .console import console, progress_bar
from .errors import EdgeInferError, MissingDependency, UsageError
from .sysinfo import tune_allocator

log = logging.getLogger("edgeinfer")


# --- shared helpers --------------------------------------------------------------------------
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
    if args.kind == "ct-head":
        from .phantom.ct_head import generate_ct

        if args.max_size is not None:
            raise UsageError("--max-size is for radiographs; a head CT takes --size (slice rows and columns)")
        with progress_bar(args.n, f"writing {args.n} head CT studies", not args.no_progress) as advance:
            rows = generate_ct(out, args.n, args.seed, size=args.size or 512, progress=advance)
        print(f"wrote {len(rows)} head CT studies ({sum(r['slices'] for r in rows)} slices, "
              f"{sum(r['label'] == 'urgent' for r in rows)} with a bleed) to {out}; labels in {out / 'labels.csv'}, "
              "masks beside each series")
        return 0
    if args.size is not None:
        raise UsageError("--size is for --kind ct-head; radiographs take --max-size")
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
    console().print(table)
    print("integrity: every artifact's size and sha256 match the manifest")
    sig = bundle.signature
    print(f"signature: verified by key {sig.get('key')} ({sig['key_id']})" if sig.get("verified")
          else f"signature: {sig.get('note')}")
    return 0


# --- preview -------------------------------------------------------------------------------------
def cmd_preview(args) -> int:
    import cv2
    import numpy as np

    from .errors import InputError
    from .intake import Intake
    from .preprocess import PreprocessSpec

    out = check_output_path(args.out, option="--out", inputs=[args.file])
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        raise UsageError(f"--out {out}: name a .png (or .jpg, .tif, .bmp) file")
    if args.npy:
        check_output_path(args.npy, option="--npy", inputs=[args.file])
    bundle = _load_bundle(args.bundle, args.trust)
    if bundle.manifest.get("task") == "segmentation":
        raise UsageError(f"preview shows one image as a classifier sees it; bundle {bundle.name} segments a whole "
                         "series: run `edgeinfer triage SERIES_FOLDER --bundle ... --output-dicom DIR` and open the "
                         "SEG beside the series in a viewer")
    spec = PreprocessSpec.from_manifest(bundle.manifest["preprocessing"])
    try:  # no applicability rules: preview shows any image as this model would see it
        prepared = Intake(spec).read(args.file).prepared
    except InputError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 2
    img = np.clip(np.rint(prepared.display * 255.0), 0, 255).astype(np.uint8)
    if args.heatmap:
        img, what = _heatmap_preview(bundle, prepared)
    ok, encoded = cv2.imencode(out.suffix.lower(), img)
    if not ok:
        raise UsageError(f"could not encode {out} as {out.suffix}; use a .png path")
    atomic_write(out, encoded.tobytes())
    if args.npy:
        buf = io.BytesIO()
        np.save(buf, prepared.tensor)
        atomic_write(args.npy, buf.getvalue())
    w = prepared.window
    if args.heatmap:
        print(f"wrote {out}: {img.shape[1]}x{img.shape[0]}, {what}")
        return 0
    print(f"wrote {out}: {img.shape[1]}x{img.shape[0]}, the image as the model sees it "
          f"(window {w.get('source')}" + (f" c={w['center']} w={w['width']}" if "center" in w else "") +
          f", {'inverted MONOCHROME1, ' if prepared.inverted else ''}frame {prepared.frame}, "
          f"from {prepared.source_shape[1]}x{prepared.source_shape[0]}); "
          f"tensor = (pixel/255 - {spec.mean}) / {spec.std}")
    for why in w.get("rejected", []):
        print(f"  window source passed over: {why}")
    return 0


def _heatmap_preview(bundle, prepared):
    """(BGR image, what it shows): the image as the model saw it beside each urgent label's heatmap, from the
    bundle's FP32 graph (the reference) on ONNX Runtime."""
    import cv2
    import numpy as np

    from .backends import RunnerOptions, create_runner
    from .heatmap import CamOutput, preview_panels

    cam_output = CamOutput.of(bundle)
    with create_runner(bundle.artifact(precision="fp32", format="onnx"), RunnerOptions(threads=1),
                       backend="onnxruntime") as runner:
        out = runner.infer({bundle.manifest["inputs"][0]["name"]: prepared.tensor[None].astype(np.float32)})
    probs = np.asarray(out[bundle.manifest["outputs"][0]["name"]], np.float64)[0]
    scores = {lab: float(p) for lab, p in zip(bundle.labels, probs)}
    cam = out.get(cam_output.name)[0] if cam_output is not None else None
    rgb = preview_panels(prepared.display, cam, cam_output, scores, bundle.urgent_labels,
                         threshold=float(bundle.manifest["triage"].get("operating_point", 0.5)))
    what = ("the image as the model saw it and each urgent label's class-activation map (FP32 graph): " +
            ", ".join(f"{lab} {scores[lab]:.3f}" for lab in bundle.urgent_labels))
    if cam_output is None:
        what += f"; bundle {bundle.name} has no class-activation map output (export it again to get one)"
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), what


# --- triage --------------------------------------------------------------------------------------
def _runner_for(bundle, args):
    """The runner triage uses: pinned by flags/environment, else the fastest allowed mode here."""
    from . import autoselect

    backend, extra = triton_policy.backend_choice(args.backend, args.triton_url)
    precision = None if args.precision in (None, "auto") else args.precision
    sel = autoselect.choose(bundle, threads=args.threads, device=args.device, backend=backend,
                            precision=precision, force=args.force, allow_fallback=args.allow_fallback,
                            shared_cpu=args.workers > 0, extra=extra)
    if sel.forced:
        log.warning("%s", sel.forced)
    return sel.create_runner(), sel


def cmd_triton_host(args) -> int:
    from .triton_host import HostPorts, serve

    bundle = _load_bundle(args.bundle, args.trust)
    precision = None if args.precision in (None, "auto") else args.precision
    backend = None if args.backend in (None, "auto") else args.backend

    def ready(name, sel):
        console().print(f"edgeinfer triton-host: serving {name} ({sel.backend} {sel.precision}: "
                        f"{sel.reason}) | HTTP {args.address}:{args.http_port}, gRPC {args.address}:{args.grpc_port}, "
                        f"metrics http://{args.address}:{args.metrics_port}/metrics | Ctrl-C stops", markup=False)

    serve(bundle, backend=backend, precision=precision, threads=args.threads, force=args.force,
          instances=args.instances, max_batch=args.max_batch, on_ready=ready,
          ports=HostPorts(http=args.http_port, grpc=args.grpc_port, metrics=args.metrics_port, address=args.address))
    return 0


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
    from .worklist import volumes_text

    for col in ("#", "priority", "score", "study", "images", "modality", "note"):
        table.add_column(col, overflow="fold")
    for i, s in enumerate(wl.studies, 1):
        score = "-" if s["score"] is None else f"{s['score']:.3f}"
        uid = s["study_uid"]
        uid = uid if len(uid) <= 28 else "…" + uid[-27:]
        n = len(s["images"]) + len(s["failed_images"])
        table.add_row(str(i), f"[{colours.get(s['priority'], '')}]{s['priority']}[/]", score, uid, str(n),
                      s["modality"], "; ".join(x for x in (volumes_text(s), s.get("reason", "")) if x))
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
    from .intake import DEFAULT_IGNORE, discover
    from .triage import engine_for

    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    if args.batch_size < 1 or args.workers < 0:
        raise UsageError(f"--batch-size must be at least 1 and --workers at least 0 "
                         f"({args.batch_size} and {args.workers} given)")
    files = discover(args.inputs)
    if args.output:  # before any work: a bad output path must not cost a whole run, nor destroy an input
        check_output_path(args.output, inputs=[*args.inputs, *files])
    bundle = _load_bundle(args.bundle, args.trust)
    if bundle.preprocessing_note:
        print(f"warning: {bundle.name}: {bundle.preprocessing_note}", file=sys.stderr)
    ignore = DEFAULT_IGNORE if args.ignore is None else tuple(x for x in args.ignore.split(",") if x)
    runner, selection = _runner_for(bundle, args)
    with runner:
        engine = engine_for(bundle, runner, batch_size=args.batch_size, ignore=ignore,
                              workers=args.workers, processes=args.processes)
        with progress_bar(len(files), f"triage {len(files)} files", not args.no_progress) as advance:
            wl = engine.run(files, progress=advance)
    wl.run["selection"] = selection.as_dict()
    if runner.transport_failures:
        print(f"warning: the inference server could not be reached for part of the run ({runner.down or 'it came back'}"
              "); the studies it did not score are INDETERMINATE (human read). Run again once it answers.",
              file=sys.stderr)
    if args.labels:
        from .triage import evaluate_worklist, read_study_labels

        wl.summary["evaluation"] = evaluate_worklist(wl.studies, read_study_labels(args.labels),
                                                     bundle.manifest["triage"]["operating_point"])
        if bundle.manifest.get("task") == "segmentation":
            from .evaluation import evaluate_segmentation, segmentation_truth
            from .worklist import flagged_priorities

            wl.summary["segmentation_evaluation"] = evaluate_segmentation(
                wl.studies, segmentation_truth(args.labels), flagged_priorities(bundle))
    unwritten = None
    if args.output:
        try:
            emit_json(wl.as_dict(), args.output)
        except OSError as exc:  # full disk, ulimit -f, a folder that became read-only: keep the results
            unwritten = f"could not write the worklist to {args.output} ({exc.strerror or exc})"
    if args.output_dicom:
        unwritten = _write_dicom(wl, args.output_dicom) or unwritten
    if args.json:
        emit_json(wl.as_dict(), "-")
    else:
        _print_worklist(wl, console())
        ev, se = wl.summary.get("evaluation"), wl.summary.get("segmentation_evaluation")
        if ev and ev.get("n"):
            if se is None:
                print(f"against {args.labels}: AUC {ev['auc']:.4f} over {ev['n']} studies ({ev['positives']} urgent); "
                      f"at the operating point {ev['threshold']:g}: sensitivity {ev['sensitivity']:.3f}, "
                      f"specificity {ev['specificity']:.3f}")
            else:   # the priority comes from the volume, not from a threshold on the score: see the next line
                print(f"against {args.labels}: AUC {ev['auc']:.4f} of the study score (the highest voxel "
                      f"probability) over {ev['n']} studies ({ev['positives']} with a bleed)")
        if se and se.get("n"):
            def f(v, fmt):
                return "-" if v is None else format(v, fmt)
            print(f"segmentation against {args.labels}: {se['with_bleed']} studies with a bleed, mean Dice "
                  f"{f(se['mean_dice'], '.3f')} (median {f(se['median_dice'], '.3f')}), median volume error "
                  f"{f(se['median_volume_error'], '.1%')}; bleeds >= 1 mL flagged: "
                  f"{f(se['sensitivity_ge_1ml'], '.3f')} of {se['bleeds_ge_min']}; studies without a bleed not "
                  f"flagged: {f(se['specificity'], '.3f')}")
        if args.output and not unwritten:
            print(f"worklist written to {args.output}")
    if unwritten:
        print(f"edgeinfer triage: {unwritten}; the table above is the whole result of this run, and any "
              "previous file there is unchanged. Free space or fix the path, then run again.", file=sys.stderr)
        return 1
    return wl.exit_code


def _write_dicom(wl, folder: str) -> str | None:
    """Each study's result objects (the node's writers, version 1) into ``folder``; why a study got none is said
    on stderr (UIDs only), and the run goes on. Returns why the folder itself could not be written, or None."""
    from ._io import atomic_write
    from .dicomout import DEFAULT_RESULTS, source_header, write_results
    from .errors import EdgeInferError

    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"could not make {folder} ({exc.strerror or exc})"
    written = 0
    for study in wl.studies:
        paths = [i["path"] for i in study["images"]] + list(study.get("failed_images", []))
        sources = [ds for ds in map(source_header, paths) if ds is not None]
        try:
            objects = write_results(DEFAULT_RESULTS, study, sources, bundle=wl.bundle, run=wl.run, version=1)
        except EdgeInferError as exc:
            print(f"study {study['study_uid']}: no DICOM result ({exc})", file=sys.stderr)
            continue
        for obj in objects:
            try:
                atomic_write(out / f"{obj.sop_uid}.dcm", obj.data)
            except OSError as exc:
                return f"could not write into {folder} ({exc.strerror or exc})"
            written += 1
    print(f"{written} DICOM result(s) written to {folder}", file=sys.stderr)
    return None


# --- serve ---------------------------------------------------------------------------------------
def cmd_serve(args) -> int:
    from .node.config import load_config
    from .node.app import Node

    from .node.config import REMOVED, NodeConfig

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(NodeConfig)}
    overrides |= {name: getattr(args, name) for name in REMOVED}
    config = load_config(args.config, overrides)
    if args.no_http:
        config.http_port = None
    logging.getLogger("edgeinfer.audit").setLevel(logging.INFO)  # one line per study event: UIDs only
    node = Node(config)
    print(f"edgeinfer serve: {config.ae_title} on port {config.port}, spool {config.spool}, "
          + (f"HTTP on {config.http_host}:{config.http_port}, " if config.http_port is not None else "")
          + (f"results to {', '.join(map(str, config.send_to))}" if config.send_to else "no --send-to"),
          file=sys.stderr, flush=True)
    node.serve_forever()
    return 0


# --- sign, keygen --------------------------------------------------------------------------------
def cmd_sign(args) -> int:
    from .bundle import sign_bundle

    r = sign_bundle(args.bundle, args.key)
    print(f"signed bundle {r['bundle']}")
    print(f"  digest  {r['digest']}")
    print(f"  key id  {r['key_id']} ({args.key})")
    print(f"  wrote   {r['signatures']}" + (f" (also signed by {', '.join(r['kept'])})" if r["kept"] else ""))
    if r["dropped"]:
        print(f"note: dropped signatures by {', '.join(r['dropped'])}: they signed an earlier state of the bundle; "
              "ask those signers to sign it again")
    return 0


def cmd_keygen(args) -> int:
    from .signing import TRUST_ENV, generate_keypair, key_id, load_public_key

    key_path, pub_path = generate_keypair(args.stem)
    kid = key_id(load_public_key(pub_path))
    print(f"wrote private key {key_path} (mode 0600: keep it secret, off the devices)")
    print(f"wrote public key  {pub_path} (key id {kid})")
    print(f"copy {pub_path.name} into the trust folder ({TRUST_ENV} or --trust) of every device that should "
          "accept bundles signed with this key")
    return 0


# --- parser --------------------------------------------------------------------------------------
def _examples(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def _add_trust(s: argparse.ArgumentParser) -> None:
    s.add_argument("--trust", default=None, metavar="DIR",
                   help="folder of trusted Ed25519 public keys (*.pub): refuse a bundle not signed by one of them "
                        "(default: $EDGEINFER_TRUST; without either, the bundle is used unverified and the "
                        "worklist says so)")


#: workstation subcommands -> (module that registers them, one-line help). They are imported only
#: when invoked, so ``edgeinfer --help`` and the runtime subcommands never load the workstation side.
WORKSTATION_COMMANDS = {
    "export": ("edgeinfer_export.cli", "PyTorch model -> verified ONNX bundle (needs the 'export' extra)"),
    "export-triton": ("edgeinfer_export.cli", "a bundle as a Triton Inference Server model repository (needs the "
                                              "'export' extra)"),
    "build": ("edgeinfer_export.cli", "build a TensorRT plan for this GPU from a bundle's graph (needs the 'trt' extra)"),
    "calibrate": ("edgeinfer_calibration.cli", "FP16 and INT8 graphs calibrated on DICOM studies (needs the 'export' extra)"),
    "validate": ("edgeinfer_calibration.cli", "each precision against FP32 on labelled studies, and the accuracy gate"),
}


def _add_signing(sub, fmt) -> None:
    """``sign`` and ``keygen``."""
    from .signing import SIGNATURES, TRUST_ENV

    s = sub.add_parser(
        "sign", help="sign a bundle with an Ed25519 key (writes BUNDLE/signatures.json)",
        formatter_class=fmt,
        description="Check the bundle's integrity, compute its digest (manifest + every artifact's sha256) and "
                    f"add this key's Ed25519 signature to BUNDLE/{SIGNATURES}. Devices with a trust folder "
                    f"(--trust DIR or {TRUST_ENV}) load only bundles signed by a key in it.",
        epilog="examples:\n"
               "  edgeinfer keygen release            # once: release.key (secret) + release.pub\n"
               "  edgeinfer sign my-bundle/ --key release.key\n"
               "  edgeinfer inspect my-bundle/ --trust trusted-keys/")
    s.add_argument("bundle", help="bundle folder to sign")
    s.add_argument("--key", required=True, help="Ed25519 private key (PEM, PKCS#8), e.g. from `edgeinfer keygen`")
    s.set_defaults(func=cmd_sign)

    s = sub.add_parser(
        "keygen", help="write a new Ed25519 key pair for signing bundles (STEM.key, STEM.pub)",
        formatter_class=fmt,
        description="Write STEM.key (private, mode 0600) and STEM.pub (public). Existing files are never "
                    "overwritten. Put STEM.pub in the devices' trust folder; keep STEM.key on the signing machine.",
        epilog="examples:\n"
               "  edgeinfer keygen release\n"
               "  mkdir -p trusted-keys && cp release.pub trusted-keys/\n"
               "  edgeinfer sign my-bundle/ --key release.key")
    s.add_argument("stem", help="path without extension: writes STEM.key and STEM.pub")
    s.set_defaults(func=cmd_keygen)


def _add_serve(sub, fmt) -> None:
    from .node.config import add_arguments
    from .node.status import summary as status_summary

    s = sub.add_parser("serve", help="run as a DICOM node: receive studies, triage each, send an SR back to PACS",
                       formatter_class=fmt, epilog=_examples("""
                           edgeinfer serve --spool /var/lib/edgeinfer --send-to PACS@10.0.0.5:104
                           edgeinfer serve --config /etc/edgeinfer/serve.toml
                           edgeinfer serve --port 2762 --tls-cert node.pem --tls-key node.key --tls-ca hospital-ca.pem
                       """) + "\n\nC-STORE status: " + status_summary())
    s.add_argument("--config", default=None, help="TOML file with the same settings ([serve.dicom], [serve.spool], "
                   "[serve.model], [serve.outbox], [serve.http]: deploy/serve.toml); flags override it")
    s.add_argument("--no-http", dest="no_http", action="store_true", help="no HTTP side")
    add_arguments(s)   # one flag per setting, from its declaration (edgeinfer/node/config.py)
    s.set_defaults(func=cmd_serve)


def _invoked(argv: list[str]) -> str | None:
    """The subcommand in ``argv``: the first word that is not an option (top-level options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _add_workstation(sub, fmt, command: str | None) -> None:
    """The invoked workstation command's real parser; a placeholder (its help line) for the others."""
    if command in WORKSTATION_COMMANDS:
        import importlib

        module = WORKSTATION_COMMANDS[command][0]
        try:
            importlib.import_module(module).add_parsers(sub, formatter_class=fmt)
        except ImportError as exc:  # a device install without the workstation side
            raise MissingDependency(f"edgeinfer {command} is a workstation command and {module} cannot be imported "
                                    f"here ({exc}); install edgeinfer with the 'export' extra on a workstation") from None
    for name, (_, help_text) in WORKSTATION_COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_text, add_help=False)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
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

    s = sub.add_parser("phantom", help="write synthetic chest radiographs (or head CTs) as DICOM (labelled)",
                       formatter_class=fmt,
                       epilog=_examples("edgeinfer phantom out/ --n 100 --seed 1\nedgeinfer phantom out/ --n 8 --max-size 768\n"
                                        "edgeinfer phantom ct/ --kind ct-head --n 4 --seed 1"))
    s.add_argument("out_dir")
    s.add_argument("--kind", choices=("cxr", "ct-head"), default="cxr",
                   help="cxr: chest radiographs (default); ct-head: non-contrast head CT series with bleed masks")
    s.add_argument("--n", type=int, default=20, help="number of images, or of studies for ct-head (default 20)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-size", type=int, default=None, help="cap the larger image side (default: detector sizes)")
    s.add_argument("--size", type=int, default=None, help="ct-head: slice rows and columns (default 512)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_phantom)

    s = sub.add_parser("inspect", help="show a bundle's manifest and check its integrity", formatter_class=fmt,
                       epilog=_examples("edgeinfer inspect            # the embedded phantom bundle\nedgeinfer inspect my-bundle/ --json"))
    s.add_argument("bundle", nargs="?", default=None)
    s.add_argument("--json", action="store_true", help="print the manifest as JSON")
    _add_trust(s)
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("preview", help="write the image exactly as the model sees it", formatter_class=fmt,
                       epilog=_examples("edgeinfer preview study/img.dcm --out preview.png\n"
                                        "edgeinfer preview study/img.dcm --heatmap --out why.png"))
    s.add_argument("file")
    s.add_argument("--bundle", default=None, help="bundle folder, or an embedded bundle by name: phantom-cxr (the default), phantom-ct-head")
    s.add_argument("--out", required=True, help="PNG to write")
    s.add_argument("--npy", default=None, help="also save the exact input tensor as .npy")
    s.add_argument("--heatmap", action="store_true",
                   help="beside the image, each urgent label's heatmap (class-activation map) and score")
    _add_trust(s)
    s.set_defaults(func=cmd_preview)

    s = sub.add_parser("triage", help="score DICOM studies and print a triage worklist", formatter_class=fmt,
                       epilog=_examples("""
                           edgeinfer triage studies/
                           edgeinfer triage studies/ --output worklist.json
                           edgeinfer triage studies/ --bundle my-bundle/ --device cuda --allow-fallback
                           edgeinfer triage head-cts/ --bundle phantom-ct-head --labels head-cts/labels.csv \\
                               --output-dicom results/     # segment, measure in mL, write SR + SEG
                       """) + "\n\nexit status: 0 all files processed; 2 finished, some files rejected; 1 could not run")
    s.add_argument("inputs", nargs="+", help="DICOM files or folders (walked recursively)")
    s.add_argument("--bundle", default=None, help="bundle folder, or an embedded bundle by name: phantom-cxr (the default), phantom-ct-head")
    _add_trust(s)
    s.add_argument("--output", "-o", default=None, help="write the worklist JSON here")
    s.add_argument("--output-dicom", dest="output_dicom", default=None, metavar="DIR",
                   help="also write each study's result as DICOM into DIR (the SR the node sends to PACS, one "
                        "file per object, named by its SOP Instance UID)")
    s.add_argument("--json", action="store_true", help="print the worklist JSON instead of the table")
    s.add_argument("--backend", default=os.environ.get("EDGEINFER_BACKEND", "auto"),
                   help="onnxruntime | openvino | tensorrt | triton | auto (default: $EDGEINFER_BACKEND or auto = "
                        "the fastest validated mode on this machine)")
    s.add_argument("--triton-url", default=os.environ.get("EDGEINFER_TRITON_URL"), metavar="URL",
                   help="send inference to this Triton Inference Server: http://HOST:8000 or grpc://HOST:8001 "
                        "(implies --backend triton; default: $EDGEINFER_TRITON_URL). Unreachable: the studies are "
                        "INDETERMINATE (human read), never ROUTINE")
    s.add_argument("--precision", default=os.environ.get("EDGEINFER_PRECISION", "auto"),
                   help="fp32 | fp16 | int8 | bf16 | auto (default: $EDGEINFER_PRECISION or auto)")
    s.add_argument("--force", action="store_true",
                   help="run a precision that was not validated or failed the accuracy gate (recorded in the worklist)")
    s.add_argument("--device", default="cpu", help="cpu | cuda | tensorrt (onnxruntime execution providers)")
    s.add_argument("--allow-fallback", action="store_true",
                   help="if the device is unavailable, run on the CPU instead (reported in the worklist)")
    s.add_argument("--threads", type=int, default=None, help="inference threads (default: backend's choice)")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--workers", type=int, default=1,
                   help="intake threads reading, decoding and preprocessing ahead of inference (default 1; 0: none)")
    s.add_argument("--processes", action="store_true",
                   help="the intake workers are processes, not threads: they scale with the cores (about 100 MB "
                        "each), and a decoder that crashes on a file costs that file only")
    s.add_argument("--ignore", default=None,
                   help="comma-separated name patterns listed as skipped without reading "
                        "(default: *.csv,*.json,*.txt,*.md,*.png,*.jpg,.*; '' for none)")
    s.add_argument("--labels", default=None,
                   help="CSV with study_uid,label columns (e.g. a phantom set's labels.csv): report AUC, "
                        "sensitivity and specificity of the worklist's scores")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_triage)

    _add_signing(sub, fmt)
    _add_serve(sub, fmt)

    s = sub.add_parser("triton-host", help="serve a bundle from a Triton Inference Server on this box (PyTriton)",
                       formatter_class=fmt,
                       description="Start Triton Inference Server (from nvidia-pytriton) with the bundle's chosen mode "
                                   "as its model: dynamic batching, three priority levels, the bundle's identity in "
                                   "the model's parameters. Nodes use it with --backend triton --triton-url URL. "
                                   "Needs a venv made from Debian's /usr/bin/python3: make .venv-triton.",
                       epilog=_examples("""
                           .venv-triton/bin/edgeinfer triton-host phantom-cxr
                           .venv-triton/bin/edgeinfer triton-host my-bundle/ --precision int8 --threads 4
                           edgeinfer triage studies/ --triton-url http://gpu-host:8000
                       """))
    s.add_argument("bundle", nargs="?", default=None, help="bundle folder, or an embedded bundle by name (default phantom-cxr)")
    _add_trust(s)
    s.add_argument("--backend", default="auto", help="onnxruntime | openvino | tensorrt | auto (the fastest validated here)")
    s.add_argument("--precision", default="auto", help="fp32 | fp16 | int8 | bf16 | auto")
    s.add_argument("--force", action="store_true", help="serve a precision that was not validated or failed the gate")
    s.add_argument("--threads", type=int, default=None,
                   help="inference threads of each instance (default: this box's CPUs shared between the instances)")
    s.add_argument("--instances", type=int, default=triton_policy.INSTANCES,
                   help=f"model instances running batches side by side (default {triton_policy.INSTANCES}: with one, "
                        "Triton's priority scheduler stalls requests 0.5 s at a time)")
    s.add_argument("--max-batch", type=int, default=8, help="largest batch the dynamic batcher forms (default 8)")
    s.add_argument("--address", default="0.0.0.0", help="address to listen on (default all)")
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.set_defaults(func=cmd_triton_host)

    from .node.admin import add_parsers as add_outbox_parsers

    add_outbox_parsers(sub, formatter_class=fmt)

    from .bench import add_parser as add_bench_parser

    add_bench_parser(sub)
    _add_workstation(sub, fmt, _invoked(sys.argv[1:] if argv is None else argv))
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser(argv)
    except EdgeInferError as exc:
        print(f"edgeinfer: {exc}", file=sys.stderr)
        return exc.exit_code
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    _setup_logging(args.verbose)
    tune_allocator()  # image-sized buffers are reused, not faulted in again for every image
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
