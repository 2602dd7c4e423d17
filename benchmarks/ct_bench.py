#!/usr/bin/env python
"""The head-CT segmentation bundle on one volume: per-volume latency, slices per second and peak memory, per
backend and precision, with the pre-model part (read, decode, HU, resample, windows) timed apart.

    .venv/bin/python benchmarks/ct_bench.py [--slices 300] [--repeats 3] [--threads 2] [--json OUT] [--report OUT.md]

A benchmark, not a test. One phantom head CT with a bleed, ``--slices`` slices of 512 x 512 at 0.625 mm (300: the issue's study,
187 mm of scan range around the head), written to a temporary folder; then, each in a fresh process (so that its
peak resident memory is its own): the series read as the runtime reads it (``SegmentationSpec.read``), and
``edgeinfer triage``'s engine (``VolumeTriageEngine``) over the whole study per runtime mode; last, the SEG
and SR built from the record (``write_results``). Medians of ``--repeats``. The issue's budgets: pre-model
work <= 2 ms per slice, the SEG <= 10 % of the study's time; through ``edgeinfer serve`` with Orthanc as the PACS
(``--no-node`` skips it): the quiet period's end to the SR and SEG in Orthanc <= 15 s, the node's peak resident
memory <= 1.5 GB. Run it on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import machine_line, publish  # noqa: E402

FORMAT = 1
BUNDLE = "phantom-ct-head"
PRE_MODEL_BUDGET_MS = 2.0
#: a thin-slice head CT: 300 slices of 0.625 mm cover 187 mm, the head and the scan range around it
THICKNESS = 0.625
#: (backend, precision, runtime precision hint) per row
MODES = (("onnxruntime", "fp32", None), ("onnxruntime", "fp16", None), ("onnxruntime", "int8", None),
         ("openvino", "fp32", None), ("openvino", "int8", None))


def write_study(folder: Path, slices: int) -> dict:
    import pydicom

    from edgeinfer.phantom.ct_head import make_head_ct

    ct = make_head_ct(np.random.default_rng([2026, 11]), index=1, finding="iph", thickness=THICKNESS, slices=slices)
    for k, ds in enumerate(ct.datasets):
        pydicom.dcmwrite(folder / f"{k:04d}.dcm", ds, enforce_file_format=True)
    return {"slices": len(ct.datasets), "thickness_mm": THICKNESS, "volume_ml": ct.volume_ml}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _pre_model(folder: str, repeats: int, queue) -> None:
    from edgeinfer.bundle import load_bundle
    from edgeinfer.segmentation import SegmentationSpec

    from edgeinfer.dicomio import ReadLimits
    from edgeinfer.volume import _header

    spec = SegmentationSpec.from_manifest(load_bundle(BUNDLE).manifest["segmentation"])
    paths = sorted(Path(folder).glob("*.dcm"))
    spec.read(paths)                   # warm-up, as for the modes below
    heads, reads = [], []
    for _ in range(repeats):           # as the engine does it: every header, then the chosen series' pixels
        t0 = time.perf_counter()
        headers = [_header(p, ReadLimits()) for p in paths]
        t1 = time.perf_counter()
        x, vol = spec.read(paths, headers=headers)
        heads.append(t1 - t0)
        reads.append(time.perf_counter() - t1)
    h, r = float(np.median(heads)), float(np.median(reads))
    queue.put({"seconds": h + r, "headers_s": h, "pixels_s": r, "ms_per_slice": (h + r) * 1e3 / len(paths),
               "model_grid": list(x.shape), "peak_rss_mb": round(_peak_mb(), 1)})


def _mode(folder: str, backend: str, precision: str, threads: int, repeats: int, queue) -> None:
    from edgeinfer.backends import RunnerOptions, create_runner
    from edgeinfer.bundle import load_bundle
    from edgeinfer.dicomout import source_header, write_results
    from edgeinfer.errors import EdgeInferError
    from edgeinfer.intake import discover
    from edgeinfer.volume_triage import VolumeTriageEngine

    bundle = load_bundle(BUNDLE)
    files = discover([folder])
    try:
        artifact = bundle.artifact(precision=precision, format="onnx")
        runner = create_runner(artifact, RunnerOptions(threads=threads), backend=backend)
    except EdgeInferError as exc:
        queue.put({"skipped": f"{exc.__class__.__name__}: {exc}"})
        return
    with runner:
        engine = VolumeTriageEngine(bundle, runner)
        warm = engine.run(files).studies[0]             # warm-up: the first run pays for lazy kernel setup
        if not warm.get("timings_ms"):
            raise RuntimeError(f"the study was not segmented: {warm.get('reason')}")
        walls, stats = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            wl = engine.run(files)
            walls.append(time.perf_counter() - t0)
            stats.append(wl.studies[0]["timings_ms"])
    study = wl.studies[0]
    sources = [source_header(i["path"]) for i in study["images"]]
    seg_s = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        objects = write_results(("seg", "sr"), study, sources, bundle=wl.bundle, run=wl.run, version=1)
        seg_s.append(time.perf_counter() - t0)
    med = {k: float(np.median([s[k] for s in stats])) for k in ("read", "infer", "postprocess")}
    wall = float(np.median(walls))
    queue.put({"wall_s": wall, "read_s": med["read"] / 1e3, "infer_s": med["infer"] / 1e3,
               "post_s": med["postprocess"] / 1e3, "seg_sr_s": float(np.median(seg_s)),
               "slices_per_s": len(study["images"]) / wall, "volume_ml": study["volumes_ml"],
               "priority": study["priority"], "objects": [o.kind for o in objects],
               "peak_rss_mb": round(_peak_mb(), 1), "provider": wl.run.get("provider")})


def _guarded(target, args, queue) -> None:
    try:
        target(*args, queue)
    except BaseException as exc:  # noqa: BLE001 - reported as the row, never a parent waiting forever
        queue.put({"skipped": f"failed: {exc.__class__.__name__}: {exc}"})


def _in_child(target, *args):
    """``target(*args, queue)`` in a fresh process (its own peak memory); what it put, or why it gave nothing."""
    import queue as _queue

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_guarded, args=(target, args, q))
    p.start()
    while True:
        try:
            out = q.get(timeout=1.0)
            break
        except _queue.Empty:
            if not p.is_alive():
                out = {"skipped": f"the process ended with exit code {p.exitcode} and no result"}
                break
    p.join()
    return out


def _vm_hwm_mb(pid: int) -> float | None:
    """The peak resident memory of a live process (Linux: VmHWM), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def node_run(folder: Path, threads: int, quiet: float) -> dict:
    """``edgeinfer serve --bundle phantom-ct-head`` with Orthanc as its PACS: the study sent by storescu, then the
    time from the end of the quiet period (the node's record of the last instance + quiet) to the SR and the
    SEG stored in Orthanc (seen on its /changes), and the node's and its builder's peak resident memory."""
    import node_bench as nb

    with tempfile.TemporaryDirectory(prefix="edgeinfer-ct-node-") as tmp:
        work = Path(tmp)
        pacs = nb.Orthanc(work / "orthanc")
        args = argparse.Namespace(quiet_seconds=quiet, threads=threads,
                                  serve_arg=["--bundle", BUNDLE, "--result-processes", "1",
                                             "--backend", "auto", "--precision", "auto"])   # the default mode
        (work / "node").mkdir()
        node = nb.Node(work / "node", args, pacs)
        watcher = nb.ChangeWatcher(pacs, 0.05)
        watcher.start()
        try:
            sent = nb.storescu(node.port, sorted(folder.glob("*.dcm")))
            nb.wait_until(lambda: watcher.count() >= 2, 300, 0.1, "the SR and the SEG in Orthanc")
            (row,) = node.timeline().values()
            arrived = max(watcher.seen.values())
            builder = [_vm_hwm_mb(c) for c in _children(node.proc.pid)]
            run = json.loads(node.get("/worklist")[1] or b"{}").get("run") or {}
            out = {"store_s": sent["wall_s"], "quiet_s": quiet,
                   "quiet_end_to_pacs_s": arrived - (row["last_received"] + quiet),
                   "scored_s": row["result_created"] - (row["last_received"] + quiet),
                   "node_peak_rss_mb": _vm_hwm_mb(node.proc.pid),
                   "builder_peak_rss_mb": max((b for b in builder if b), default=None),
                   "timings_ms": row["timings_ms"], "objects": watcher.count(),
                   "mode": f"{run.get('backend', '?')} {run.get('precision', '?')}"}
        finally:
            watcher.stop()
            nb.stop(node.proc)
            nb.stop(pacs.proc)
    return out


