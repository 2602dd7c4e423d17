"""Train the phantom head-CT haemorrhage U-Net and export it as the second embedded bundle (task: segmentation).

Seeded and CPU-only (``make train-ct``: about 40 minutes on 2 cores). Every study goes through the runtime's own
series reader and windows (``SegmentationSpec.read``: read, HU, in-plane resample to the bundle's pixel size,
windows as channels), so the network is trained on exactly what the device feeds it. Training sees 128-pixel
crops (half of them on a bleed) of single slices; the network is fully convolutional and runs on whole slices
(the bundle's sliding window) at inference.

    python -m edgeinfer_export.train_ct                  # train, save weights, export the bundle
    python -m edgeinfer_export.train_ct --export-only    # re-export from the committed weights

A PHANTOM MODEL for demonstrating and testing the pipeline. NOT FOR CLINICAL USE.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "export" / "configs" / "phantom-ct-head.json"
WEIGHTS = ROOT / "export" / "weights" / "phantom_ct_unet.pt"
BUNDLE = ROOT / "edgeinfer" / "models" / "phantom-ct-head"
FACTORY = "edgeinfer_export.models:phantom_ct_net"
TRAIN_SEED, VAL_SEED = 3000, 3900    # held-out evaluation uses other seeds (docs/models.md)
#: the findings cycled through the training studies: three in four have a bleed
CYCLE = ("iph", "sdh", "sah", "none")


def spec():
    from edgeinfer.segmentation import SegmentationSpec

    return SegmentationSpec.from_manifest(json.loads(CONFIG.read_text())["segmentation"])


def mask_at(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A source-grid mask (slices, rows, cols) at the model's in-plane grid (area share >= 0.5)."""
    import cv2

    if mask.shape[1:] == shape:
        return mask.astype(bool)
    return np.stack([cv2.resize(m.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA) >= 0.5
                     for m in mask])


def study_arrays(seed: int, i: int, finding: str | None = None):
    """One phantom study read as the runtime reads it: (inputs (C, Z, H, W) float32, mask (Z, H, W) bool, HeadCT)."""
    import io

    import pydicom

    from edgeinfer.phantom.ct_head import make_head_ct

    ct = make_head_ct(np.random.default_rng([seed, 0xC7, i]), index=i + 1, finding=finding)
    with tempfile.TemporaryDirectory(prefix="edgeinfer-ct-") as tmp:
        paths = []
        for k, ds in enumerate(ct.datasets):
            buf = io.BytesIO()
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
            p = Path(tmp) / f"{k:03d}.dcm"
            p.write_bytes(buf.getvalue())
            paths.append(p)
        x, vol = spec().read(paths)
    return x, mask_at(ct.mask, x.shape[2:]), ct


def _train_study(args):
    """Worker: the slices of one training study worth learning from: every slice with a bleed and
    ``negatives`` others (float16 inputs, uint8 masks)."""
    seed, i, negatives = args
    x, m, _ = study_arrays(seed, i, CYCLE[i % len(CYCLE)])
    rng = np.random.default_rng([seed, i, 1])
    pos = [k for k in range(m.shape[0]) if m[k].any()]
    neg = [k for k in range(m.shape[0]) if not m[k].any()]
    neg = list(rng.choice(neg, size=min(negatives, len(neg)), replace=False)) if neg else []
    return [(x[:, k].astype(np.float16), m[k].astype(np.uint8), k in pos) for k in sorted(pos + neg)]


def _val_study(args):
    seed, i = args
    x, m, ct = study_arrays(seed, i, CYCLE[i % len(CYCLE)])
    return x.astype(np.float16), m, ct.volume_ml


def predict_volume(model, x: np.ndarray, batch: int = 8) -> np.ndarray:
    """(C, Z, H, W) -> probabilities (Z, H, W), whole slices padded to a multiple of 8."""
    import torch

    c, z, h, w = x.shape
    ph, pw = -h % 8, -w % 8
    out = np.empty((z, h, w), np.float32)
    model.eval()
    with torch.no_grad():
        for k in range(0, z, batch):
            xb = np.pad(x[:, k:k + batch].astype(np.float32).transpose(1, 0, 2, 3), ((0, 0), (0, 0), (0, ph), (0, pw)))
            out[k:k + batch] = model(torch.from_numpy(xb)).numpy()[:, 0, :h, :w]
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def evaluate(model, val) -> dict:
    dices, found = [], []
    for x, m, ml in val:
        pred = predict_volume(model, x) >= 0.5
        if m.any():
            dices.append(dice(pred, m))
            found.append(bool((pred & m).any()))
    return {"mean_dice": round(float(np.mean(dices)), 4), "detected": f"{sum(found)}/{len(found)}"}


