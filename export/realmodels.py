"""Real workloads for the benchmarks: DenseNet-121 and a U-Net from MONAI's networks, in bundles.

Latency depends on the architecture and the input size, not on the weights' values, so these
bundles hold *random* weights (seeded, reproducible): the benchmark table then reflects the
models people deploy (DenseNet-121 for chest X-ray classification, a U-Net for segmentation)
while their accuracy columns honestly say "not validated". They are never for triage.

MONAI is needed here only (the workstation side); the runtime never imports it.

    python -m edgeinfer_export.realmodels bundles/                 # both, at their usual sizes
    python -m edgeinfer_export.realmodels bundles/ --models unet --size 512
    edgeinfer bench bundles/densenet121-random --backend all

DenseNet-121: ``monai.networks.nets.DenseNet121(spatial_dims=2, in_channels=1,
out_channels=2)`` + sigmoid, 224x224 (the size the committed benchmark results use). U-Net:
``monai.networks.nets.UNet(spatial_dims=2, in_channels=1, out_channels=2,
channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)`` + sigmoid (MONAI's
tutorial configuration), 256x256 by default, task ``segmentation``, output (batch, 2, H, W).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from pathlib import Path

from edgeinfer.bundle import load_bundle, write_manifest
from edgeinfer.errors import EdgeInferError, ExportError

ROOT = Path(__file__).resolve().parent
BASE_CONFIG = ROOT / "configs" / "phantom-cxr.json"

#: name -> (task, default input size, description)
MODELS = {
    "densenet121": ("classification", 224, "DenseNet-121 (MONAI), 1-channel 2-D, sigmoid outputs"),
    "unet": ("segmentation", 256, "U-Net (MONAI; channels 16-256, 4 down-samplings, 2 residual units), sigmoid masks"),
}


def _monai():
    try:
        import monai
        from monai.networks import nets
    except ImportError as exc:
        raise ExportError(f"the real-model bundles need MONAI's networks ({exc}); install it with: pip install monai "
                          "(it uses the torch already installed by the 'export' extra)") from exc
    return monai, nets


def _with_sigmoid(net):
    import torch

    class WithSigmoid(torch.nn.Module):
        """The network's logits -> probabilities, which is what the runtime scores."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return torch.sigmoid(self.net(x))

    return WithSigmoid(net)


def densenet121(n_labels: int = 2, in_channels: int = 1):
    """MONAI DenseNet-121 for 2-D images, with a sigmoid: (N, C, H, W) -> (N, n_labels)."""
    _, nets = _monai()
    return _with_sigmoid(nets.DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=n_labels))


def unet(n_classes: int = 2, in_channels: int = 1, channels: tuple[int, ...] = (16, 32, 64, 128, 256),
         strides: tuple[int, ...] = (2, 2, 2, 2), num_res_units: int = 2):
    """MONAI U-Net for 2-D images, with a sigmoid: (N, C, H, W) -> (N, n_classes, H, W)."""
    _, nets = _monai()
    return _with_sigmoid(nets.UNet(spatial_dims=2, in_channels=in_channels, out_channels=n_classes,
                                   channels=channels, strides=strides, num_res_units=num_res_units))


