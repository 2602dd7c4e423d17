#!/usr/bin/env python
"""The triton backend against the in-process runner: client-side latency and throughput at 1, 4 and 16 clients,
and what Triton's dynamic batching buys.

    .venv/bin/python benchmarks/triton_bench.py [--bundle phantom-cxr] [--precision fp32] [--threads 2] [--instances N]
        [--clients 1,4,16] [--warmup-s 1] [--duration-s 5] [--json OUT] [--report OUT.md] [--plot OUT.png]

A benchmark, not a test; run it on an idle machine. Needs the Triton host's venv (``make .venv-triton``).
Each client is a thread sending one image per request (batch 1, what a node sends for a one-image study) as
fast as it gets answers, for ``--duration-s`` after ``--warmup-s``; latency is the client's wall time per call.

- ``in-process``: one runner of the bundle in this process (ONNX Runtime), shared by the client threads;
- ``triton``: ``edgeinfer triton-host`` (same runtime; its two instances share the same threads) on localhost,
  each client its own triton runner (gRPC, or ``--protocol http``): dynamic batching with ``max_batch_size`` 8;
- ``triton, no batching``: the same host with ``--max-batch 1``: every request runs alone.

The server's own counters (``nv_inference_count`` / ``nv_inference_exec_count``) give the mean batch it formed.
Server and clients share this machine's cores: on a 2-core box that is the cost of the hop, not a GPU host's
figure.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import machine_line, publish  # noqa: E402

FORMAT = 1
ROOT = Path(__file__).resolve().parent.parent


def _peers():
    """``tests/peers.py``, loaded from its file: the Triton host the tests start (``TritonHost``) is the one measured
    here (``tests/`` on sys.path would shadow the ``edgeinfer`` package with ``tests/edgeinfer``)."""
    spec = importlib.util.spec_from_file_location("edgeinfer_test_peers", ROOT / "tests" / "peers.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod     # its dataclasses look their module up while it loads
    spec.loader.exec_module(mod)
    return mod


def counts(host) -> tuple[float, float]:
    """(inferences, executions) of the host's model so far, from Triton's metrics."""
    text = host.metrics()

    def get(name):
        m = re.search(rf'^{name}{{model="{re.escape(host.model)}",version="1"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0
    return get("nv_inference_count"), get("nv_inference_exec_count")


def drive(make_runner, clients: int, warmup_s: float, duration_s: float, feeds: dict) -> dict:
    """``clients`` threads calling ``runner.infer(feeds)`` in a loop; latencies of the calls that started inside the
    timed window."""
    runners = [make_runner() for _ in range(clients)]
    for r in runners:       # a fresh server's or client's first call (connection, first batch) is not timed
        r.infer(feeds)
    start = threading.Barrier(clients + 1)
    t_begin = [0.0]
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []

    def client(i: int):
        r = runners[i]
        start.wait()
        t_end = t_begin[0] + warmup_s + duration_s
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                break
            try:
                r.infer(feeds)
            except Exception as exc:  # noqa: BLE001 - counted, shown in the report
                errors.append(f"{exc.__class__.__name__}: {exc}")
                break
            if t0 >= t_begin[0] + warmup_s:
                lat[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    t_begin[0] = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    all_lat = np.array([x for row in lat for x in row]) * 1e3
    return {"clients": clients, "calls": int(all_lat.size), "p50_ms": float(np.percentile(all_lat, 50)) if all_lat.size else None,
            "p99_ms": float(np.percentile(all_lat, 99)) if all_lat.size else None,
            "max_ms": float(all_lat.max()) if all_lat.size else None,
            "images_per_s": all_lat.size / duration_s, "errors": errors[:3]}


def measure(args) -> list[dict]:
    from edgeinfer import autoselect
    from edgeinfer import triton as triton_policy
    from edgeinfer.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    spec = bundle.manifest["inputs"][0]
    shape = [1, *spec["shape"][1:]]
    feeds = {spec["name"]: np.random.default_rng(0).random(shape, dtype=np.float32)}
    clients = [int(c) for c in args.clients.split(",")]
    rows = []

    local = autoselect.choose(bundle, backend="onnxruntime", precision=args.precision, threads=args.threads)
    shared = local.create_runner().activate()
    for n in clients:
        rows.append({"mode": "in-process", **drive(lambda: shared, n, args.warmup_s, args.duration_s, feeds)})
        print(rows[-1], file=sys.stderr)
    shared.deactivate()

    peers = _peers()
    if not (peers.TRITON_VENV / "bin" / "edgeinfer").is_file():
        sys.exit(f"no Triton host venv at {peers.TRITON_VENV}: {peers.TRITON_HINT}")
    with tempfile.TemporaryDirectory() as tmp:
        for mode, max_batch in (("triton", 8), ("triton, no batching", 1)):
            workdir = Path(tmp) / f"max-batch-{max_batch}"
            workdir.mkdir()
            # the host's instances share the threads the in-process runner has, as they share a box's CPUs
            host_threads = triton_policy.instance_threads(None, args.instances, args.threads)
            host = peers.TritonHost(workdir, args.bundle, "--threads", str(host_threads), "--instances",
                                    str(args.instances), "--max-batch",
                                    str(max_batch), precision=args.precision)
            try:
                url = host.grpc_url if args.protocol == "grpc" else host.http_url
                sel = autoselect.choose(bundle, backend="triton", precision=args.precision, extra={"triton_url": url})

                def make():
                    return sel.create_runner().activate()

                for n in clients:
                    before = counts(host)
                    row = {"mode": mode, "protocol": args.protocol, **drive(make, n, args.warmup_s, args.duration_s, feeds)}
                    after = counts(host)
                    execs = after[1] - before[1]
                    row["mean_batch"] = (after[0] - before[0]) / execs if execs else None
                    rows.append(row)
                    print(rows[-1], file=sys.stderr)
            finally:
                host.stop()
    return rows


def render(r: dict) -> str:
    lines = [f"# Triton against in-process inference, {r['machine']}", "",
             f"Bundle {r['bundle']} {r['precision']}, ONNX Runtime with {r['threads']} threads in-process and the same "
             f"threads shared by the Triton host's {r.get('instances', 1)} instances; each client "
             f"sends one image per request ({r['protocol']} for Triton), {r['duration_s']:g} s timed after "
             f"{r['warmup_s']:g} s. Server and clients share this machine.", "",
             "| mode | clients | p50 (ms) | p99 (ms) | max (ms) | images/s | mean batch formed | errors |",
             "|---|--:|--:|--:|--:|--:|--:|---|"]
    for x in r["rows"]:
        mb = "-" if x.get("mean_batch") is None else f"{x['mean_batch']:.1f}"
        p50, p99, worst = ("-" if v is None else f"{v:.1f}" for v in (x["p50_ms"], x["p99_ms"], x.get("max_ms")))
        lines.append(f"| {x['mode']} | {x['clients']} | {p50} | {p99} | {worst} | {x['images_per_s']:.0f} | "
                     f"{mb} | {len(x['errors']) or ''} |")
    by = {(x["mode"], x["clients"]): x for x in r["rows"]}
    notes = []
    for n in sorted({x["clients"] for x in r["rows"]}):
        a, b, c = by.get(("triton", n)), by.get(("triton, no batching", n)), by.get(("in-process", n))
        if a and b and c and b["images_per_s"] and c["images_per_s"]:
            notes.append(f"{n} client(s): dynamic batching {a['images_per_s'] / b['images_per_s']:.2f}x the "
                         f"throughput without; Triton {a['images_per_s'] / c['images_per_s']:.2f}x in-process, "
                         f"p50 {a['p50_ms'] - c['p50_ms']:+.1f} ms")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def plot(r: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in dict.fromkeys(x["mode"] for x in r["rows"]):
        xs = [x for x in r["rows"] if x["mode"] == mode]
        ax1.plot([x["clients"] for x in xs], [x["images_per_s"] for x in xs], marker="o", label=mode)
        ax2.plot([x["clients"] for x in xs], [x["p99_ms"] for x in xs], marker="o", label=mode)
    ax2.set_yscale("log")
    for ax, title in ((ax1, "throughput (images/s)"), (ax2, "p99 latency per request (ms, log scale)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax1.legend()
    fig.suptitle(f"{r['bundle']} {r['precision']}: Triton vs in-process ({r['machine'][:80]})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="phantom-cxr")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--instances", type=int, default=None,
                    help="the Triton host's model instances (default its own, edgeinfer.triton.INSTANCES)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    ap.add_argument("--warmup-s", type=float, default=1.0)
    ap.add_argument("--duration-s", type=float, default=5.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--report", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    from edgeinfer.triton import INSTANCES

    args.instances = args.instances or INSTANCES
    r = {"edgeinfer_triton_bench": FORMAT, "machine": machine_line(flags=True), "bundle": args.bundle,
         "precision": args.precision, "threads": args.threads, "instances": args.instances, "protocol": args.protocol,
         "warmup_s": args.warmup_s,
         "duration_s": args.duration_s, "rows": measure(args)}
    publish(r, render(r), args.json, args.report)
    if args.plot:
        plot(r, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
