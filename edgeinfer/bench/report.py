"""Reports of ``edgeinfer bench``: the Markdown report, the JSON writer, and the table cells they
share with the CLI summary and the plot."""
from __future__ import annotations

import math
import textwrap

from .._io import emit_json
from .compare import OPENVINO_TARGET_KEY
from .e2e import STAGES
from .plan import BASELINE, SHORT
from .stats import _clean


def _f(x, nd: int = 2, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        v = float(x)
        s = f"{v:.{nd}f}" if abs(v) < 1000 else f"{v:,.0f}"
        return s + unit
    return str(x)


def _sig(x: float | None, digits: int = 3) -> str:
    """3 significant digits: 0.00937, 1.23, 45.6, 1234."""
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:,.0f}"


def row_label(r: dict) -> str:
    ran = r.get("precision_executed")
    extra = f" (ran {ran})" if ran and ran != r["precision"] else ""
    return f"{SHORT.get(r['backend'], r['backend'])} {r['precision']}{extra}"


def _speedup_cell(r: dict) -> str:
    s = r.get("speedup_vs_ort_fp32")
    if s is None:
        return "-"
    if (r["backend"], r["precision"]) == BASELINE:
        return "1.00x (baseline)"
    return f"{s:.2f}x" + (" (no difference)" if r.get("speedup_within_noise") else "")


def _overhead_cell(r: dict) -> str:
    v = r.get("overhead_ratio")
    if v is None:
        return "-"
    return f"{v:.3f}" + (" (no difference)" if (r.get("overhead") or {}).get("within_noise") else "")


def _gate_cell(a: dict, backend: str | None = None) -> str:
    gate = a.get("gate") or "not validated"
    on = a.get("validated_on")
    return f"{gate} (on {SHORT.get(on, on)})" if on and backend and on != backend and gate != "not validated" else gate


def _acc_cells(a: dict, backend: str | None = None) -> list[str]:
    return [_gate_cell(a, backend), _f(a.get("auc"), 4), _f(a.get("agreement"), 4), _f(a.get("max_abs_score_diff"), 4)]


