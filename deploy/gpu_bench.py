#!/usr/bin/env python
"""The GPU numbers in one run: every bundle and precision on ONNX Runtime's CUDA provider, what each
provider setting buys, PyTorch on the same device, the same priorities as on the CPU, end to end.

``deploy/gpu-bench.sh`` sets up the machine and calls ``python deploy/gpu_bench.py run OUT ...``; with
``--cpu`` every step runs on the CPU provider instead, small and fast (the dry run ``make test`` does).
Steps, in the order their figures matter, each in its own process where it can crash, each with what
is left of ``--budget-s`` (a step that would start too late is recorded as skipped):

1. ``machine.json``: the GPU and driver (``nvidia-smi``), ONNX Runtime's version, build and providers,
   cuda-python, PyTorch, the CPU (``edgeinfer.sysinfo``).
2. ``data/``: phantom studies (``edgeinfer phantom``, in parallel processes, one seed each), the bench's
   inputs and the fidelity set.
3. ``bench-<bundle>.json``/``.md``: ``edgeinfer bench BUNDLE --backend ort --device cuda`` at every
   precision and batch, with the default CUDA settings (I/O binding, pinned buffers, CUDA graphs,
   HEURISTIC convolution search).
4. ``torch.json``: ``benchmarks/torch_peer.py``, eager FP32 / TF32 / FP16, then ``torch.compile`` while
   its budget lasts.
5. ``fidelity.json``: ``edgeinfer triage`` of the fidelity set at each precision on the CPU and on the
   device; priorities compared study by study, largest score difference; ``wl-<device>-<precision>.json``.
6. ``e2e-phantom-cxr.json``: ``edgeinfer bench --e2e all`` on that set with worker processes: DICOM
   file to priority, and where the time goes.
7. ``ablation-<bundle>.json``: the CUDA settings one at a time (``--cuda-options``): what each bought.
8. ``summary.md``/``summary.json``: the tables (:func:`summarize`).

``--pack FILE.tgz`` re-packs the whole folder after every step, so that a run cut short still leaves
everything it measured in one file.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgeinfer._io import atomic_write  # noqa: E402 - the one writer of files a user reads

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_VARIANT = "default (all on)"
#: the CUDA settings one at a time, against the default (every one on): name -> (options, precisions)
VARIANTS = {
    DEFAULT_VARIANT: ("", ("fp16",)),
    "session.run": ("iobinding=off,graph=off", ("fp16",)),
    "I/O binding, pageable": ("pinned=off,graph=off", ("fp16",)),
    "I/O binding, pinned": ("graph=off", ("fp16",)),
    "conv search EXHAUSTIVE": ("conv=exhaustive", ("fp16",)),
    "NHWC": ("nhwc=on", ("fp16",)),
    "arena exact": ("arena=exact", ("fp16",)),
    "TF32": ("tf32=on", ("fp32",)),
}


# --- pure: tables from the results ---------------------------------------------------------------
def _f(x, nd: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def copy_share(row: dict) -> float | None:
    """Share of a bench row's call spent in the host-to-device and device-to-host copies (None unknown)."""
    t = row.get("device_timings_ms") or {}
    parts = [t.get(k) for k in ("h2d_ms", "compute_ms", "d2h_ms")]
    if any(p is None for p in parts) or sum(parts) <= 0:
        return None
    return (parts[0] + parts[2]) / sum(parts)


def torch_best(torch_rows: list[dict], model: str, batch: int, modes) -> dict | None:
    """The fastest ok PyTorch row (host to host p50) of ``modes`` for a model and batch."""
    rows = [r for r in torch_rows if r.get("status") == "ok" and r["model"] == model and r["batch"] == batch
            and r["mode"] in modes]
    return min(rows, key=lambda r: r["p50_ms"]) if rows else None


#: the PyTorch modes shown beside each of edgeinfer's precisions (INT8 has no PyTorch GPU counterpart here)
PEER_MODES = {"fp32": ("eager-fp32", "graph-fp32", "compile-fp32"), "fp16": ("eager-fp16", "graph-fp16", "compile-fp16"),
              "int8": ()}