def build(name: str, **kwargs):
    if name == "densenet121":
        return densenet121(**kwargs)
    if name == "unet":
        return unet(**kwargs)
    raise ExportError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def config_for(name: str, size: int, seed: int, base: dict | None = None) -> dict:
    """The bundle config: the phantom CXR config (labels, triage, DICOM applicability,
    preprocessing) with this model's name, task and input size, marked as random weights."""
    monai, _ = _monai()
    import torch

    task, _, description = MODELS[name]
    cfg = copy.deepcopy(base if base is not None else json.loads(BASE_CONFIG.read_text()))
    cfg["name"] = f"{name}-random"
    cfg["version"] = "0.1.0"
    cfg["task"] = task
    cfg["description"] = f"{description}, with RANDOM weights (seed {seed}): for latency benchmarks only."
    cfg["intended_use"] = ("BENCHMARK ONLY: random weights, so its scores mean nothing. Latency does not depend on "
                           "the weights' values; accuracy is 'not validated'. NOT FOR TRIAGE, NOT FOR CLINICAL USE.")
    cfg["preprocessing"]["target_size"] = [int(size), int(size)]
    if task == "segmentation":
        cfg["output_name"] = "masks"
        # schema v2: a segmentation bundle says how it runs over a series (a benchmark bundle: one soft-tissue
        # window, 1 mm pixels, the slice as one tile)
        cfg["segmentation"] = {"windows": [{"name": "soft tissue", "center": 40, "width": 400}], "pixel_mm": 1.0,
                               "slice_mm": None, "sliding_window": {"roi": [int(size), int(size)], "overlap": 0.25,
                                                                    "batch": 4, "blend": "gaussian"},
                               "postprocessing": {"threshold": 0.5, "min_component_ml": 0.0}}
    cfg["training"] = {"weights": "random", "seed": int(seed), "source": f"monai.networks.nets ({name})",
                       "monai": monai.__version__, "torch": torch.__version__}
    return cfg


def export_real_model(name: str, out_dir: str | Path, *, size: int | None = None, seed: int = 0,
                      overwrite: bool = False, tolerance: float = 1e-4, model_kwargs: dict | None = None) -> Path:
    """Export model ``name`` with random weights (``torch.manual_seed(seed)``) into a bundle at ``out_dir``."""
    import torch

    from .onnx_export import export_bundle

    if name not in MODELS:
        raise ExportError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    task, default_size, _ = MODELS[name]
    size = int(size or default_size)
    if size < 32 or size % 32:
        raise ExportError(f"--size {size}: use a multiple of 32 (both networks down-sample by 16-32), at least 32")
    cfg = config_for(name, size, seed)
    n_out = len(cfg["labels"])
    torch.manual_seed(seed)
    kwargs = dict(model_kwargs or {})
    kwargs.setdefault("n_labels" if name == "densenet121" else "n_classes", n_out)
    model = build(name, **kwargs).eval()
    with warnings.catch_warnings():
        # MONAI's U-Net uses InstanceNorm, which normalises with the input's own statistics in eval
        # mode too; the TorchScript exporter's "train=True" warning about it is expected
        warnings.filterwarnings("ignore", message=".*instance_norm.*", category=UserWarning)
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
        report = export_bundle(model, cfg, out_dir, opset=17, tolerance=tolerance, overwrite=overwrite, seed=seed,
                               source={"factory": f"edgeinfer_export.realmodels:{name}", "weights": f"random (seed {seed})"})
    if task == "segmentation":
        # export_bundle writes a classification output spec; a segmentation model outputs masks
        bundle = load_bundle(report.bundle_dir)
        m = copy.deepcopy(bundle.manifest)
        m["outputs"] = [{"name": cfg["output_name"], "shape": ["batch", n_out, size, size], "dtype": "float32",
                         "layout": "NCHW", "labels": cfg["labels"]}]
        write_manifest(report.bundle_dir, m)
        load_bundle(report.bundle_dir)
    return Path(report.bundle_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeinfer_export.realmodels", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  python -m edgeinfer_export.realmodels bundles/\n"
                                       "  python -m edgeinfer_export.realmodels bundles/ --models unet --size 512 --overwrite")
    p.add_argument("out_dir", help="folder to write <model>-random/ bundles into")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)} (default: all)")
    p.add_argument("--size", type=int, default=None, help="input size (default: 224 for densenet121, 256 for unet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            out = export_real_model(name, Path(args.out_dir) / f"{name}-random", size=args.size, seed=args.seed,
                                    overwrite=args.overwrite)
            b = load_bundle(out)
            a = b.artifacts[0]
            print(f"wrote {out}: {b.manifest['task']}, input {b.manifest['inputs'][0]['shape']}, "
                  f"output {b.manifest['outputs'][0]['shape']}, {a.record['bytes']:,} bytes, random weights")
    except EdgeInferError as exc:
        print(f"edgeinfer_export.realmodels: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
