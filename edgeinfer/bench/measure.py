"""Measuring one row of ``edgeinfer bench``: the runtime call and the raw backend call, timed in
alternating blocks (ABBA) on the same artifact and inputs, with spread, cold start and memory."""
from __future__ import annotations

import functools
import gc
import os
import time
from typing import Any, Callable

import numpy as np

from ..errors import BackendUnavailable, MissingDependency
from .accuracy import accuracy_for
from .inputs import Inputs, make_feeds
from .memory import PeakRss, gpu_memory_used_mb
from .plan import BenchSettings, Case
from .stats import _ms, block_spread, distribution, latency_stats, no_difference, percentile, split


def _segment(make_call: Callable[[int], Callable[[], Any]], start: int, samples: list[int], *,
             iterations: int | None, seconds: float | None, min_calls: int,
             after: Callable[[], None] | None = None) -> int:
    """Time calls until ``iterations`` are done or ``seconds`` have passed (and ``min_calls``)."""
    i = start
    deadline = time.perf_counter_ns() + int((seconds or 0.0) * 1e9)
    while True:
        call = make_call(i)                    # staging the inputs is not timed
        t0 = time.perf_counter_ns()
        call()
        t1 = time.perf_counter_ns()
        samples.append(t1 - t0)
        i += 1
        if after is not None:
            after()
        done = i - start
        if iterations is not None:
            if done >= iterations:
                return i
        elif t1 >= deadline and done >= min_calls:
            return i


def _thread_settings(runner, requested: int | None) -> dict:
    out: dict[str, Any] = {"requested": requested if requested else "backend default"}
    try:
        if runner.backend_name == "onnxruntime" and runner.session is not None:
            so = runner.session.get_session_options()
            out["ort_intra_op_num_threads"] = so.intra_op_num_threads or "default (one per physical core)"
            out["ort_inter_op_num_threads"] = so.inter_op_num_threads or "default"
        elif runner.backend_name == "openvino" and runner.compiled is not None:
            for prop in ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT", "ENABLE_HYPER_THREADING"):
                try:
                    out[f"openvino_{prop.lower()}"] = str(runner.compiled.get_property(prop))
                except Exception:  # noqa: BLE001 - not every version has every property
                    pass
    except Exception as exc:  # noqa: BLE001
        out["error"] = str(exc)
    out["omp_num_threads_env"] = os.environ.get("OMP_NUM_THREADS", "unset")
    return out


def _unavailable(base: dict, reason: str, status: str = "unavailable") -> dict:
    return {**base, "status": status, "reason": reason}