#: the PyTorch columns of the main table
PEER_COLUMNS = ("eager-fp32", "eager-tf32", "eager-fp16", "graph-fp32", "graph-fp16", "compile-fp16")


def main_table(benches: dict[str, dict], torch_report: dict | None) -> list[dict]:
    """One row per (bundle, precision, batch): edgeinfer's figures beside PyTorch's on the same device."""
    trows = (torch_report or {}).get("rows", [])
    out = []
    for name, rep in benches.items():
        for r in rep.get("rows", []):
            row = {"model": name, "precision": r["precision"], "batch": r["batch"], "status": r["status"]}
            if r["status"] != "ok":
                row["reason"] = r.get("reason")
                out.append(row)
                continue
            cuda = (r.get("run", {}).get("details") or {}).get("cuda") or {}
            row.update({"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "throughput": r["throughput"],
                        "gpu_mem_mb": (r.get("memory") or {}).get("gpu_mem_used_mb"),
                        "copy_share": copy_share(r), "provider": r.get("provider"),
                        "cuda_graph": cuda.get("cuda_graph"), "pinned": cuda.get("pinned")})
            for mode in PEER_COLUMNS:
                t = torch_best(trows, name, r["batch"], (mode,))
                row[f"torch_{mode}_p50_ms"] = t["p50_ms"] if t else None
            peer = torch_best(trows, name, r["batch"], PEER_MODES.get(r["precision"], ()))
            if peer:
                row["peer"] = {"mode": peer["mode"], "p50_ms": peer["p50_ms"], "throughput": peer["throughput"]}
                row["speedup_vs_peer"] = peer["p50_ms"] / r["p50_ms"]
            out.append(row)
    return out


def ablation_table(ablations: dict[str, dict], benches: dict[str, dict]) -> list[dict]:
    """Per (bundle, precision, batch): p50 of every variant, and its ratio to the default settings: the
    ablation's own default run of the same repeat where there is one (same process, same durations),
    else the main table's row."""
    out = []
    for name, ab in ablations.items():
        main = {(r["precision"], r["batch"]): r for r in benches.get(name, {}).get("rows", []) if r["status"] == "ok"}
        for variant, rep in ab.items():
            repeat = variant.partition(" #")[2]
            own = ab.get(DEFAULT_VARIANT + (f" #{repeat}" if repeat else ""), {}).get("rows", [])
            own = {(r["precision"], r["batch"]): r for r in own if r["status"] == "ok"}
            for r in rep.get("rows", []):
                key = (r["precision"], r["batch"])
                d = own.get(key) or main.get(key)
                row = {"model": name, "variant": variant, "precision": r["precision"], "batch": r["batch"],
                       "status": r["status"]}
                if r["status"] == "ok":
                    row.update(p50_ms=r["p50_ms"], gpu_mem_mb=(r.get("memory") or {}).get("gpu_mem_used_mb"),
                               default_p50_ms=d["p50_ms"] if d else None,
                               vs_default=(r["p50_ms"] / d["p50_ms"]) if d else None,
                               cuda=((r.get("run") or {}).get("details") or {}).get("cuda"))
                else:
                    row["reason"] = r.get("reason")
                out.append(row)
    return out


def compare_worklists(ref: dict, got: dict) -> dict:
    """Study-by-study agreement of priorities and the largest score difference between two worklists."""
    from edgeinfer_calibration.validate import compare_outcomes, outcomes_from_worklist

    a, b = outcomes_from_worklist(ref["studies"]), outcomes_from_worklist(got["studies"])
    m = compare_outcomes(a, b)
    return {k: m[k] for k in ("n_studies", "agreement", "disagreements", "max_abs_score_diff",
                              "mean_abs_score_diff", "n_scored_both", "indeterminate")}


