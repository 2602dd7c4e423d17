#!/usr/bin/env python
"""Pre-model cost per image: read + decode + preprocess, the runtime against the oracle, in one run.

    .venv/bin/python benchmarks/intake_bench.py [DATA_DIR] [--n 120] [--seed 2026] [--repeats 7]
        [--opencv-threads N] [--bundle BUNDLE] [--json OUT] [--report OUT.md]

A benchmark, not a test. Every DICOM file of DATA_DIR (a phantom set at full detector size, generated
when DATA_DIR is not given or empty) goes through :meth:`edgeinfer.intake.Intake.take` ``--repeats``
times in this one thread, from the page cache (each file is read once before timing). The same files go
through the same intake with the oracle's preprocessing (implementation 1, ``tests/oracle_preprocess.py``)
in alternating passes, so both see the same machine. Per group of (modality, size, transfer syntax,
window source): the median per image of read, decode, preprocess and their sum, for each path, and the
ratio. Run it on an idle machine: with 2 cores, anything else running makes the figures meaningless.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import dicom_files, machine_line, phantom_set, publish, script_parser  # noqa: E402
from preprocess_agreement import oracle_path  # noqa: E402  (the oracle, as the agreement check uses it)

STAGES = ("read", "decode", "preprocess")
#: the report's format (its JSON says which kind of result it is)
FORMAT = 1


def _groups(img) -> tuple[str, str]:
    """(modality, size, transfer syntax) with and without the window source."""
    from edgeinfer.dicomio import describe_transfer_syntax

    ds = img.ds
    ts = describe_transfer_syntax(ds)
    shape = img.prepared.source_shape
    key = f"{ds.get('Modality', '?')} {shape[0]}x{shape[-1]} {ts}"
    return f"{key}, every window", f"{key}, {img.prepared.window.get('source', '?')} window"


def measure(bundle, files, repeats: int) -> dict:
    from edgeinfer.intake import Image, Intake

    intake = Intake.for_bundle(bundle)
    for f in files:
        f.read_bytes()
    groups: dict[str, dict[str, dict[str, list[float]]]] = {}
    for _ in range(repeats):
        for path_name in ("runtime", "oracle"):
            with oracle_path() if path_name == "oracle" else _nothing():
                for f in files:
                    img = intake.take(f)
                    if not isinstance(img, Image):
                        continue
                    for key in _groups(img):
                        g = groups.setdefault(key, {"runtime": {s: [] for s in (*STAGES, "total")},
                                                    "oracle": {s: [] for s in (*STAGES, "total")}})
                        for s in STAGES:
                            g[path_name][s].append(img.timings_ms[s])
                        g[path_name]["total"].append(sum(img.timings_ms[s] for s in STAGES))
    out = {}
    for name, g in sorted(groups.items()):
        med = {p: {s: float(np.median(v)) for s, v in g[p].items()} for p in g}
        out[name] = {"images": len(g["runtime"]["total"]) // repeats, "median_ms": med,
                     "speedup_total": med["oracle"]["total"] / med["runtime"]["total"]}
    return out


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def render(r: dict, machine: str) -> str:
    lines = [f"# Pre-model cost per image (median ms), {machine}", "",
             "| group | images | read | decode | preprocess (oracle) | total (oracle) | speed-up |",
             "|---|--:|--:|--:|--:|--:|--:|"]
    for name, g in r["groups"].items():
        rt, orc = g["median_ms"]["runtime"], g["median_ms"]["oracle"]
        lines.append(f"| {name} | {g['images']} | {rt['read']:.2f} | {rt['decode']:.2f} | "
                     f"{rt['preprocess']:.2f} ({orc['preprocess']:.2f}) | {rt['total']:.2f} ({orc['total']:.2f}) | "
                     f"{g['speedup_total']:.2f}x |")
    lines += ["", f"{r['repeats']} passes of each path, alternating, one calling thread (OpenCV's resize may use "
              f"{r.get('opencv_threads', '?')} threads of its own), files in the page cache. Read and decode are the "
              f"same code on both paths; the oracle is preprocessing implementation 1, the runtime "
              f"{r.get('runtime_impl', '?')}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = script_parser(__doc__, n=120, seed=2026)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--opencv-threads", type=int, default=None,
                    help="threads OpenCV may use (cv2.setNumThreads; default: its own choice, the usable CPUs)")
    args = ap.parse_args(argv)
    import cv2

    from edgeinfer.bundle import default_bundle_path, load_bundle
    from edgeinfer.preprocess import PREPROCESS_IMPL

    if args.opencv_threads is not None:
        cv2.setNumThreads(args.opencv_threads)

    data = phantom_set(args.data, args.n, args.seed, prefix="intake-bench-")
    files = dicom_files(data)
    t0 = time.perf_counter()
    groups = measure(load_bundle(args.bundle or default_bundle_path()), files, args.repeats)
    r = {"edgeinfer_intake_bench": FORMAT, "machine": machine_line(flags=True), "files": len(files),
         "repeats": args.repeats, "opencv_threads": cv2.getNumThreads(), "runtime_impl": PREPROCESS_IMPL,
         "groups": groups, "wall_s": time.perf_counter() - t0,
         "data": {"path": str(data), "n": args.n, "seed": args.seed}}
    publish(r, render(r, r["machine"]), args.json, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
