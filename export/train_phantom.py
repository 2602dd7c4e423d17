"""Train the phantom triage CNN and export it as the embedded default bundle.

Seeded and CPU-only (a few minutes on 2 cores). The images go through the runtime's own
reader and preprocessing (edgeinfer.preprocess), so the model is trained on exactly what
the device will feed it.

    python -m edgeinfer_export.train_phantom                  # train, save weights, export the bundle
    python -m edgeinfer_export.train_phantom --export-only    # re-export from the committed weights

A PHANTOM MODEL for demonstrating and testing the pipeline. NOT FOR CLINICAL USE.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "export" / "configs" / "phantom-cxr.json"
WEIGHTS = ROOT / "export" / "weights" / "phantom_triage.pt"
BUNDLE = ROOT / "edgeinfer" / "models" / "phantom-cxr"
TRAIN_SEED, VAL_SEED = 1000, 900    # training sets use 1000, 1001, ...; held-out evaluation other seeds (docs/models.md: the phantom model, seed 2026)


MAP = 16  # side of the training-only localisation map (1/16 of 256)


def _case_tensors(args):
    """Worker: phantom cases [start, stop) of a seed, preprocessed by the runtime's own code.

    ``paired``: each index gives the same patient twice, with a finding (alternating kinds)
    and without, plus the finding's mask (where the two differ) for the localisation loss.
    Otherwise one case per index with the finding drawn as in ``edgeinfer phantom``.
    """
    seed, start, stop, max_size, paired, difficulty = args
    import cv2

    from edgeinfer import phantom
    from edgeinfer.intake import prepare_dataset as prepare
    from edgeinfer.preprocess import PreprocessSpec

    spec = PreprocessSpec.from_manifest(json.loads(CONFIG.read_text())["preprocessing"])
    xs, ys, ms = [], [], []
    for i in range(start, stop):
        if not paired:
            case = phantom.make_case(np.random.default_rng([seed, i]), index=i, max_size=max_size,
                                     difficulty=difficulty)
            xs.append(prepare(case.dataset, spec).tensor.astype(np.float16))
            ys.append([case.finding == "pneumothorax", case.finding == "mass"])
            ms.append(np.zeros((2, MAP, MAP), np.uint8))
            continue
        kind = phantom.FINDINGS[i % 2]
        sick = prepare(phantom.make_case(np.random.default_rng([seed, i]), index=i, finding=kind,
                                         max_size=max_size, difficulty=difficulty).dataset, spec)
        well = prepare(phantom.make_case(np.random.default_rng([seed, i]), index=i, finding="none",
                                         max_size=max_size, difficulty=difficulty).dataset, spec)
        diff = np.abs(sick.display - well.display) > 0.01
        small = cv2.resize(diff.astype(np.float32), (MAP, MAP), interpolation=cv2.INTER_AREA) > 0.02
        mask = np.zeros((2, MAP, MAP), np.uint8)
        mask[i % 2] = small
        for prep, y, m in ((sick, [kind == "pneumothorax", kind == "mass"], mask),
                           (well, [False, False], np.zeros_like(mask))):
            xs.append(prep.tensor.astype(np.float16))
            ys.append(y)
            ms.append(m)
    return np.stack(xs), np.asarray(ys, dtype=np.float32), np.stack(ms)


def make_set(seed: int, n: int, max_size: int, cache: Path | None, *, paired: bool = False,
             difficulty: float | None = None, workers: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from edgeinfer import phantom

    difficulty = phantom.DIFFICULTY if difficulty is None else difficulty
    name = f"phantom-s{seed}-n{n}-m{max_size}-d{difficulty:g}{'-paired' if paired else ''}.npz"
    if cache is not None and (cache / name).exists():
        d = np.load(cache / name)
        return d["x"], d["y"], d["m"]
    chunks = [(seed, a, min(a + 32, n), max_size, paired, difficulty) for a in range(0, n, 32)]
    t0 = time.time()
    with mp.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_case_tensors, chunks)
    x, y, m = (np.concatenate([p[k] for p in parts]) for k in range(3))
    print(f"  generated and preprocessed {len(x)} phantom images (seed {seed}) in {time.time() - t0:.0f} s", flush=True)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(cache / name, x=x, y=y, m=m)
    return x, y, m


def train(args) -> dict:
    import torch
    from torch import nn

    from edgeinfer.evaluation import roc_auc
    from .models import phantom_triage_net

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    cache = Path(args.cache) if args.cache else None
    sets = [make_set(TRAIN_SEED + k, args.n_train, args.max_size, cache, paired=True,
                     difficulty=d, workers=args.workers) for k, d in enumerate(args.difficulty)]
    xtr, ytr, mtr = (np.concatenate([s_[j] for s_ in sets]) for j in range(3))
    xva, yva, _ = make_set(VAL_SEED, args.n_val, args.max_size, cache, workers=args.workers)
    model = phantom_triage_net()
    if args.resume:
        model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
        print(f"  resuming from {WEIGHTS.relative_to(ROOT)}")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * int(np.ceil(len(xtr) / args.batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.BCEWithLogitsLoss()
    heat_loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(20.0))
    rng = np.random.default_rng(args.seed)
    history = []
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(xtr))
        t0, total = time.time(), 0.0
        for k in range(0, len(order), args.batch):
            idx = order[k:k + args.batch]
            xb = torch.from_numpy(xtr[idx].astype(np.float32))
            mb = torch.from_numpy(mtr[idx].astype(np.float32))
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            xb[flip] = xb[flip].flip(-1)           # left/right: findings occur in either lung
            mb[flip] = mb[flip].flip(-1)
            yb = torch.from_numpy(ytr[idx])
            logits, heat, cam = model.parts(xb)
            loss = loss_fn(logits, yb) + args.aux_weight * heat_loss(heat, mb)
            if args.cam_weight:
                loss = loss + args.cam_weight * cam_pointing_loss(cam, mb, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        probs = predict(model, xva)
        auc = roc_auc(probs.max(axis=1), yva.max(axis=1))
        history.append({"epoch": epoch + 1, "loss": round(total / len(xtr), 4), "val_auc": round(auc, 4)})
        print(f"  epoch {epoch + 1}/{args.epochs}: loss {total / len(xtr):.4f}, val AUC {auc:.4f} ({time.time() - t0:.0f} s)")
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), WEIGHTS)
    return {"history": history, "val_auc": history[-1]["val_auc"]}


def cam_pointing_loss(cam, masks, labels):
    """-log of the share of each present finding's class-activation map (softmax over its grid) that falls
    on the finding: the map's peak is pulled onto the finding without fixing the map's scale, which the
    classification loss owns. ``masks`` are at the training map's size (a multiple of the CAM grid)."""
    import torch
    import torch.nn.functional as F

    k = masks.shape[-1] // cam.shape[-1]
    on = (F.max_pool2d(masks, k) if k > 1 else masks).flatten(2) > 0          # N, L, cells
    present = on.any(-1) & (labels > 0)
    if not present.any():
        return cam.sum() * 0.0
    logp = F.log_softmax(cam.flatten(2), dim=-1)
    inside = torch.logsumexp(logp.masked_fill(~on, float("-inf")), dim=-1)
    return -inside[present].mean()