def render_summary(s: dict) -> str:
    """The Markdown summary of a run (pure)."""
    m = s.get("machine", {})
    gpu = m.get("gpu") or {}
    lines = [f"# GPU bench: {gpu.get('name') or 'no GPU'} ({s.get('mode')})", "",
             f"*{s.get('created')}, edgeinfer {s.get('edgeinfer')}, commit {s.get('commit') or '?'}*", "",
             (f"- **GPU**: {gpu.get('name')}, driver {gpu.get('driver')}, {gpu.get('memory')}" if gpu
              else "- **GPU**: none (every step ran on the CPU provider)"),
             f"- **CPU**: {m.get('cpu', {}).get('model')}, {m.get('cpu', {}).get('usable_cpus')} CPUs",
             f"- **ONNX Runtime**: {m.get('onnxruntime', {}).get('version')} "
             f"({', '.join(m.get('onnxruntime', {}).get('providers') or [])}); cuda-python "
             f"{m.get('cuda_python')}; PyTorch {m.get('torch')}", ""]
    lines += ["## edgeinfer (ONNX Runtime, default CUDA settings) beside PyTorch on the same device", "",
              "p50/p99: one call, NumPy in to NumPy out, ms. Copies: share of the call in host-to-device and "
              "device-to-host copies. PyTorch columns: host-to-host p50 of the same network (eager FP32 with TF32 "
              "off, eager TF32 = PyTorch's default, eager FP16, eager captured in a CUDA graph FP32 / FP16, "
              "torch.compile FP16). vs peer: PyTorch's best mode of the same precision over edgeinfer's p50.", "",
              "| model | precision | batch | p50 ms | p99 ms | images/s | copies | GPU MB | graph | PyTorch fp32 | "
              "PyTorch tf32 | PyTorch fp16 | graph fp32 | graph fp16 | compile fp16 | vs peer |",
              "|---|---|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|"]
    for r in s.get("main", []):
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['precision']} | {r['batch']} | {r['status']}: "
                         f"{(r.get('reason') or '')[:80]} |" + " |" * 13)
            continue
        share = f"{100 * r['copy_share']:.0f} %" if r.get("copy_share") is not None else "-"
        graph = "on" if r.get("cuda_graph") == "on" else ("off" if r.get("cuda_graph") else "-")
        sp = f"{r['speedup_vs_peer']:.2f}x" if r.get("speedup_vs_peer") else "-"
        lines.append(f"| {r['model']} | {r['precision']} | {r['batch']} | {_f(r['p50_ms'])} | {_f(r['p99_ms'])} | "
                     f"{_f(r['throughput'], 0)} | {share} | {_f(r.get('gpu_mem_mb'), 0)} | {graph} | "
                     + " | ".join(_f(r.get(f"torch_{m}_p50_ms")) for m in PEER_COLUMNS) + f" | {sp} |")
    if s.get("ablation"):
        lines += ["", "## What each CUDA setting buys", "",
                  "Each variant changes one setting from the default (I/O binding, pinned buffers, CUDA graph, "
                  "HEURISTIC search, power-of-two arena, TF32 off, NCHW); ratio = its p50 over the default's p50 "
                  "measured beside it in the same ablation pass (the main table's where the pass has none; above 1: "
                  "the default is faster).", "",
                  "| model | variant | precision | batch | p50 ms | default p50 ms | ratio | GPU MB |",
                  "|---|---|---|--:|--:|--:|--:|--:|"]
        for r in s["ablation"]:
            if r["status"] != "ok":
                lines.append(f"| {r['model']} | {r['variant']} | {r['precision']} | {r['batch']} | "
                             f"{r['status']}: {(r.get('reason') or '')[:80]} | | | |")
                continue
            lines.append(f"| {r['model']} | {r['variant']} | {r['precision']} | {r['batch']} | {_f(r['p50_ms'])} | "
                         f"{_f(r.get('default_p50_ms'))} | {_f(r.get('vs_default'), 2)} | {_f(r.get('gpu_mem_mb'), 0)} |")
    fid = s.get("fidelity") or {}
    if fid.get("precisions"):
        lines += ["", f"## Same priorities as on the CPU ({fid.get('studies')} studies, {fid.get('images')} images)", "",
                  "| precision | device run | agreement with the CPU | max abs score diff | mean abs score diff | "
                  "images/s (triage, end to end) |", "|---|---|--:|--:|--:|--:|"]
        for p, e in fid["precisions"].items():
            if "agreement" not in e:
                lines.append(f"| {p} | {e.get('error', '?')[:100]} | | | | |")
                continue
            lines.append(f"| {p} | {e.get('ran_on')} | {100 * e['agreement']:.1f} % "
                         f"({e['disagreements']} differ) | {_f(e.get('max_abs_score_diff'), 5)} | "
                         f"{_f(e.get('mean_abs_score_diff'), 6)} | {_f(e.get('device_images_per_s'), 1)} |")
    e2e = s.get("e2e") or []
    if e2e:
        lines += ["", "## End to end: DICOM file to priority (edgeinfer bench --e2e)", "",
                  "| mode | images | serial images/s | overlapped images/s | workers | read | decode | preprocess | "
                  "infer | post (ms per image, serial) |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for e in e2e:
            if not e.get("serial"):
                lines.append(f"| {e.get('backend')} {e.get('precision')} | {e.get('status')}: "
                             f"{(e.get('reason') or '')[:80]} | | | | | | | | |")
                continue
            per = e["serial"]["per_image_ms"]
            lines.append(f"| {e['backend']} {e['precision']} | {e.get('images')} | "
                         f"{_f(e['serial'].get('images_per_s'), 1)} | {_f(e['overlapped'].get('images_per_s'), 1)} | "
                         f"{e.get('workers', '-')} | " + " | ".join(_f(per.get(k), 2) for k in
                                                                    ("read", "decode", "preprocess", "infer", "post"))
                         + " |")
    if s.get("steps"):
        lines += ["", "## Steps", "", "| step | status | seconds | note |", "|---|---|--:|---|"]
        for st in s["steps"]:
            lines.append(f"| {st['name']} | {st['status']} | {_f(st.get('seconds'), 1)} | {(st.get('note') or '')[:120]} |")
    return "\n".join(lines) + "\n"


# --- the run --------------------------------------------------------------------------------------
class Run:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.steps: list[dict] = []
        self.device = "cpu" if args.cpu else "cuda"
        self.log_file = open(self.out / "log.txt", "a", buffering=1)

    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f} s] {msg}"
        print(line, flush=True)
        self.log_file.write(line + "\n")

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def pack(self) -> None:
        if not self.args.pack:
            return
        tmp = Path(self.args.pack + ".tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.out, arcname=self.out.name, filter=lambda ti: None if "/data" in ti.name else ti)
        tmp.replace(self.args.pack)

    def sh(self, cmd: list[str], name: str, timeout: float, **kw) -> subprocess.CompletedProcess | None:
        """Run a command, its output appended to the log; None when it could not finish in time."""
        self.log("$ " + " ".join(str(c) for c in cmd))
        with open(self.out / "log.txt", "a") as logf:
            try:
                return subprocess.run([str(c) for c in cmd], stdout=logf, stderr=subprocess.STDOUT,
                                      timeout=max(1.0, timeout), **kw)
            except subprocess.TimeoutExpired:
                self.log(f"{name}: stopped after {timeout:.0f} s")
                return None

    def step(self, name: str, fn, *, need_s: float) -> None:
        left = self.left()
        if left < need_s:
            self.steps.append({"name": name, "status": "skipped", "seconds": 0.0,
                               "note": f"{left:.0f} s of the budget left, {need_s:.0f} s needed"})
            self.log(f"step {name}: skipped ({left:.0f} s left)")
            return
        self.log(f"step {name}")
        t = time.monotonic()
        try:
            note = fn()
            status = "ok"
        except Exception as exc:  # noqa: BLE001 - a failed step is a result; the next steps still run
            status, note = "error", f"{exc.__class__.__name__}: {exc}"
            self.log(f"step {name}: {note}")
        self.steps.append({"name": name, "status": status, "seconds": time.monotonic() - t, "note": note})
        self.pack()

    # -- the steps --
    def edgeinfer(self, *args) -> list[str]:
        return [sys.executable, "-m", "edgeinfer", *args]

    def machine(self) -> str:
        from edgeinfer.sysinfo import library_versions, machine_info

        info: dict = {"cpu": machine_info().get("cpu", {})}
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            parts = [p.strip() for p in q.stdout.strip().split("\n")[0].split(",")] if q.returncode == 0 else []
            if len(parts) >= 3:
                info["gpu"] = {"name": parts[0], "driver": parts[1], "memory": parts[2],
                               "max_sm_clock": parts[3] if len(parts) > 3 else None,
                               "power_limit": parts[4] if len(parts) > 4 else None}
            full = subprocess.run([smi], capture_output=True, text=True, timeout=30)
            atomic_write(self.out / "nvidia-smi.txt", full.stdout + full.stderr)
        import onnxruntime as ort

        info["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers(),
                               "build": getattr(ort, "get_build_info", lambda: None)(), "cuda_version": None}
        try:
            from onnxruntime.capi import onnxruntime_validation as v

            info["onnxruntime"]["cuda_version"] = getattr(v, "cuda_version", None)
        except Exception:  # noqa: BLE001 - information only
            pass
        info.update({k.replace("-", "_"): v for k, v in library_versions(("cuda-bindings", "torch", "numpy")).items()})
        info["cuda_python"] = info.pop("cuda_bindings", None)
        self.machine_info = info
        atomic_write(self.out / "machine.json", json.dumps(info, indent=1))
        return f"{info.get('gpu', {}).get('name', 'no GPU')}, onnxruntime {ort.__version__}"

    def data(self) -> str:
        a = self.args
        root = self.out / "data"
        shutil.rmtree(root, ignore_errors=True)
        procs = []
        for k in range(a.val_parts):
            cmd = self.edgeinfer("phantom", root / f"p{k}", "--n", a.val_n, "--seed", 3003 + k, "--max-size", 1024,
                                 "--no-progress")
            procs.append(subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        errors = [p.communicate(timeout=self.left())[1].decode()[-300:] for p in procs if p.wait() != 0]
        if errors:
            raise RuntimeError("edgeinfer phantom failed: " + " | ".join(errors))
        with open(root / "labels.csv", "w") as f:  # one labels file for the whole fidelity set
            for k in range(a.val_parts):
                lines = (root / f"p{k}" / "labels.csv").read_text().splitlines()
                f.write("\n".join(lines if k == 0 else lines[1:]) + "\n")
        self.data_dir = root
        return f"{a.val_parts} x {a.val_n} images"

    def bundles(self) -> dict[str, str | None]:
        """name -> bundle folder (None: the embedded phantom bundle)."""
        out: dict[str, str | None] = {"phantom-cxr": None}
        if self.args.bundles and Path(self.args.bundles).is_dir():
            for d in sorted(Path(self.args.bundles).iterdir()):
                if (d / "manifest.json").is_file():
                    out[d.name.replace("-random", "")] = str(d)
        return {k: v for k, v in out.items() if not self.args.models or k in self.args.models}

    def bench_args(self, bundle, precisions, batches, *extra) -> list[str]:
        a = self.args
        return self.edgeinfer("bench", *([bundle] if bundle else []), "--backend", "ort", "--precision",
                              ",".join(precisions), "--batch", ",".join(map(str, batches)), "--device", self.device,
                              "--warmup-s", a.warmup_s, "--duration-s", a.duration_s, "--blocks", a.blocks,
                              "--data", self.data_dir / "p0", "--images", 8, "--threads", a.threads,
                              "--no-progress", *extra)

    def main_bench(self) -> str:
        notes = []
        for name, bundle in self.bundles().items():
            js = self.out / f"bench-{name}.json"
            cmd = self.bench_args(bundle, self.args.precisions, self.args.batches, "--e2e", "none", "--json", js,
                                  "--report", self.out / f"bench-{name}.md")
            r = self.sh(cmd, f"bench {name}", min(self.left() - 5, self.args.step_timeout_s))
            notes.append(f"{name}: " + ("ok" if js.is_file() else f"no report (exit {r.returncode if r else 'timeout'})"))
        return "; ".join(notes)

    def ablation(self) -> str:
        from edgeinfer.bench.matrix import run as bench_run
        from edgeinfer.bench.plan import BenchSettings

        a = self.args
        results: dict[str, dict] = {}
        variants = {k: v for k, v in VARIANTS.items() if not a.variants or k in a.variants}
        for name, bundle in self.bundles().items():
            results[name] = {}
            for repeat, (variant, (options, precisions)) in [(k, v) for k in range(a.ablation_repeats)
                                                            for v in variants.items()]:
                if repeat:
                    variant = f"{variant} #{repeat + 1}"
                if self.left() < 20:
                    results[name][variant] = {"rows": [], "skipped": "budget"}
                    continue
                s = BenchSettings(backends=("onnxruntime",), precisions=precisions, batches=tuple(a.ablation_batches),
                                  warmup_s=a.warmup_s / 2, duration_s=a.duration_s / 2, blocks=2, threads=a.threads,
                                  device=self.device, cuda_options=options, data=str(self.data_dir / "p0"),
                                  images=8, e2e="none")
                self.log(f"ablation {name}: {variant} ({options})")
                try:
                    rep = bench_run(bundle, s)
                except Exception as exc:  # noqa: BLE001
                    rep = {"rows": [], "error": f"{exc.__class__.__name__}: {exc}"}
                results[name][variant] = {"options": options, "rows": rep.get("rows", []), "error": rep.get("error")}
            atomic_write(self.out / f"ablation-{name}.json", json.dumps(results[name], indent=1, default=str))
        return f"{sum(len(v) for v in results.values())} variants"

    def torch_peer(self, compile_budget: float) -> str:
        a = self.args
        js = self.out / ("torch.json" if compile_budget == 0 else "torch-compile.json")
        modes = a.torch_modes if compile_budget == 0 else "compile-fp16"
        cmd = [sys.executable, ROOT / "benchmarks" / "torch_peer.py", "--models", ",".join(self.bundles()),
               "--batch", ",".join(map(str, a.batches)), "--device", self.device, "--modes", modes,
               "--warmup-s", a.warmup_s, "--duration-s", a.duration_s, "--compile-budget-s", compile_budget,
               "--json", js]
        r = self.sh(cmd, "torch peer", min(self.left() - 5, compile_budget + 120))
        return "ok" if js.is_file() else f"no report (exit {r.returncode if r else 'timeout'})"

    def fidelity(self) -> str:
        a = self.args
        out: dict = {"studies": None, "images": None, "precisions": {}}
        for p in PRECISIONS:
            wls = {}
            for side, dev in (("cpu", "cpu"), ("device", self.device)):
                wl = self.out / f"wl-{side}-{p}.json"
                self.sh(self.edgeinfer("triage", self.data_dir, "--backend", "ort", "--precision", p, "--device", dev,
                                       "--workers", a.workers, "--batch-size", 8, "--output", wl, "--no-progress",
                                       "--labels", self.data_dir / "labels.csv"),
                        f"triage {side} {p}", min(self.left() - 5, 120))
                wls[side] = wl
            try:
                ref, got = (json.loads(wls[k].read_text()) for k in ("cpu", "device"))
                entry = compare_worklists(ref, got)
                entry.update(ran_on=got["run"].get("provider"), cuda=(got["run"].get("details") or {}).get("cuda"),
                             device_images_per_s=got["summary"].get("images_per_s"),
                             cpu_images_per_s=ref["summary"].get("images_per_s"))
                out["studies"], out["images"] = got["summary"]["studies"], got["summary"]["images_scored"]
            except Exception as exc:  # noqa: BLE001 - a missing worklist is the result
                entry = {"error": f"{exc.__class__.__name__}: {exc}"}
            out["precisions"][p] = entry
        atomic_write(self.out / "fidelity.json", json.dumps(out, indent=1))
        return ", ".join(f"{p} {100 * e['agreement']:.1f} %" if "agreement" in e else f"{p} error"
                         for p, e in out["precisions"].items())

    def e2e(self) -> str:
        a = self.args
        js = self.out / "e2e-phantom-cxr.json"
        cmd = self.edgeinfer("bench", "--backend", "ort", "--precision", "fp32,fp16", "--batch", "1", "--device",
                             self.device, "--warmup-s", a.warmup_s, "--duration-s", a.duration_s, "--blocks", a.blocks,
                             "--data", self.data_dir, "--e2e", "all", "--e2e-workers", a.workers, "--e2e-processes",
                             "--e2e-repeats", a.e2e_repeats, "--threads", a.threads, "--no-progress", "--json", js)
        r = self.sh(cmd, "e2e", min(self.left() - 5, self.args.step_timeout_s))
        return "ok" if js.is_file() else f"no report (exit {r.returncode if r else 'timeout'})"

    def gpu_tests(self) -> str:
        """The gpu-marked tests of the ONNX Runtime runner: CUDA graphs replayed per batch shape give
        session.run's answers (on the CPU they skip)."""
        log = self.out / "gpu-tests.log"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-o", "addopts=", "-rA", "-q",
               ROOT / "tests" / "edgeinfer" / "backends" / "test_onnxruntime.py", "--junitxml", self.out / "gpu-tests.xml"]
        self.log("$ " + " ".join(map(str, cmd)))
        with open(log, "w") as f:
            try:
                r = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                   timeout=min(self.left() - 5, 120))
            except subprocess.TimeoutExpired:
                return "stopped (timeout)"
        last = log.read_text().strip().splitlines()[-1:] or ["?"]
        if r.returncode not in (0, 5):
            raise RuntimeError(f"gpu tests failed: {last[0]}")
        return last[0]

    def summarize(self) -> str:
        s = collect(self.out)
        s.update(mode="cpu dry run" if self.args.cpu else "cuda", steps=self.steps, commit=self.args.commit)
        atomic_write(self.out / "summary.json", json.dumps(s, indent=1, default=str))
        atomic_write(self.out / "summary.md", render_summary(s))
        return "summary.md"

    def go(self) -> int:
        a = self.args
        self.data_dir = self.out / "data"
        steps = [("machine", self.machine, 0), ("data", self.data, 10), ("gpu tests", self.gpu_tests, 20),
                 ("bench", self.main_bench, 30), ("torch eager", lambda: self.torch_peer(0), 20),
                 ("fidelity", self.fidelity, 30), ("e2e", self.e2e, 20), ("ablation", self.ablation, 30),
                 ("torch compile", lambda: self.torch_peer(max(1.0, min(a.compile_budget_s, self.left() - 40))), 30)]
        for name, fn, need in steps:
            if a.steps and name not in a.steps:
                continue
            if name == "torch compile" and a.compile_budget_s <= 0:
                self.steps.append({"name": name, "status": "skipped", "seconds": 0.0, "note": "--compile-budget-s 0"})
                continue
            self.step(name, fn, need_s=need)
        self.steps.append({"name": "summary", "status": "ok", "seconds": 0.0})
        self.summarize()
        self.pack()
        failed = [s["name"] for s in self.steps if s["status"] == "error"]
        self.log("done" + (f"; failed: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0


def collect(out: Path) -> dict:
    """Everything a run wrote, as the summary's input."""
    from edgeinfer import __version__
    import datetime as dt

    def load(name):
        p = out / name
        return json.loads(p.read_text()) if p.is_file() else None

    benches = {p.stem[len("bench-"):]: json.loads(p.read_text()) for p in sorted(out.glob("bench-*.json"))}
    ablations = {p.stem[len("ablation-"):]: json.loads(p.read_text()) for p in sorted(out.glob("ablation-*.json"))}
    torch_report = load("torch.json") or {"rows": []}
    compiled = load("torch-compile.json")
    if compiled:
        torch_report = {**torch_report, "rows": torch_report.get("rows", []) + compiled.get("rows", [])}
    e2e_report = load("e2e-phantom-cxr.json") or {}
    e2e = e2e_report.get("e2e", [])
    for e in e2e:
        settings = e2e_report.get("settings") or {}
        e["workers"] = f"{settings.get('e2e_workers')} {'processes' if settings.get('e2e_processes') else 'threads'}"
    return {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "edgeinfer": __version__,
            "machine": load("machine.json") or {}, "main": main_table(benches, torch_report),
            "ablation": ablation_table(ablations, benches), "torch": torch_report, "fidelity": load("fidelity.json"),
            "e2e": e2e}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="every step into OUT")
    r.add_argument("out")
    r.add_argument("--cpu", action="store_true", help="the dry run: every step on the CPU provider, small")
    r.add_argument("--bundles", default=None, help="folder of further bundles (densenet121-random/, unet-random/)")
    r.add_argument("--models", default=None, help="comma list of bundle names to run (default: all found)")
    r.add_argument("--batches", default="1,8,32")
    r.add_argument("--precisions", default=",".join(PRECISIONS), help="of the main table (default fp32,fp16,int8)")
    r.add_argument("--ablation-batches", default="1,32")
    r.add_argument("--warmup-s", type=float, default=0.3)
    r.add_argument("--duration-s", type=float, default=0.6)
    r.add_argument("--blocks", type=int, default=3)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--workers", type=int, default=8)
    r.add_argument("--e2e-repeats", type=int, default=2)
    r.add_argument("--val-n", type=int, default=30, help="phantom images per generated part (default 30)")
    r.add_argument("--val-parts", type=int, default=8, help="parts generated in parallel, one seed each (default 8)")
    r.add_argument("--torch-modes", default="eager-fp32,eager-tf32,eager-fp16,graph-fp32,graph-fp16")
    r.add_argument("--steps", default=None, help="comma list of the steps to run (default: all; machine and data "
                                                "are needed by the others)")
    r.add_argument("--variants", default=None, help=f"comma list of ablation variants (default: all: "
                                                   f"{', '.join(VARIANTS)})")
    r.add_argument("--ablation-repeats", type=int, default=1, help="runs of the variant list, one after the other")
    r.add_argument("--compile-budget-s", type=float, default=40.0)
    r.add_argument("--budget-s", type=float, default=330.0, help="the whole run's time (default 330)")
    r.add_argument("--step-timeout-s", type=float, default=150.0)
    r.add_argument("--commit", default=os.environ.get("EDGEINFER_COMMIT"))
    r.add_argument("--pack", default=None, metavar="FILE.tgz", help="re-pack OUT into this file after every step")
    s = sub.add_parser("summarize", help="(re)write OUT/summary.md from what OUT holds")
    s.add_argument("out")
    args = p.parse_args(argv)
    if args.cmd == "summarize":
        out = Path(args.out)
        prev = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
        summary = collect(out)
        summary.update({k: prev[k] for k in ("mode", "steps", "commit") if k in prev})
        atomic_write(out / "summary.json", json.dumps(summary, indent=1, default=str))
        atomic_write(out / "summary.md", render_summary(summary))
        print((out / "summary.md").read_text())
        return 0
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.precisions = [x for x in args.precisions.split(",") if x]
    args.ablation_batches = [int(b) for b in args.ablation_batches.split(",") if b]
    args.models = [m for m in args.models.split(",") if m] if args.models else None
    args.steps = [m.strip() for m in args.steps.split(",") if m.strip()] if args.steps else None
    args.variants = [m.strip() for m in args.variants.split(",") if m.strip()] if args.variants else None
    return Run(args).go()


if __name__ == "__main__":
    sys.exit(main())
