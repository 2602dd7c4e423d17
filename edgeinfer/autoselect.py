"""Pick the fastest validated (backend, precision) on this machine.

Candidates are every (backend, precision) pair the machine can run and the accuracy gate
allows (fp32 always; fp16/int8 and runtime precisions such as OpenVINO bf16 only when
validated and passed). Their speed comes from a short probe, cached per machine, bundle and
library versions, so only the first run on a device pays for it. The choice and why are
returned, and triage records them in the worklist.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import RUNTIME_PRECISIONS, RunnerOptions, get_backend, registered, select
from .bundle import Bundle
from .errors import BackendUnavailable, EdgeInferError
from .gate import check_runtime_precision, check_usable

#: precisions tried, in the order used to break ties
PRECISIONS = ("int8", "bf16", "fp16", "fp32")


@dataclass
class Candidate:
    backend: str
    precision: str
    artifact_id: str
    p50_ms: float | None = None
    note: str = ""


@dataclass
class Selection:
    backend: str
    precision: str
    artifact_id: str
    reason: str
    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    forced: str | None = None

    def as_dict(self) -> dict:
        d = {"backend": self.backend, "precision": self.precision, "artifact": self.artifact_id,
             "reason": self.reason,
             "candidates": [{"backend": c.backend, "precision": c.precision, "p50_ms": c.p50_ms} for c in self.candidates],
             "not_considered": self.rejected}
        if self.forced:
            d["forced"] = self.forced
        return d


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEINFER_CACHE", Path.home() / ".cache" / "edgeinfer"))


def _usable(bundle: Bundle, backend: str, precision: str, artifact, force: bool) -> str | None:
    """None if the gate allows it, else why not (never raises)."""
    try:
        if precision in RUNTIME_PRECISIONS:
            verdict = check_runtime_precision(bundle.manifest, backend, precision, artifact.record, force)
        else:
            verdict = check_usable(artifact.record, force)
    except EdgeInferError as exc:
        return str(exc)
    return None if verdict.usable or verdict.forced else verdict.message


def candidates(bundle: Bundle, *, device: str = "cpu", backend: str | None = None, precision: str | None = None,
               force: bool = False) -> tuple[list[tuple[str, str, object]], list[str]]:
    """Runnable and allowed (backend, precision, artifact) triples, and why the others are not."""
    backends = [get_backend(backend).name] if backend else list(registered())
    precisions = [precision] if precision else list(PRECISIONS)
    ok, rejected = [], []
    for b in backends:
        for p in precisions:
            options = RunnerOptions(device=device)
            try:
                art, cls = select(bundle, p, options, backend=b)
            except EdgeInferError as exc:
                rejected.append(f"{b} {p}: {str(exc).splitlines()[-1].strip(' -')}")
                continue
            why = _usable(bundle, cls.name, p, art, force)
            if why:
                rejected.append(f"{cls.name} {p}: {why}")
                continue
            ok.append((cls.name, p, art))
    return ok, rejected


def _profile_key(bundle: Bundle, threads: int | None, device: str, pairs) -> str:
    from importlib import metadata

    versions = []
    for dist in ("onnxruntime", "openvino", "tensorrt"):
        try:
            versions.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    cpu = ""
    try:
        cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    except OSError:
        pass
    raw = json.dumps([sorted(a.sha256 for a in bundle.artifacts), versions, cpu, platform.machine(),
                      os.cpu_count(), threads, device, sorted(f"{b}:{p}" for b, p, _ in pairs)])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def probe(bundle: Bundle, backend: str, precision: str, *, threads: int | None, device: str = "cpu",
          warmup: int = 5, iterations: int = 20) -> float:
    """Median batch-1 latency in ms of one (backend, precision), measured here and now."""
    options = RunnerOptions(device=device, threads=threads)
    art, cls = select(bundle, precision, options, backend=backend)
    spec = bundle.manifest["inputs"][0]
    shape = [1 if not isinstance(d, int) else d for d in spec["shape"]]
    rng = np.random.default_rng(0)
    feeds = [{spec["name"]: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    with cls.create(art, options) as runner:
        for i in range(warmup):
            runner.infer(feeds[i % 4])
        times = []
        for i in range(iterations):
            t0 = time.perf_counter()
            runner.infer(feeds[i % 4])
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def choose(bundle: Bundle, *, threads: int | None = None, device: str = "cpu", backend: str | None = None,
           precision: str | None = None, force: bool = False, use_cache: bool = True) -> Selection:
    pairs, rejected = candidates(bundle, device=device, backend=backend, precision=precision, force=force)
    if not pairs:
        raise BackendUnavailable(f"nothing allowed can run {bundle.name} here:\n" + "\n".join(f"  - {r}" for r in rejected))
    if len(pairs) == 1:
        b, p, art = pairs[0]
        return Selection(b, p, art.id, reason="the only allowed choice" if (backend or precision) is None
                         else "as pinned", candidates=[Candidate(b, p, art.id)], rejected=rejected)
    key = _profile_key(bundle, threads, device, pairs)
    path = cache_dir() / "speed" / f"{bundle.name}-{key}.json"
    timings: dict[str, float] = {}
    if use_cache and path.is_file():
        try:
            timings = json.loads(path.read_text())["p50_ms"]
        except (OSError, ValueError, KeyError):
            timings = {}
    cands, probed = [], False
    for b, p, art in pairs:
        k = f"{b}:{p}"
        if k not in timings:
            probed = True
            try:
                timings[k] = probe(bundle, b, p, threads=threads, device=device)
            except EdgeInferError as exc:
                rejected.append(f"{b} {p}: failed its speed probe ({exc})")
                continue
        cands.append(Candidate(b, p, art.id, p50_ms=round(timings[k], 3)))
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"bundle": bundle.name, "p50_ms": timings}, indent=1))
        except OSError:
            pass  # a read-only home: probe again next time
    if not cands:
        raise BackendUnavailable("every candidate failed its speed probe:\n" + "\n".join(rejected))
    order = {p: i for i, p in enumerate(PRECISIONS)}
    cands.sort(key=lambda c: (c.p50_ms, order.get(c.precision, 9)))
    best = cands[0]
    ref = next((c for c in cands if c.backend == "onnxruntime" and c.precision == "fp32"), None)
    speedup = f", {ref.p50_ms / best.p50_ms:.1f}x ONNX Runtime fp32" if ref and best is not ref else ""
    reason = (f"fastest allowed of {len(cands)} (batch-1 p50 {best.p50_ms:.2f} ms{speedup}; "
              f"{'probed now' if probed else 'cached probe, ' + str(path)})")
    return Selection(best.backend, best.precision, best.artifact_id, reason=reason, candidates=cands,
                     rejected=rejected)