def predict(model, x: np.ndarray, batch: int = 64) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for k in range(0, len(x), batch):
            out.append(model(torch.from_numpy(x[k:k + batch].astype(np.float32))).numpy())
    return np.concatenate(out)


def export(args, training: dict | None) -> None:
    from .onnx_export import export_bundle, load_config, load_module

    config = load_config(CONFIG)
    model = load_module(factory="edgeinfer_export.models:phantom_triage_net", weights=WEIGHTS)
    xva, _, _ = make_set(VAL_SEED, args.n_val, args.max_size, Path(args.cache) if args.cache else None,
                         workers=args.workers)
    record = {"script": "export/train_phantom.py", "train_seed": TRAIN_SEED, "val_seed": VAL_SEED, "paired": True,
              "n_train": args.n_train, "n_val": args.n_val, "epochs": args.epochs, "max_size": args.max_size,
              "difficulty": args.difficulty, "resumed": bool(getattr(args, "resume", False)),
              "lr": getattr(args, "lr", None), "cam_weight": getattr(args, "cam_weight", 0.0),
              "date": _dt.date.today().isoformat(), "weights_sha256": _sha(WEIGHTS)}
    if training:
        record["val_auc"] = training["val_auc"]
        record["history"] = training["history"]
    elif BUNDLE.exists():
        old = json.loads((BUNDLE / "manifest.json").read_text()).get("training") or {}
        record = {**old, **{k: v for k, v in record.items() if k != "date"}}
    config["training"] = record
    report = export_bundle(model, config, BUNDLE, real_inputs=xva[:16].astype(np.float32),
                           source={"factory": "edgeinfer_export.models:phantom_triage_net",
                                   "weights": str(WEIGHTS.relative_to(ROOT))}, overwrite=True)
    print(f"  exported {report.bundle_dir} ({report.onnx_bytes:,} bytes), max |ORT - torch| {report.max_abs_diff:.2e}")


def _sha(p: Path) -> str:
    from edgeinfer.bundle import sha256_file

    return sha256_file(p)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=1600, help="patients; each gives a normal and an urgent image")
    ap.add_argument("--aux-weight", type=float, default=1.0, help="weight of the localisation loss")
    ap.add_argument("--cam-weight", type=float, default=0.0,
                    help="weight of the loss that puts the class-activation map's peak on the finding")
    ap.add_argument("--n-val", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-size", type=int, default=768, help="cap phantom size while training (speed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "train"))
    ap.add_argument("--difficulty", type=float, nargs="+", default=[None],
                    help="phantom difficulty of each training set (seeds 1000, 1001+1, ...; default: "
                         "edgeinfer.phantom.DIFFICULTY); validation always uses the default")
    ap.add_argument("--resume", action="store_true", help="start from the committed weights (fine-tuning)")
    ap.add_argument("--workers", type=int, default=2, help="processes generating phantoms")
    ap.add_argument("--gen-only", action="store_true", help="only generate and cache the data sets")
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args(argv)
    if args.gen_only:
        cache = Path(args.cache) if args.cache else None
        for k, d in enumerate(args.difficulty):
            make_set(TRAIN_SEED + k, args.n_train, args.max_size, cache, paired=True, difficulty=d,
                     workers=args.workers)
        make_set(VAL_SEED, args.n_val, args.max_size, cache, workers=args.workers)
        return
    training = None if args.export_only else train(args)
    export(args, training)


if __name__ == "__main__":
    main()
