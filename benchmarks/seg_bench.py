#!/usr/bin/env python
"""How long writing a DICOM SEG takes on its own (highdicom #81: slow SEG writing), for a head CT.

    .venv/bin/python benchmarks/seg_bench.py [--size 512] [--thickness 0.625] [--slices 300] [--repeats 3] [--json OUT] [--report OUT.md]

A benchmark, not a test. One phantom head CT with a bleed (``edgeinfer phantom --kind ct-head``'s generator;
300 slices of 0.625 mm at 512 x 512 by default: the issue's study), its ground-truth mask written as a SEG by
``edgeinfer.dicomout.seg`` (empty frames kept, the default, and left out), building and encoding timed apart,
the median of ``--repeats``. The issue's budget: SEG writing at most 10 % of a study's 15 s. Run it on an
idle machine.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import machine_line, publish  # noqa: E402

FORMAT = 1
BUDGET_S = 1.5      # 10 % of the 15 s from quiet period to SR and SEG in PACS


def measure(size: int, thickness: float, repeats: int, slices: int | None = None) -> dict:
    import pydicom

    from edgeinfer.dicomout.seg import build_seg, seg_bytes
    from edgeinfer.phantom.ct_head import make_head_ct

    ct = make_head_ct(np.random.default_rng([2026, 7]), index=1, finding="sdh", size=size, thickness=thickness,
                      slices=slices)
    sources = []
    for ds in ct.datasets:                      # as the node has them: read back from Part 10, headers only
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        buf.seek(0)
        sources.append(pydicom.dcmread(buf, stop_before_pixels=True))
    bundle = {"name": "ct-bleed", "version": "bench", "digest": "00" * 32}
    rows = []
    for keep in (True, False):
        build, encode, size_b, frames = [], [], 0, 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            seg = build_seg({"sdh": ct.mask.astype(bool)}, sources, bundle=bundle, version=1, keep_empty_frames=keep)
            t1 = time.perf_counter()
            data = seg_bytes(seg)
            t2 = time.perf_counter()
            build.append(t1 - t0)
            encode.append(t2 - t1)
            size_b, frames = len(data), int(seg.NumberOfFrames)
        rows.append({"empty_frames": "kept" if keep else "left out", "frames": frames, "bytes": size_b,
                     "build_s": float(np.median(build)), "encode_s": float(np.median(encode)),
                     "total_s": float(np.median(np.add(build, encode)))})
    return {"slices": len(ct.datasets), "size": size, "thickness_mm": thickness, "volume_ml": ct.volume_ml,
            "rows": rows}


def render(r: dict) -> str:
    lines = [f"# Writing a DICOM SEG, {r['machine']}", "",
             f"One phantom head CT: {r['slices']} slices of {r['size']} x {r['size']} ({r['thickness_mm']:g} mm), a "
             f"subdural bleed of {r['volume_ml']:.1f} mL; `edgeinfer.dicomout.seg` (highdicom), median of "
             f"{r['repeats']}. Budget: {BUDGET_S:g} s (10 % of the issue's 15 s per study).", "",
             "| empty frames | frames | size (MB) | build (s) | encode (s) | total (s) | budget |",
             "|---|--:|--:|--:|--:|--:|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['empty_frames']} | {x['frames']} | {x['bytes'] / 1e6:.1f} | {x['build_s']:.2f} | "
                     f"{x['encode_s']:.2f} | {x['total_s']:.2f} | {'met' if x['total_s'] <= BUDGET_S else 'not met'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--thickness", type=float, default=0.625)
    ap.add_argument("--slices", type=int, default=300, help="slices (the scan range around the head; 0: the head only)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--report", default=None)
    args = ap.parse_args(argv)
    r = {"edgeinfer_seg_bench": FORMAT, "machine": machine_line(flags=True), "repeats": args.repeats,
         **measure(args.size, args.thickness, args.repeats, args.slices or None)}
    publish(r, render(r), args.json, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