def train(args) -> dict:
    import torch
    import torch.nn.functional as F

    from .models import phantom_ct_net

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    with mp.get_context("fork").Pool(args.workers) as pool:
        parts = pool.map(_train_study, [(TRAIN_SEED, i, args.negatives) for i in range(args.n_train)])
        val = pool.map(_val_study, [(VAL_SEED, i) for i in range(args.n_val)])
    slices = [s for p in parts for s in p]
    pos = [k for k, s in enumerate(slices) if s[2]]
    neg = [k for k, s in enumerate(slices) if not s[2]]
    print(f"  {args.n_train} training studies ({len(pos)} slices with a bleed, {len(neg)} without) and "
          f"{args.n_val} validation studies read in {time.time() - t0:.0f} s", flush=True)
    model = phantom_ct_net()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    rng = np.random.default_rng(args.seed)
    crop = args.crop
    history, t0, running = [], time.time(), 0.0
    for step in range(1, args.steps + 1):
        model.train()
        xb = np.empty((args.batch, 3, crop, crop), np.float32)
        mb = np.empty((args.batch, 1, crop, crop), np.float32)
        for b in range(args.batch):
            k = int(rng.choice(pos)) if (rng.random() < args.positive_share and pos) else int(rng.choice(neg))
            x, m, has = slices[k]
            h, w = m.shape
            if has and rng.random() < 0.8:       # centred near a bleed pixel
                ys, xs = np.nonzero(m)
                j = int(rng.integers(len(ys)))
                r0 = int(np.clip(ys[j] - crop // 2 + rng.integers(-crop // 3, crop // 3 + 1), 0, h - crop))
                c0 = int(np.clip(xs[j] - crop // 2 + rng.integers(-crop // 3, crop // 3 + 1), 0, w - crop))
            else:
                r0, c0 = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
            xc, mc = x[:, r0:r0 + crop, c0:c0 + crop], m[r0:r0 + crop, c0:c0 + crop]
            if rng.random() < 0.5:                 # left/right: bleeds occur on either side
                xc, mc = xc[:, :, ::-1], mc[:, ::-1]
            xb[b], mb[b, 0] = xc, mc
        xt, mt = torch.from_numpy(xb), torch.from_numpy(mb)
        logits = model.logits(xt)
        p = torch.sigmoid(logits)
        inter = (p * mt).sum()
        loss = F.binary_cross_entropy_with_logits(logits, mt) + (1 - (2 * inter + 1) / (p.sum() + mt.sum() + 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if step % args.log_every == 0 or step == args.steps:
            row = {"step": step, "loss": round(running / args.log_every, 4), "s": round(time.time() - t0)}
            if step % (args.log_every * 8) == 0 or step == args.steps:
                row.update(evaluate(model, val))
            history.append(row)
            print("  " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
            running = 0.0
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), WEIGHTS)
    return {"history": history, **evaluate(model, val)}


def export(args, training: dict | None) -> None:
    from edgeinfer.bundle import sha256_file

    from .onnx_export import export_bundle, load_config, load_module

    config = load_config(CONFIG)
    model = load_module(factory=FACTORY, weights=WEIGHTS)
    x, _, _ = study_arrays(VAL_SEED, 0, "iph")
    record = {"script": "export/train_ct.py", "train_seed": TRAIN_SEED, "val_seed": VAL_SEED,
              "n_train": args.n_train, "n_val": args.n_val, "steps": args.steps, "batch": args.batch,
              "crop": args.crop, "lr": args.lr, "negatives": args.negatives, "findings": list(CYCLE),
              "date": _dt.date.today().isoformat(), "weights_sha256": sha256_file(WEIGHTS)}
    if training:
        record.update(val_mean_dice=training["mean_dice"], val_detected=training["detected"],
                      history=training["history"])
    elif BUNDLE.exists():
        old = json.loads((BUNDLE / "manifest.json").read_text()).get("training") or {}
        record = {**old, **{k: v for k, v in record.items() if k != "date"}}
    config["training"] = record
    k = x.shape[1] // 2
    real = np.ascontiguousarray(x[:, k:k + 2].transpose(1, 0, 2, 3)[:, :, :256, :256])
    real = np.pad(real, ((0, 0), (0, 0), (0, 256 - real.shape[2]), (0, 256 - real.shape[3])))
    report = export_bundle(model, config, BUNDLE, real_inputs=real, source={"factory": FACTORY,
                           "weights": str(WEIGHTS.relative_to(ROOT))}, overwrite=True)
    print(f"  exported {report.bundle_dir} ({report.onnx_bytes:,} bytes), max |ORT - torch| {report.max_abs_diff:.2e}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=144, help="training studies (three in four with a bleed)")
    ap.add_argument("--n-val", type=int, default=12)
    ap.add_argument("--negatives", type=int, default=8, help="slices without a bleed kept per training study")
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--positive-share", type=float, default=0.6, help="share of crops from slices with a bleed")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--workers", type=int, default=2, help="processes generating and reading phantoms")
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args(argv)
    training = None if args.export_only else train(args)
    export(args, training)


if __name__ == "__main__":
    main()