def measure(slices: int, repeats: int, threads: int, node: bool, quiet: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgeinfer-ct-bench-") as tmp:
        study = write_study(Path(tmp), slices)
        pre = _in_child(_pre_model, tmp, repeats)
        rows = []
        for backend, precision, _ in MODES:
            r = _in_child(_mode, tmp, backend, precision, threads, repeats)
            rows.append({"backend": backend, "precision": precision, **r})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        served = node_run(Path(tmp), threads, quiet) if node else None
    return {"study": study, "pre_model": pre, "rows": rows, "node": served}


def render(r: dict) -> str:
    st, pre = r["study"], r["pre_model"]
    lines = [f"# The head-CT segmentation bundle on one volume, {r['machine']}", "",
             f"One phantom head CT: {st['slices']} slices of 512 x 512 ({st['thickness_mm']:g} mm), an "
             f"intraparenchymal bleed of {st['volume_ml']:.1f} mL; bundle `{BUNDLE}`, {r['threads']} threads, medians "
             f"of {r['repeats']} runs after a warm-up, each mode in its own process.", "",
             f"Pre-model (every header, then read, decode, HU, in-plane resample to the model's 1 mm, 3 windows), on "
             f"its own: {pre['seconds']:.2f} s ({pre['headers_s']:.2f} s headers, {pre['pixels_s']:.2f} s pixels), "
             f"**{pre['ms_per_slice']:.2f} ms per slice** (budget {PRE_MODEL_BUDGET_MS:g} ms: "
             f"{'met' if pre['ms_per_slice'] <= PRE_MODEL_BUDGET_MS else 'not met'}); model grid "
             f"{' x '.join(map(str, pre['model_grid']))}; peak RSS {pre['peak_rss_mb']:.0f} MB.", "",
             "| backend | precision | volume (s) | read (s) | model (s) | post (s) | SEG + SR (s) | slices/s | "
             "volume (mL) | priority | peak RSS (MB) |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|"]
    for x in r["rows"]:
        if x.get("skipped"):
            lines.append(f"| {x['backend']} | {x['precision']} | skipped: {x['skipped']} |||||||||")
            continue
        vol = ", ".join(f"{v:.2f}" for v in x["volume_ml"].values())
        lines.append(f"| {x['backend']} | {x['precision']} | {x['wall_s']:.2f} | {x['read_s']:.2f} | "
                     f"{x['infer_s']:.2f} | {x['post_s']:.2f} | {x['seg_sr_s']:.2f} | {x['slices_per_s']:.0f} | {vol} | "
                     f"{x['priority']} | {x['peak_rss_mb']:.0f} |")
    lines += ["", "volume: the whole study through `VolumeTriageEngine` (headers, series choice, read, model through "
              "the sliding window, back onto the source slices, components, volume); SEG + SR: both objects built "
              "and encoded from the study record, as the node's builder does."]
    n = r.get("node")
    if n:
        lines += ["", "## Through the node", "",
                  f"`edgeinfer serve --bundle {BUNDLE}` (default mode, which chose {n['mode']}; {r['threads']} threads, "
                  f"one builder process) with Orthanc as its PACS; the study sent by storescu in {n['store_s']:.1f} s, "
                  f"quiet period {n['quiet_s']:g} s.", "",
                  "| quiet period's end to SR + SEG in Orthanc (s) | of it: scored (s) | node peak RSS (MB) | "
                  "builder peak RSS (MB) |", "|--:|--:|--:|--:|",
                  f"| {n['quiet_end_to_pacs_s']:.1f} (budget 15: {'met' if n['quiet_end_to_pacs_s'] <= 15 else 'not met'}) "
                  f"| {n['scored_s']:.1f} | {n['node_peak_rss_mb']:.0f} (budget 1,536: "
                  f"{'met' if n['node_peak_rss_mb'] <= 1536 else 'not met'}) | "
                  f"{n['builder_peak_rss_mb'] or 0:.0f} |"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-node", action="store_true", help="skip the run through edgeinfer serve and Orthanc")
    ap.add_argument("--quiet-seconds", type=float, default=5.0, help="the node's quiet period in that run")
    ap.add_argument("--json", default=None)
    ap.add_argument("--report", default=None)
    args = ap.parse_args(argv)
    r = {"edgeinfer_ct_bench": FORMAT, "machine": machine_line(flags=True), "repeats": args.repeats,
         "threads": args.threads, **measure(args.slices, args.repeats, args.threads, not args.no_node, args.quiet_seconds)}
    publish(r, render(r), args.json, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
