"""Workstation subcommands of ``edgeinfer``: ``export`` (PyTorch -> verified ONNX bundle), ``export-triton``
(a bundle as a Triton model repository) and ``build`` (TensorRT plan). The runtime's CLI registers them only when one of them is invoked, so a device
install never imports this package for its own commands."""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from edgeinfer._io import emit_json


def _examples(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def cmd_export(args) -> int:
    from edgeinfer._lazy import lazy_import

    lazy_import("torch", extra="export", purpose="edgeinfer export")
    sys.path.insert(0, str(Path.cwd()))  # let --factory name a module in the current project
    from edgeinfer.intake import discover

    from .onnx_export import describe_report, export_bundle, load_config, load_module, real_inputs_from_dicom

    config = load_config(args.config)
    model = load_module(factory=args.factory, weights=args.weights, torchscript=args.torchscript,
                        exported=args.exported)
    real = real_inputs_from_dicom(discover([args.data]), config) if args.data else None
    source = {k: str(v) for k, v in (("factory", args.factory), ("weights", args.weights),
                                     ("torchscript", args.torchscript), ("exported", args.exported)) if v}
    report = export_bundle(model, config, args.out, real_inputs=real, opset=args.opset,
                           tolerance=args.tolerance, source=source, overwrite=args.overwrite, cam=not args.no_cam)
    d = describe_report(report)
    if args.json:
        emit_json(d, "-")
    else:
        print(f"exported {d['bundle']} (opset {d['opset']}, {d['onnx_bytes']:,} bytes); "
              f"max |ONNX Runtime - PyTorch| = {d['max_abs_diff_vs_torch']:.2e} over {', '.join(d['checked'])}; "
              + (f"class-activation map output: {d['cam']}" if d["cam"] else
                 "no class-activation map (the head is not one export/cam.py knows, or --no-cam)"))
    return 0


def cmd_export_triton(args) -> int:
    from edgeinfer.bundle import load_bundle

    from .triton import write_repository

    bundle = load_bundle(args.bundle, trust=args.trust)
    wanted = [x for x in args.artifacts.split(",") if x] if args.artifacts else None
    made = write_repository(bundle, args.repo, artifacts=wanted, max_batch=args.max_batch, overwrite=args.overwrite)
    for path in made:
        print(f"wrote {path} (config.pbtxt checked against Triton's ModelConfig)")
    print(f"serve it: tritonserver --model-repository {args.repo}   (bundle digest {bundle.digest[:16]}…)")
    return 0


def cmd_build(args) -> int:
    from .trt_build import cli_build

    return cli_build(args)


def add_parsers(sub, formatter_class=argparse.RawDescriptionHelpFormatter) -> None:
    """Register ``export`` and ``build`` (argparse only: torch and TensorRT load when a command runs)."""
    s = sub.add_parser("export", help="PyTorch model -> verified ONNX bundle (needs the 'export' extra)",
                       formatter_class=formatter_class, epilog=_examples("""
                           edgeinfer export --factory edgeinfer_export.models:phantom_triage_net \\
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
    s.add_argument("--no-cam", action="store_true",
                   help="no class-activation map output, even for a head export/cam.py knows (no heatmaps)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("export-triton", help="a bundle as a Triton Inference Server model repository",
                       formatter_class=formatter_class, epilog=_examples("""
                           edgeinfer export-triton phantom-cxr triton-repo/
                           edgeinfer export-triton my-bundle/ triton-repo/ --artifacts fp16,int8 --max-batch 16
                       """))
    s.add_argument("bundle", help="bundle folder, or an embedded bundle's name")
    s.add_argument("repo", help="the model repository folder (created; other models in it are left alone)")
    s.add_argument("--artifacts", default=None, help="comma-separated artifact ids (default: every ONNX graph and plan)")
    s.add_argument("--max-batch", type=int, default=8, help="max_batch_size of each model (default 8)")
    s.add_argument("--overwrite", action="store_true", help="replace model folders of the same name")
    s.add_argument("--trust", default=None, help="folder of trusted public keys: refuse an unsigned bundle")
    s.set_defaults(func=cmd_export_triton)

    s = sub.add_parser("build", help="build a TensorRT plan for this GPU from a bundle's graph (needs the 'trt' extra)",
                       formatter_class=formatter_class, epilog=_examples("""
                           edgeinfer build my-bundle/ --precision fp16
                           edgeinfer build my-bundle/ --precision int8 --batch 1,4,8 --workspace 1024
                           edgeinfer build my-bundle/ --precision fp16 --dla-core 0 --batch 4
                       """))
    from .trt_build import add_arguments  # argparse only; TensorRT loads at build time

    add_arguments(s)
    s.set_defaults(func=cmd_build)
