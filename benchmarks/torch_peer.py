#!/usr/bin/env python
"""The peer a user would pick instead of edgeinfer: the same models in PyTorch, timed on the same device.

    python benchmarks/torch_peer.py --models phantom-cxr,densenet121,unet --batch 1,8,32 --device cuda \\
        [--modes eager-fp32,eager-tf32,eager-fp16,compile-fp16] [--compile-budget-s 60] [--json OUT]

Models: ``phantom-cxr`` (the embedded bundle's network with its committed weights), ``densenet121`` and
``unet`` (``edgeinfer_export.realmodels``, built with the seed their bundles were exported with; their
weights are random, which does not change the time). Modes:

* ``eager-fp32``: FP32 with TF32 off, as edgeinfer's FP32 graph runs on ONNX Runtime's CUDA provider;
* ``eager-tf32``: PyTorch's defaults (cuDNN convolutions in TF32);
* ``eager-fp16``: ``model.half()``, the FP32 input cast on the device, as the FP16 graph does;
* ``graph-fp16`` / ``graph-fp32``: the eager model captured once per batch size into a CUDA graph
  (``torch.cuda.CUDAGraph``; static input and output buffers, replayed per call): no launch overhead,
  as edgeinfer's CUDA graphs on ONNX Runtime (GPU only);
* ``compile-fp16`` / ``compile-fp32``: ``torch.compile`` (Inductor, default mode) of the same, while the
  ``--compile-budget-s`` lasts (a compile that would start after it is listed as not built).

``torch.backends.cudnn.benchmark`` is on in every mode (cuDNN's algorithms timed on the first call of
each shape). Each (model, mode, batch) is timed two ways after a warm-up, over input batches that
rotate among ``--images`` distinct random-normal images (never zeros):

* **host to host**: NumPy array in, NumPy array out (copy to the device, run, copy back, synchronised),
  by the host clock: what ``edgeinfer bench`` times for ONNX Runtime;
* **device**: the model call alone on an input already on the device, by CUDA events (on the CPU: the
  host clock).

Needs PyTorch and, for densenet121 and unet, MONAI (the ``export`` extra). A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ("phantom-cxr", "densenet121", "unet")
MODES = ("eager-fp32", "eager-tf32", "eager-fp16", "graph-fp32", "graph-fp16", "compile-fp16", "compile-fp32")
DEFAULT_MODES = ("eager-fp32", "eager-tf32", "eager-fp16", "compile-fp16")


def build(name: str, seed: int = 0):
    """(module in eval mode, input size) for a model name: the networks the bundles were exported from."""
    import torch

    if name == "phantom-cxr":
        from edgeinfer.bundle import load_bundle
        from edgeinfer_export.models import phantom_triage_net

        model = phantom_triage_net()
        weights = Path(__import__("edgeinfer_export").__file__).parent / "weights" / "phantom_triage.pt"
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        size = load_bundle(None).manifest["preprocessing"]["target_size"][0]
        return model.eval(), int(size)
    from edgeinfer_export import realmodels

    _, size, _ = realmodels.MODELS[name]
    torch.manual_seed(seed)  # as realmodels.export_real_model builds it
    key = "n_labels" if name == "densenet121" else "n_classes"
    return realmodels.build(name, **{key: 2}).eval(), int(size)


def percentile(values: list[float], q: float) -> float:
    vals = sorted(values)
    k = (len(vals) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def _timed(fn, seconds: float, min_calls: int = 5) -> list[float]:
    out: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(out) < min_calls:
        out.append(fn())
    return out


class Graphed:
    """``model`` captured into a CUDA graph for one input shape: the input is copied into a static
    buffer and the graph replayed (PyTorch's ``torch.cuda.graphs`` recipe: warm-up on a side stream,
    then capture)."""

    def __init__(self, model, example):
        import torch

        self.static_in = example.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):
                model(self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.static_out = model(self.static_in)

    def __call__(self, x):
        self.static_in.copy_(x)
        self.graph.replay()
        return self.static_out


def measure(model, mode: str, batch: int, size: int, device: str, *, images: int, warmup_s: float,
            duration_s: float) -> dict:
    """One (mode, batch): host-to-host and device-only latency, throughput, peak device memory."""
    import numpy as np
    import torch

    half = mode.endswith("fp16")
    dev = torch.device(device)
    rng = np.random.default_rng(batch)
    host = [rng.standard_normal((batch, 1, size, size)).astype(np.float32) for _ in range(images)]
    on_dev = [torch.from_numpy(x).to(dev) for x in host]
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    if mode.startswith("graph-"):
        if not cuda:
            return {"status": "unavailable", "reason": "CUDA graphs need a CUDA device"}
        model = Graphed(model, on_dev[0].half() if half else on_dev[0])
    i = [0]

    def host_to_host() -> float:
        x = host[i[0] % images]
        i[0] += 1
        t0 = time.perf_counter()
        with torch.inference_mode():
            t = torch.from_numpy(x).to(dev)
            y = model(t.half() if half else t)
            y.float().cpu().numpy()  # synchronises
        return (time.perf_counter() - t0) * 1e3

    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def device_only() -> float:
        t = on_dev[i[0] % images]
        i[0] += 1
        with torch.inference_mode():
            t = t.half() if half else t
            if cuda:
                start.record()
                model(t)
                end.record()
                end.synchronize()
                return start.elapsed_time(end)
            t0 = time.perf_counter()
            model(t)
            return (time.perf_counter() - t0) * 1e3

    _timed(host_to_host, warmup_s, 2)
    _timed(device_only, warmup_s / 2, 2)
    h2h = _timed(host_to_host, duration_s)
    devt = _timed(device_only, duration_s / 2)
    p50 = statistics.median(h2h)
    return {"status": "ok", "p50_ms": p50, "p99_ms": percentile(h2h, 99), "n": len(h2h),
            "throughput": batch * len(h2h) / (sum(h2h) / 1e3),
            "device_p50_ms": statistics.median(devt), "device_n": len(devt),
            "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


def run(models, modes, batches, device: str, *, images: int = 4, warmup_s: float = 0.5, duration_s: float = 1.0,
        compile_budget_s: float = 60.0, seed: int = 0, log=print, save=None) -> dict:
    """Every (model, mode, batch); ``save(report)`` is called after each row (a run cut short keeps its rows)."""
    import torch

    torch.backends.cudnn.benchmark = True
    if device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    compile_spent = 0.0

    def report() -> dict:
        info = {"torch": torch.__version__, "device": device, "cudnn_benchmark": True,
                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
        if device.startswith("cuda"):
            info["gpu"] = torch.cuda.get_device_name(0)
        return {"peer": "pytorch", "info": info,
                "settings": {"images": images, "warmup_s": warmup_s, "duration_s": duration_s,
                             "compile_budget_s": compile_budget_s},
                "method": {"host_to_host": "time.perf_counter around from_numpy -> .to(device) -> model -> "
                                           ".cpu().numpy()",
                           "device": "CUDA events around the model call on an input already on the device"},
                "rows": rows}

    for name in models:
        try:
            base, size = build(name, seed)
        except Exception as exc:  # noqa: BLE001 - a missing MONAI costs that model, not the run
            rows.append({"model": name, "status": "error", "reason": f"{exc.__class__.__name__}: {exc}"})
            log(f"{name}: could not build ({exc})")
            continue
        for mode in modes:
            kind, prec = mode.split("-")
            torch.backends.cudnn.allow_tf32 = prec == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
            model = (base.half() if prec == "fp16" else base.float()).to(device)
            compile_s = None
            if kind == "compile":
                if compile_spent >= compile_budget_s:
                    for b in batches:
                        rows.append({"model": name, "mode": mode, "batch": b, "status": "skipped",
                                     "reason": f"the compile budget ({compile_budget_s:g} s) was spent"})
                    continue
                model = torch.compile(model)
            for b in batches:
                row = {"model": name, "mode": mode, "batch": b, "input": [b, 1, size, size],
                       "tf32": bool(torch.backends.cudnn.allow_tf32)}
                try:
                    if kind == "compile":  # the first call compiles; it is timed apart
                        t0 = time.perf_counter()
                        measure(model, mode, b, size, device, images=1, warmup_s=0.0, duration_s=0.0)
                        compile_s = time.perf_counter() - t0
                        compile_spent += compile_s
                    row.update(measure(model, mode, b, size, device, images=images, warmup_s=warmup_s,
                                       duration_s=duration_s))
                    if compile_s is not None:
                        row["compile_s"] = compile_s
                except Exception as exc:  # noqa: BLE001 - reported, the others go on
                    row.update(status="error", reason=f"{exc.__class__.__name__}: {str(exc)[:400]}")
                rows.append(row)
                if save:
                    save(report())
                log(f"{name} {mode} batch {b}: " + (f"p50 {row['p50_ms']:.3f} ms host to host, "
                                                    f"{row['device_p50_ms']:.3f} ms on the device"
                                                    if row.get("status") == "ok" else row.get("reason", "")))
                if kind == "compile" and compile_spent >= compile_budget_s:
                    break
            if kind == "compile":
                torch._dynamo.reset()
    return report()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--batch", default="1,8,32")
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--images", type=int, default=4, help="distinct input batches rotated over (default 4)")
    p.add_argument("--warmup-s", type=float, default=0.5)
    p.add_argument("--duration-s", type=float, default=1.0)
    p.add_argument("--compile-budget-s", type=float, default=60.0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in models if m not in MODELS] + [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown {bad}; models: {', '.join(MODELS)}; modes: {', '.join(MODES)}")
    batches = sorted({int(b) for b in args.batch.split(",") if b})
    def save(rep: dict) -> None:
        if args.json:
            from edgeinfer._io import atomic_write

            atomic_write(args.json, json.dumps(rep, indent=1))

    report = run(models, modes, batches, args.device, images=args.images, warmup_s=args.warmup_s,
                 duration_s=args.duration_s, compile_budget_s=args.compile_budget_s,
                 log=lambda m: print(m, flush=True), save=save)
    save(report)
    return 0 if any(r.get("status") == "ok" for r in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