def render_markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    cpu = m["cpu"]
    flags = ", ".join(k for k, v in (cpu.get("flags") or {}).items() if v) or "-"
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if k != "edgeinfer")
    gpu = m["gpu"] if isinstance(m["gpu"], str) else "; ".join(g.get("name", "?") for g in m["gpu"])
    timing = (f"{s['iterations']} calls" if s.get("iterations") else f"{s['duration_s']:g} s") + \
        f" per side in {s['blocks']} blocks after {s['warmup_s']:g} s warm-up"
    lines = [
        f"# edgeinfer bench: {report['bundle']['name']} {report['bundle']['version']}",
        "",
        f"*{report['created']}, edgeinfer {report['edgeinfer']}*",
        "",
        f"- **machine**: {cpu['model']} ({cpu['arch']}), {cpu['usable_cpus']} usable CPUs "
        f"({cpu.get('physical_cores') or '?'} physical cores), {m.get('memory_gb')} GB; GPU: {gpu}",
        f"- **CPU flags**: {flags}",
        f"- **libraries**: {libs}",
        f"- **threads**: {s['threads'] if s.get('threads') else 'backend default'} inference threads per backend "
        f"(ORT intra-op, OpenVINO INFERENCE_NUM_THREADS); OMP_NUM_THREADS={m['thread_env'].get('OMP_NUM_THREADS', 'unset')}",
        f"- **load average** (1, 5, 15 min): start {m['load_average'].get('start')}, end {m['load_average'].get('end')}",
        f"- **timing**: {timing}; inputs: {report['data']['images_used']} real images from {report['data']['source']}",
        f"- **bundle load** (manifest + sha256 of every artifact): {_f(report['bundle']['load_ms'], 1)} ms",
        "",
    ]
    for n in report.get("notes", []):
        lines.append(f"> **note**: {n}")
        lines.append("")
    lines += ["## Latency and accuracy", "",
              "| backend / precision | batch | p50 ms | p90 ms | p99 ms | spread of p50 (ms) | images/s | "
              "speed-up vs ORT fp32 | overhead ratio | gate | AUC | agreement | max abs score diff |",
              "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|"]
    for r in report["rows"]:
        if r["status"] != "ok":
            continue
        sp = r["spread"]
        lines.append("| " + " | ".join([
            row_label(r), str(r["batch"]), _f(r["p50_ms"], 3), _f(r["p90_ms"], 3), _f(r["p99_ms"], 3),
            f"{_f(sp.get('min_ms'), 3)}-{_f(sp.get('max_ms'), 3)}", _f(r["throughput"], 1),
            _speedup_cell(r), _overhead_cell(r), *_acc_cells(r["accuracy"], r["backend"])]) + " |")
    lines += ["", "## Cold start and memory", "",
              "| backend / precision | batch | backend import ms | session create ms | first inference ms | "
              "peak RSS MB | threads |",
              "|---|--:|--:|--:|--:|--:|---|"]
    for r in report["rows"]:
        if r["status"] != "ok":
            continue
        c, mem, th = r["cold"], r["memory"], r["threads"]
        thr = ", ".join(f"{k.replace('openvino_', 'ov ').replace('ort_', 'ort ')}={v}" for k, v in th.items()
                        if k not in ("requested", "omp_num_threads_env"))
        lines.append("| " + " | ".join([row_label(r), str(r["batch"]), _f(c["backend_import_ms"], 1),
                                        _f(c["session_create_ms"], 1), _f(c["first_infer_ms"], 2),
                                        _f(mem["peak_rss_mb"], 0), thr or "-"]) + " |")
    unavailable = [r for r in report["rows"] if r["status"] != "ok"]
    if unavailable:
        lines += ["", "## Not measured here", "", "| backend / precision | batches | status | reason |", "|---|--:|---|---|"]
        groups: dict[tuple, list[int]] = {}
        for r in unavailable:
            groups.setdefault((row_label(r), r["status"], str(r.get("reason", ""))), []).append(r["batch"])
        for (label, st, reason), batches in groups.items():
            reason = reason.replace("|", "/").replace("\n", " ")
            lines.append(f"| {label} | {', '.join(map(str, batches))} | {st} | {reason} |")
    t = report["targets"][OPENVINO_TARGET_KEY]
    lines += ["", "## Fast CPU path target: best gated OpenVINO mode vs ORT fp32", ""]
    if t.get("evaluated") and t.get("best"):
        lines.append(f"Best OpenVINO mode that passed the gate at batch {t['batch']}: **{t['best']['precision']}** "
                     f"({t['best']['gate']}), p50 {t['best']['p50_ms']:.3f} ms vs ORT fp32 {t['ort_fp32_p50_ms']:.3f} ms: "
                     f"**{t['speedup']:.2f}x** (target {t['target']:g}x): "
                     + ("met." if t["met"] else ("no difference from ORT fp32 within the spread." if t.get("within_noise")
                                                 else "not met.")))
    else:
        lines.append(f"Not evaluated: {t.get('why', '-')}.")
    if t.get("fastest_openvino"):
        fo = t["fastest_openvino"]
        lines.append("")
        lines.append(f"Fastest OpenVINO mode regardless of the gate: {fo['precision']} ({fo['gate']}), "
                     f"{fo['speedup']:.2f}x ORT fp32.")
    if report.get("e2e"):
        lines += ["", "## End to end: DICOM file to priority (batch 1)", "",
                  "| backend / precision | images | studies | read | decode | preprocess | infer | post | "
                  "studies/s serial | studies/s overlapped |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for e in report["e2e"]:
            if e.get("status") == "error":
                lines.append(f"| {row_label(e)} | error: {e['reason']} |")
                continue
            ser, ov = e["serial"], e["overlapped"]
            cells = [f"{_f(ser['per_image_ms'][st], 2)} ms ({_f(100 * (ser['share'][st] or 0), 0)}%)" for st in STAGES]
            verdict = "pays" if ov["pays"] else "no difference"
            lines.append("| " + " | ".join([row_label(e), str(e["images"]), str(e["studies"]), *cells,
                                            _f(ser["studies_per_s"], 2),
                                            f"{_f(ov['studies_per_s'], 2)} ({ov['workers']} decode "
                                            f"{'processes' if ov.get('processes') else 'threads'}, "
                                            f"{_f(ov['speedup_vs_serial'], 2)}x: {verdict})"]) + " |")
        lines.append("")
        lines.append("Per-image mean ms over every serial pass, and the share of serial time. *read* parses the file "
                     "(header and safety checks), *decode* decompresses the pixels, *preprocess* windows, resizes and "
                     "normalises, *post* turns the output into a priority (and studies into a worklist order). "
                     "Throughputs are the median of the passes; overlapping *pays* only if every overlapped pass "
                     "beat every serial one.")
        ok = [e for e in report["e2e"] if e.get("status") != "error"]
        if ok and all("pool_start_s" in e["overlapped"] for e in ok):  # reports before the shared pool lack it
            lines[-1] += " The overlapped passes share one pool, started before them, so no pass pays for its start."
            starts = [e["overlapped"]["pool_start_s"] for e in ok if e["overlapped"].get("processes")]
            if starts:
                lines[-1] += f" Starting the worker processes took {_f(max(starts), 2)} s."
        ratio_rows = [e for e in report["e2e"] if e.get("e2e_vs_inference_only")]
        if ratio_rows:
            lines += ["", "| backend / precision | inference only, images/s | end to end serial | end to end overlapped |",
                      "|---|--:|--:|--:|"]
            for e in ratio_rows:
                r = e["e2e_vs_inference_only"]
                lines.append(f"| {row_label(e)} | {_f(e['inference_only_images_per_s'], 1)} | "
                             f"{_f(e['serial']['images_per_s'], 1)} ({_f(100 * (r['serial'] or 0), 0)}%) | "
                             f"{_f(e['overlapped']['images_per_s'], 1)} ({_f(100 * (r['overlapped'] or 0), 0)}%) |")
            lines += ["", "End-to-end images/s, and in brackets as a share of the same mode's inference-only images/s "
                      "(batch 1, the p50 of the table above)."]
        first = next((e for e in report["e2e"] if e.get("premodel_by_transfer_syntax")), None)
        if first:
            lines += ["", "Pre-model cost (read + decode + preprocess) per image, by transfer syntax and size "
                      f"(serial passes of {row_label(first)}):", "",
                      "| transfer syntax | size | images | p50 | mean |", "|---|---|--:|--:|--:|"]
            for g in first["premodel_by_transfer_syntax"]:
                lines.append(f"| {g['transfer_syntax']} | {g['size']} | {g['images']} | {_f(g['p50_ms'], 2)} ms | "
                             f"{_f(g['mean_ms'], 2)} ms |")
    lines += ["", "## How to read this", "",
              textwrap.dedent("""\
              - **p50/p90/p99**: per-call latency percentiles of the runtime's `Runner.infer`, over all blocks.
              - **spread of p50**: the smallest and largest p50 of the individual blocks. When two rows' spreads
                overlap, the table says *no difference*: the gap is within what this machine varies run to run.
              - **speed-up vs ORT fp32**: ORT fp32 p50 / this row's p50 at the same batch (above 1 = faster).
              - **overhead ratio**: runtime p50 / raw backend call p50 (ONNX Runtime `session.run`, OpenVINO
                `infer`, TensorRT execute), timed in the same run on the same inputs; 1.00 = no overhead.
              - **gate**: *reference* (fp32), *passed* / *failed* (the bundle's validation record), or
                *not validated*; AUC, agreement with FP32 priorities and max |score - FP32 score| come from that record.
              - **peak RSS** includes the Python process and every library loaded so far.
              """)]
    return "\n".join(lines) + "\n"


def write_json(report: dict, dest: str) -> None:
    emit_json(_clean(report), dest)
