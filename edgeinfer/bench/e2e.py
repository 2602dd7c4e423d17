"""End to end for ``edgeinfer bench``: DICOM file to priority, per image, through the intake stage
(read, decode, preprocess: :class:`edgeinfer.intake.Intake`), inference and postprocessing; serially,
and with the intake overlapped with inference in a small thread pool."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .accuracy import gate_ok
from .plan import BASELINE, BenchSettings, Case
from .stats import _ms, percentile

STAGES = ("read", "decode", "preprocess", "infer", "post")


def _postprocess(out: dict, bundle, output_name: str) -> float | None:
    """Model output -> the image score triage uses (classification); for a segmentation output
    (N, C, H, W) on one image the per-label score is the mask's largest probability, as the segmentation
    task scores a slice (a series' volumes and their priority: ``benchmarks/ct_bench.py``)."""
    from ..triage import image_scores

    y = np.asarray(out.get(output_name, next(iter(out.values()))), dtype=np.float64)
    if y.ndim == 4:
        y = y.reshape(y.shape[0], y.shape[1], -1).max(axis=2)
    if y.ndim != 2 or y.shape[1] != len(bundle.labels):
        return None
    scores, finite = image_scores(y, bundle)
    return float(scores[0]) if finite[0] else None


def _finish_studies(per_study: dict[str, list[float | None]], bundle) -> dict[str, str]:
    from ..triage import priority_for, study_score

    how = bundle.manifest["triage"].get("study_score", "max")
    return {uid: priority_for(study_score(scores, how), bundle) for uid, scores in per_study.items()}


def _megapixels_bucket(rows: int, cols: int) -> str:
    mp = rows * cols / 1e6
    return "< 1 MP" if mp < 1 else "1-4 MP" if mp < 4 else "4-9 MP" if mp < 9 else ">= 9 MP"


def premodel_by_syntax(samples: Sequence[tuple[str, str, float]]) -> list[dict]:
    """(transfer syntax, size bucket, read + decode + preprocess ms) -> one row per group, median and count."""
    groups: dict[tuple[str, str], list[float]] = {}
    for ts, size, ms in samples:
        groups.setdefault((ts, size), []).append(ms)
    return [{"transfer_syntax": ts, "size": size, "images": len(v), "p50_ms": percentile(v, 50),
             "mean_ms": float(np.mean(v))} for (ts, size), v in sorted(groups.items())]


def attach_inference_only(result: dict, rows: Sequence[dict]) -> None:
    """End-to-end images/s against the same mode's inference-only images/s (batch 1, from the matrix)."""
    row = next((r for r in rows if r.get("status") == "ok" and r["backend"] == result["backend"]
                and r["precision"] == result["precision"] and r["batch"] == 1 and r.get("p50_ms")), None)
    if row is None or "serial" not in result:
        return
    inf = 1e3 / row["p50_ms"]
    result["inference_only_images_per_s"] = inf
    result["e2e_vs_inference_only"] = {k: (result[k]["images_per_s"] / inf if result[k]["images_per_s"] else None)
                                       for k in ("serial", "overlapped")}


def run_e2e(bundle, case: Case, files: Sequence[Path], settings: BenchSettings) -> dict:
    """Serial and overlapped passes over ``files`` with one runner (batch 1), ``e2e_repeats`` times each."""
    from ..backends import RunnerOptions, get_backend
    from ..dicomio import describe_transfer_syntax
    from ..intake import Image, Intake

    intake = Intake.for_bundle(bundle)
    in_name = bundle.manifest["inputs"][0]["name"]
    out_name = bundle.manifest["outputs"][0]["name"]
    # the intake shares the cores with inference in both passes (shared_cpu: no spinning)
    options = RunnerOptions(device=case.device, threads=settings.threads, precision_hint=case.hint,
                            cache_dir=settings.cache_dir, shared_cpu=True)
    result: dict[str, Any] = {"backend": case.backend, "precision": case.precision, "batch": 1,
                              "files": len(files)}
    for f in files:  # page cache: every pass reads from memory, not from the first pass's cold disk
        try:
            f.read_bytes()
        except OSError:
            pass
    with get_backend(case.backend).create(case.artifact, options) as runner:
        result["precision_executed"] = runner.report().precision
        dtype = np.float16 if runner.inputs[0].dtype in ("float16", "<f2") else np.float32

        def infer_post(tensor) -> tuple[float | None, float, float]:
            t0 = time.perf_counter_ns()
            out = runner.infer({in_name: tensor[None].astype(dtype, copy=False)})
            t1 = time.perf_counter_ns()
            score = _postprocess(out, bundle, out_name)
            return score, _ms(t1 - t0), _ms(time.perf_counter_ns() - t1)

        # warm-up on the first usable file
        for f in files[:3]:
            first = intake.take(f)
            if isinstance(first, Image):
                for _ in range(3):
                    infer_post(first.tensor)
                break

        premodel: list[tuple[str, str, float]] = []

        def serial_pass(stages: dict[str, list[float]], counts: dict[str, int]) -> tuple[float, dict]:
            per_study: dict[str, list[float | None]] = {}
            t_start = time.perf_counter_ns()
            for f in files:
                img = intake.take(f)
                if not isinstance(img, Image):
                    counts["skipped" if img.skipped else "errors"] += 1
                    continue
                score, infer_ms, post_ms = infer_post(img.tensor)
                for st in ("read", "decode", "preprocess"):
                    stages[st].append(img.timings_ms[st])
                shape = img.prepared.source_shape
                premodel.append((describe_transfer_syntax(img.ds), _megapixels_bucket(shape[0], shape[-1]),
                                 sum(img.timings_ms[st] for st in ("read", "decode", "preprocess"))))
                stages["infer"].append(infer_ms)
                stages["post"].append(post_ms)
                per_study.setdefault(img.study_uid, []).append(score)
                counts["images"] += 1
            t_post = time.perf_counter_ns()
            priorities = _finish_studies(per_study, bundle)
            # the study aggregation is postprocessing too: charged to the pass's last image
            stages["post"][-1:] = [x + _ms(time.perf_counter_ns() - t_post) for x in stages["post"][-1:]]
            return (time.perf_counter_ns() - t_start) / 1e9, priorities

        def overlapped_pass(pool) -> tuple[float, int]:
            """read + decode + preprocess in the intake's pool (Intake.stream, what triage runs: threads,
            or processes, started once before the passes), inference and postprocessing in this thread."""
            per_study: dict[str, list[float | None]] = {}
            t_start = time.perf_counter_ns()
            for img in intake.stream(files, pool=pool):
                if isinstance(img, Image):
                    per_study.setdefault(img.study_uid, []).append(infer_post(img.tensor)[0])
            _finish_studies(per_study, bundle)
            return (time.perf_counter_ns() - t_start) / 1e9, len(per_study)

        # passes alternate (serial, overlapped, serial, ...) so both see the same machine
        workers = max(1, settings.e2e_workers)
        stages: dict[str, list[float]] = {st: [] for st in STAGES}
        serial_walls, overlapped_walls = [], []
        priorities: dict = {}
        counts = {"images": 0, "skipped": 0, "errors": 0}
        with intake.pool(workers, processes=settings.e2e_processes) as pool:
            t_pool = time.perf_counter_ns()
            pool.warm()  # a process pool's start (spawn, imports) is reported apart, not charged to a pass
            pool_start_s = (time.perf_counter_ns() - t_pool) / 1e9
            for rep in range(max(1, settings.e2e_repeats)):
                counts = {"images": 0, "skipped": 0, "errors": 0}
                wall, priorities = serial_pass(stages, counts)
                serial_walls.append(wall)
                wall, n_studies_o = overlapped_pass(pool)
                overlapped_walls.append(wall)
        n_studies = len(priorities)
        n_img = counts["images"]
        totals = {st: float(sum(v)) for st, v in stages.items()}
        all_ms = sum(totals.values()) or float("nan")
        wall_s = float(np.median(serial_walls))
        wall_o = float(np.median(overlapped_walls))
        result.update(counts)
        result["studies"] = n_studies
        result["repeats"] = len(serial_walls)
        result["serial"] = {
            "wall_s": wall_s, "wall_s_range": [min(serial_walls), max(serial_walls)],
            "studies_per_s": n_studies / wall_s if wall_s else None,
            "images_per_s": n_img / wall_s if wall_s else None,
            "per_image_ms": {st: (float(np.mean(stages[st])) if stages[st] else None) for st in STAGES},
            "p50_image_ms": {st: (percentile(stages[st], 50) if stages[st] else None) for st in STAGES},
            "share": {st: totals[st] / all_ms for st in STAGES},
            "unaccounted_ms_per_pass": wall_s * 1e3 - all_ms / len(serial_walls),
        }
        result["premodel_by_transfer_syntax"] = premodel_by_syntax(premodel)
        result["priorities"] = {p: sum(1 for v in priorities.values() if v == p) for p in sorted(set(priorities.values()))}
        result["overlapped"] = {
            "workers": workers, "processes": settings.e2e_processes, "pool_start_s": pool_start_s,
            "wall_s": wall_o, "wall_s_range": [min(overlapped_walls), max(overlapped_walls)],
            "studies_per_s": n_studies_o / wall_o if wall_o else None,
            "images_per_s": n_img / wall_o if wall_o else None,
            "speedup_vs_serial": wall_s / wall_o if wall_o else None,
            # it pays only if every overlapped pass beat every serial pass
            "pays": max(overlapped_walls) < min(serial_walls),
            "note": "decode threads and inference threads share the same cores; on a small CPU this may not pay",
        }
    return result



def _e2e_cases(rows: list[dict], cases: dict, mode: str) -> list[Case]:
    ok = [r for r in rows if r["status"] == "ok"]
    if mode == "none" or not ok:
        return []
    batch = min(r["batch"] for r in ok)
    ok = [r for r in ok if r["batch"] == batch]
    if mode == "all":
        chosen = ok
    else:
        chosen = [r for r in ok if (r["backend"], r["precision"]) == BASELINE]
        gated = sorted((r for r in ok if gate_ok(r)), key=lambda r: r["p50_ms"])
        if gated and all(gated[0] is not c for c in chosen):
            chosen.append(gated[0])
        if not chosen:
            chosen = [min(ok, key=lambda r: r["p50_ms"])]
    return [cases[(r["backend"], r["precision"])] for r in chosen]

