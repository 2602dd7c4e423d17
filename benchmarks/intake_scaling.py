#!/usr/bin/env python
"""Does the intake scale with the cores? Images/s of Intake.stream against the number of workers,
threads against processes.

    .venv/bin/python benchmarks/intake_scaling.py [DATA_DIR] [--n 40] [--seed 2026] [--workers 1,2,4,8]
        [--repeats 2] [--json OUT] [--report OUT.md]

A benchmark, not a test. Every DICOM file of DATA_DIR (a full-size phantom set, generated when DATA_DIR
is not given or empty) is read, decoded and preprocessed for the embedded bundle by ``Intake.stream`` with
N workers, as threads and as spawned processes, no inference. Throughput is steady state: images after
the first / time from the first outcome to the last, so a process pool's start (reported apart) is not
in it. The median of ``--repeats`` passes. Run it on an idle machine.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import dicom_files, machine_line, phantom_set, publish, script_parser  # noqa: E402

FORMAT = 1


def measure(intake, files, workers: list[int], repeats: int) -> list[dict]:
    from edgeinfer.intake import Image

    for f in files:
        f.read_bytes()
    rows = []
    for processes in (False, True):
        for n in workers:
            rates, starts = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                stamps = []
                images = 0
                for outcome in intake.stream(files, workers=n, processes=processes):
                    stamps.append(time.perf_counter())
                    images += isinstance(outcome, Image)
                starts.append(stamps[0] - t0)
                rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
            rows.append({"kind": "processes" if processes else "threads", "workers": n, "images": images,
                         "images_per_s": float(np.median(rates)), "first_outcome_s": float(np.median(starts))})
    one = next(r["images_per_s"] for r in rows if r["kind"] == "threads" and r["workers"] == min(workers))
    for r in rows:
        r["vs_one_thread"] = r["images_per_s"] / one
    return rows


def render(r: dict) -> str:
    lines = [f"# Intake throughput against workers, {r['machine']}", "",
             f"{r['files']} files (full-size phantoms), read + decode + preprocess, no inference; steady-state "
             f"images/s, median of {r['repeats']} passes.", "",
             "| workers | threads, images/s | processes, images/s | processes: pool start |", "|--:|--:|--:|--:|"]
    by = {(x["kind"], x["workers"]): x for x in r["rows"]}
    for n in sorted({x["workers"] for x in r["rows"]}):
        t, p = by[("threads", n)], by[("processes", n)]
        lines.append(f"| {n} | {t['images_per_s']:.1f} ({t['vs_one_thread']:.2f}x) | {p['images_per_s']:.1f} "
                     f"({p['vs_one_thread']:.2f}x) | {p['first_outcome_s']:.2f} s |")
    return "\n".join(lines + [""])


def main(argv=None) -> int:
    ap = script_parser(__doc__, n=40, seed=2026)
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    from edgeinfer.bundle import default_bundle_path, load_bundle
    from edgeinfer.intake import Intake

    files = dicom_files(phantom_set(args.data, args.n, args.seed, prefix="intake-scaling-"))
    intake = Intake.for_bundle(load_bundle(default_bundle_path()))
    r = {"edgeinfer_intake_scaling": FORMAT, "machine": machine_line(), "files": len(files), "repeats": args.repeats,
         "rows": measure(intake, files, [int(x) for x in args.workers.split(",")], args.repeats)}
    publish(r, render(r), args.json, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