def measure_case(case: Case, bundle, inputs: Inputs, batch: int, settings: BenchSettings,
                 rss: PeakRss, bundle_load_ms: float) -> dict:
    """One row: latency of the runtime call and of the raw call, spread, cold start, memory."""
    from ..backends import RunnerOptions, get_backend

    row: dict[str, Any] = {"backend": case.backend, "precision": case.precision, "batch": batch,
                           "artifact": getattr(case.artifact, "id", None),
                           "accuracy": accuracy_for(bundle, case.backend, case.precision, case.artifact)}
    if case.reason:
        return _unavailable(row, case.reason)
    extra = {"timing": True} if case.backend == "tensorrt" or case.device == "cuda" else {}
    if case.backend == "onnxruntime" and case.device == "cuda" and settings.cuda_options:
        extra["cuda"] = settings.cuda_options
    options = RunnerOptions(device=case.device, threads=settings.threads, precision_hint=case.hint,
                            cache_dir=settings.cache_dir, extra=extra)
    gc.collect()
    rss.reset()
    rss_before = rss.current_mb()
    gpu_before = gpu_memory_used_mb() if case.device != "cpu" else None
    runner = get_backend(case.backend).create(case.artifact, options)
    try:
        try:
            runner.activate()
        except (BackendUnavailable, MissingDependency) as exc:
            return _unavailable(row, str(exc))
        except Exception as exc:  # noqa: BLE001 - report it and go on with the next row
            return _unavailable(row, f"{exc.__class__.__name__}: {exc}", status="error")
        meta = runner.inputs
        in_name = bundle.manifest["inputs"][0]["name"]
        if len(meta) != 1 or meta[0].name != in_name:
            return _unavailable(row, f"the graph's inputs are {[m.name for m in meta]}; bench feeds one input "
                                     f"named {in_name!r}", status="error")
        fixed = meta[0].shape[0] if meta[0].shape else None
        if isinstance(fixed, int) and fixed > 0 and fixed != batch:
            return _unavailable(row, f"the graph has a fixed batch of {fixed}; batch {batch} cannot run")
        dtype = np.float16 if meta[0].dtype in ("float16", "<f2") else np.float32
        feeds = make_feeds(inputs.images, batch, in_name, dtype)
        n_feeds = len(feeds)
        report = runner.report()

        t0 = time.perf_counter_ns()
        first = runner.infer(feeds[0])
        first_ms = _ms(time.perf_counter_ns() - t0)
        finite = all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in first.values())

        def runtime_call(i):
            return functools.partial(runner.infer, feeds[i % n_feeds])

        def raw_call(i):
            return runner.raw_call(feeds[i % n_feeds])

        device_timings: list[dict] = []

        def collect():
            t = getattr(runner, "last_timings", None)
            if t:
                device_timings.append(dict(t))

        # warm-up: both paths, the runtime one for warmup_s
        scratch: list[int] = []
        idx = _segment(runtime_call, 1, scratch, iterations=None, seconds=settings.warmup_s, min_calls=2)
        _segment(raw_call, idx, scratch, iterations=None, seconds=settings.warmup_s / 4, min_calls=2)

        k = max(1, settings.blocks)
        per_block = split(settings.iterations, k) if settings.iterations else [None] * k
        seg_s = None if settings.iterations else (settings.duration_s or 0.0) / k
        rt_blocks: list[list[int]] = []
        raw_blocks: list[list[int]] = []
        rt_i = raw_i = 0
        for b in range(k):
            rt: list[int] = []
            raw: list[int] = []
            order = ("rt", "raw") if b % 2 == 0 else ("raw", "rt")  # ABBA: drift hits both sides alike
            for side in order:
                if side == "rt":
                    rt_i = _segment(runtime_call, rt_i, rt, iterations=per_block[b], seconds=seg_s,
                                    min_calls=settings.min_calls, after=collect if extra else None)
                else:
                    raw_i = _segment(raw_call, raw_i, raw, iterations=per_block[b], seconds=seg_s,
                                     min_calls=settings.min_calls)
            rt_blocks.append(rt)
            raw_blocks.append(raw)

        peak = rss.peak_mb()
        gpu_after = gpu_memory_used_mb() if gpu_before is not None else None
        rt_ms = [_ms(x) for blk in rt_blocks for x in blk]
        raw_ms = [_ms(x) for blk in raw_blocks for x in blk]
        stats = latency_stats(rt_ms, batch)
        raw_stats = latency_stats(raw_ms, batch)
        rt_spread = block_spread([percentile([_ms(x) for x in blk], 50) for blk in rt_blocks])
        raw_spread = block_spread([percentile([_ms(x) for x in blk], 50) for blk in raw_blocks])
        ratio = stats["p50_ms"] / raw_stats["p50_ms"] if raw_stats.get("p50_ms") else None
        block_ratios = [a / r for a, r in zip(rt_spread["block_p50_ms"], raw_spread["block_p50_ms"]) if r]
        rep = report.as_dict()
        row.update({
            "status": "ok",
            "precision_executed": report.precision,
            "provider": report.provider, "device": report.device,
            "artifact_sha256": case.artifact.sha256,
            "run": rep,
            **{k: stats[k] for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "min_ms", "mean_ms", "max_ms",
                                     "std_ms", "throughput")},
            "n": stats["n"],
            "spread": rt_spread,
            "raw": {**{k: raw_stats[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput")},
                    "n": raw_stats["n"], "spread": raw_spread,
                    "call": {"onnxruntime": "InferenceSession.run", "openvino": "InferRequest.infer",
                             "tensorrt": "H2D + execute_async_v3 + D2H + stream synchronize"}.get(case.backend)},
            "overhead_ratio": ratio,
            "overhead": {"block_ratios": block_ratios,
                         "within_noise": no_difference(rt_spread, raw_spread)},
            "cold": {"bundle_load_ms": bundle_load_ms, "backend_import_ms": case.import_ms,
                     "session_create_ms": runner.activate_ms, "first_infer_ms": first_ms},
            "memory": {"rss_before_mb": rss_before, "peak_rss_mb": peak, "peak_rss_method": rss.method,
                       "gpu_mem_used_mb": (gpu_after - gpu_before) if gpu_after is not None else None,
                       "gpu": "device-wide used memory after the row minus before (cudaMemGetInfo)"
                       if gpu_after is not None else "no GPU"},
            "threads": _thread_settings(runner, settings.threads),
            "inputs": {"distinct_batches": n_feeds, "images": len(inputs.images), "dtype": np.dtype(dtype).name,
                       "shape": list(feeds[0][in_name].shape)},
            "distribution_ms": distribution(rt_ms),
        })
        if not finite:
            row["warning"] = "the model's output on real images is not finite"
        if device_timings:
            keys = sorted(set().union(*device_timings))
            row["device_timings_ms"] = {k: percentile([t.get(k, 0.0) for t in device_timings], 50) for k in keys}
            row["device_timings_note"] = ("median per call, from CUDA events (TensorRT runner with timing on)"
                                          if case.backend == "tensorrt" else
                                          "median per call, host clock around the synchronous host-to-device copy, "
                                          "run and device-to-host copy (ONNX Runtime, I/O binding)")
        return row
    finally:
        runner.deactivate()
        gc.collect()

