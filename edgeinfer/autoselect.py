"""Pick the fastest validated (backend, precision) on this machine.

Candidates are every (backend, precision) pair the machine can run and the accuracy gate
allows (fp32 always; fp16/int8 and runtime precisions such as OpenVINO bf16 only when
validated and passed). Their speed comes from a short probe, cached per machine, bundle and
library versions, so only the first run on a device pays for it. The choice and why are
returned, and triage records them in the worklist.

The speed cache is a hint, never a reason to stop: it is read strictly (:func:`read_json`,
size- and depth-capped, no NaN/Infinity) and every entry is checked; a file or entry that is
not what this module writes is reported once (a warning on the ``edgeinfer.autoselect``
logger), re-probed and rewritten atomically (:func:`write_json`).

Stability: a probe gives a median *and* the spread of its timed iterations, and a mode
slower than the fastest by no more than that spread counts as "as fast"; among those the
most precise one wins (:func:`pick`). Two runs, or a run under load, whose medians differ by
noise therefore still choose the same mode. Concurrent runs on one machine also serialise
their probes through a lock file beside the cache, so the second reuses the first's timings
instead of measuring while the first one loads the CPU.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from ._io import cache_root, read_json, write_json
from .backends import RUNTIME_PRECISIONS, Resolved, RunnerOptions, get_backend, local_backends, resolve
from .bundle import Bundle
from .errors import BackendUnavailable, EdgeInferError, JsonFileError
from .gate import check_runtime_precision, check_usable
from .precision import ALL, rank

log = logging.getLogger("edgeinfer.autoselect")

#: precisions tried, in this order
PRECISIONS = tuple(sorted(ALL, key=rank, reverse=True))
#: lower is more precise; used when speeds are within the noise, and to break exact ties
PRECISION_RANK = {p: rank(p) for p in ALL}

#: version of the speed cache's layout; any other value is an invalid (old or foreign) file
CACHE_FORMAT = 2
#: a speed cache is a few hundred bytes; anything much larger is not one we wrote
CACHE_MAX_BYTES = 64 * 1024
#: {"probes": {"b:p": {"p50_ms": ...}}} is 3 levels deep
CACHE_MAX_DEPTH = 8
#: a batch-1 probe slower than an hour is not a measurement
_MAX_MS = 3_600_000.0
#: how long a run waits for another run's probe of the same bundle before probing itself
LOCK_WAIT_S = 60.0
#: slack for float rounding when comparing a difference with a spread (timings are in ms)
_EPS_MS = 1e-9


class Allowed(NamedTuple):
    """A mode the gate allows and this machine can run; ``forced`` says so when only --force allowed it."""

    backend: str
    precision: str
    resolved: Resolved
    forced: str | None = None


@dataclass
class ModeTiming:
    """A mode and its probe's timing (median and spread, ms)."""

    backend: str
    precision: str
    artifact_id: str
    p50_ms: float | None = None
    note: str = ""
    #: interquartile range of the probe's timed iterations (see :func:`probe_stats`)
    spread_ms: float | None = None


@dataclass
class Selection:
    backend: str
    precision: str
    artifact_id: str
    reason: str
    candidates: list[ModeTiming] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    forced: str | None = None
    #: what runs it: artifact, backend and options (selection is done once; the caller creates the runner)
    resolved: Resolved | None = field(default=None, repr=False, compare=False)

    def create_runner(self):
        return self.resolved.create()

    def as_dict(self) -> dict:
        d = {"backend": self.backend, "precision": self.precision, "artifact": self.artifact_id,
             "reason": self.reason,
             "candidates": [{"backend": c.backend, "precision": c.precision, "p50_ms": c.p50_ms,
                             "spread_ms": c.spread_ms} for c in self.candidates],
             "not_considered": self.rejected}
        if self.forced:
            d["forced"] = self.forced
        return d


class ProbeStats(NamedTuple):
    """One probe: median batch-1 latency and the interquartile range of the timed iterations (ms)."""

    p50_ms: float
    spread_ms: float


def cache_dir() -> Path:
    return cache_root()


def _gate(bundle: Bundle, backend: str, precision: str, artifact, force: bool) -> tuple[str | None, str | None]:
    """(why not, forced message): the gate's verdict on one mode (never raises)."""
    try:
        if precision in RUNTIME_PRECISIONS:
            verdict = check_runtime_precision(bundle.manifest, backend, precision, artifact.record, force)
        else:
            verdict = check_usable(artifact.record, force)
    except EdgeInferError as exc:
        return str(exc), None
    if verdict.usable:
        return None, None
    return (None, verdict.message) if verdict.forced else (verdict.message, None)


def candidates(bundle: Bundle, *, device: str = "cpu", backend: str | None = None, precision: str | None = None,
               force: bool = False, options: RunnerOptions | None = None) -> tuple[list[Allowed], list[str]]:
    """Modes installed here that the gate allows, and why the others are not.

    No backend's library is loaded to answer (:meth:`Backend.installed`): a cached choice then
    loads only the runtime it chose. :func:`choose` asks :meth:`Backend.available` of the mode it
    returns, and a speed probe loads the library it times.
    """
    options = options or RunnerOptions(device=device)
    backends = [get_backend(backend).name] if backend else local_backends()
    precisions = [precision] if precision else list(PRECISIONS)
    ok, rejected = [], []
    for b in backends:
        for p in precisions:
            try:
                res = resolve(bundle, p, options, backend=b, installed_only=True)
            except EdgeInferError as exc:
                rejected.append(f"{b} {p}: {str(exc).splitlines()[-1].strip(' -')}")
                continue
            why, forced = _gate(bundle, res.backend.name, p, res.artifact, force)
            if why:
                rejected.append(f"{res.backend.name} {p}: {why}")
                continue
            ok.append(Allowed(res.backend.name, p, res, forced))
    return ok, rejected


def _profile_key(bundle: Bundle, threads: int | None, device: str, pairs, shared_cpu: bool = False) -> str:
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
                      os.cpu_count(), threads, device, sorted(f"{a.backend}:{a.precision}" for a in pairs)]
                     + (["shared_cpu"] if shared_cpu else []))
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


# --- probing -------------------------------------------------------------------------------------
def _timed_iterations(bundle: Bundle, backend: str, precision: str, *, threads: int | None, device: str,
                      warmup: int, iterations: int) -> list[float]:
    res = resolve(bundle, precision, RunnerOptions(device=device, threads=threads), backend=backend)
    spec = bundle.manifest["inputs"][0]
    shape = [1 if not isinstance(d, int) else d for d in spec["shape"]]
    rng = np.random.default_rng(0)
    feeds = [{spec["name"]: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    with res.create() as runner:
        for i in range(max(0, warmup)):
            runner.infer(feeds[i % 4])
        times = []
        for i in range(max(1, iterations)):
            t0 = time.perf_counter()
            runner.infer(feeds[i % 4])
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def probe_stats(bundle: Bundle, backend: str, precision: str, *, threads: int | None, device: str = "cpu",
                warmup: int = 5, iterations: int = 20) -> ProbeStats:
    """Median batch-1 latency of one (backend, precision) and its spread, in ms, measured here and now.

    The spread is the interquartile range (p75 - p25) of the timed iterations. Unlike a standard
    deviation it is not inflated by the odd iteration the scheduler pre-empted (a run under load
    has a long right tail), and unlike the standard error of the median it does not shrink with
    the number of iterations: it describes how much one iteration, and so one short probe, moves
    on this machine right now, which is what decides whether two medians from different runs
    can be told apart. Two modes whose medians differ by less than it are "as fast" (:func:`pick`).
    """
    times = np.asarray(_timed_iterations(bundle, backend, precision, threads=threads, device=device,
                                         warmup=warmup, iterations=iterations), dtype=np.float64)
    p25, p50, p75 = (float(x) for x in np.percentile(times, [25, 50, 75]))
    # a positive median even if the timer could not see the call, so the cache stays valid
    return ProbeStats(max(p50, 1e-6), max(p75 - p25, 0.0))


# --- the choice ----------------------------------------------------------------------------------
def _sig(ms: float) -> float:
    """A timing as shown and recorded: 6 significant digits (a fast model's p50 is well under 0.001 ms)."""
    return float(f"{ms:.6g}")


def _ms(ms: float) -> str:
    return f"{ms:.3g} ms"


def _rank(precision: str) -> int:
    return PRECISION_RANK.get(precision, len(PRECISION_RANK))


def pick(cands: Sequence[ModeTiming]) -> tuple[ModeTiming, str]:
    """The mode to use among timed candidates, and why (pure: no I/O, no clock).

    1. The fastest is the lowest ``p50_ms`` (an exact tie goes to the more precise, then to the
       backend name, so the result never depends on the input order).
    2. A candidate is "as fast" when ``p50 - fastest.p50 <= max(spread, fastest.spread)``: the
       difference is within what either probe's own iterations vary by, so another run could
       rank them the other way round. The larger of the two spreads is used because the noisier
       measurement is the one that limits what can be told apart.
    3. Among those "as fast", the most precise wins (fp32 > fp16 > bf16 > int8); then the lower
       p50; then the backend name. So the fastest is only passed over for a more precise mode.
    """
    timed = [c for c in cands if c.p50_ms is not None]
    if not timed:
        raise ValueError("pick() needs at least one candidate with a p50")

    def spread(c: ModeTiming) -> float:
        return c.spread_ms or 0.0

    fastest = min(timed, key=lambda c: (c.p50_ms, _rank(c.precision), c.backend))
    close = [c for c in timed
             if c.p50_ms - fastest.p50_ms <= max(spread(c), spread(fastest)) + _EPS_MS]
    best = min(close, key=lambda c: (_rank(c.precision), c.p50_ms, c.backend))
    if best is fastest:
        why = f"fastest allowed of {len(timed)} (batch-1 p50 {_ms(best.p50_ms)}, spread {_ms(spread(best))}"
    else:
        why = (f"the most precise of the allowed modes within the probe's spread of the fastest: "
               f"{best.backend} {best.precision} (batch-1 p50 {_ms(best.p50_ms)}, spread {_ms(spread(best))}) is "
               f"{_ms(best.p50_ms - fastest.p50_ms)} slower than {fastest.backend} {fastest.precision} "
               f"(p50 {_ms(fastest.p50_ms)}, spread {_ms(spread(fastest))}), within the "
               f"{_ms(max(spread(best), spread(fastest)))} spread, so it was preferred as more precise "
               f"(of {len(timed)} allowed")
    return best, why


# --- the speed cache -----------------------------------------------------------------------------
def _number(v, *, positive: bool) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return math.isfinite(v) and (v > 0 if positive else v >= 0) and v <= _MAX_MS


def _describe(v) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, float) else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _entry_problem(key, value) -> str | None:
    if not isinstance(key, str) or key.count(":") != 1 or not all(key.split(":")):
        return f"key {_describe(key)} is not 'backend:precision'"
    if not isinstance(value, dict):
        return f"{key} is {_describe(value)}, not an object with p50_ms and spread_ms"
    p50, spread = value.get("p50_ms"), value.get("spread_ms")
    if not _number(p50, positive=True):
        return f"{key} p50_ms is {_describe(p50)}, not a positive number of milliseconds"
    if not _number(spread, positive=False):
        return f"{key} spread_ms is {_describe(spread)}, not a non-negative number of milliseconds"
    return None


def read_cache(path: Path, bundle_name: str) -> tuple[dict[str, ProbeStats], list[str]]:
    """Valid entries of a speed cache, and what was wrong with the rest (never raises).

    A missing file (or a folder that cannot be looked into) is no cache and no problem; a
    file that cannot be read, is too large or too deep, is not strict JSON, or is not in
    format :data:`CACHE_FORMAT` gives no entries and one problem; an entry that is not
    ``{"p50_ms": > 0, "spread_ms": >= 0}`` (finite numbers) is left out with its problem.
    """
    try:
        st = os.stat(path)
    except OSError:
        return {}, []
    if not stat.S_ISREG(st.st_mode):
        return {}, []  # a folder or a pipe there: not ours to read; the write will fail harmlessly
    try:
        doc = read_json(path, max_bytes=CACHE_MAX_BYTES, max_depth=CACHE_MAX_DEPTH, what="speed cache")
    except JsonFileError as exc:
        why, prefix = str(exc), f"speed cache {path}"  # the warning names the file already
        if why.startswith(prefix + ":"):
            why = why[len(prefix) + 1:].strip()
        elif why.startswith(prefix):
            why = "it" + why[len(prefix):]
        return {}, [why]
    if not isinstance(doc, dict):
        return {}, [f"it holds {type(doc).__name__ if doc is not None else 'null'}, not a JSON object"]
    if doc.get("format") != CACHE_FORMAT:
        return {}, [f"format is {_describe(doc.get('format'))}, not {CACHE_FORMAT} "
                    "(written by an older edgeinfer, or not a speed cache)"]
    if doc.get("bundle") != bundle_name:
        return {}, [f"bundle is {_describe(doc.get('bundle'))}, not {bundle_name!r}"]
    probes = doc.get("probes")
    if not isinstance(probes, dict):
        return {}, [f"probes is {_describe(probes)}, not an object"]
    good, problems = {}, []
    for key, value in probes.items():
        why = _entry_problem(key, value)
        if why:
            problems.append(why)
        else:
            good[key] = ProbeStats(float(value["p50_ms"]), float(value["spread_ms"]))
    return good, problems


def _cache_doc(bundle_name: str, stats: dict[str, ProbeStats]) -> dict:
    return {"format": CACHE_FORMAT, "bundle": bundle_name,
            "probes": {k: {"p50_ms": s.p50_ms, "spread_ms": s.spread_ms} for k, s in sorted(stats.items())}}


@contextlib.contextmanager
def _probe_lock(path: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[bool]:
    """Hold an exclusive lock beside ``path`` while probing; yields whether it is held.

    Never fails: without ``fcntl``, a writable folder, or the lock within ``wait_s`` (another
    run probing a slow backend), the caller probes unlocked, as it would have anyway.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield False
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    held = False
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except OSError:
                if time.monotonic() >= deadline:
                    log.debug("speed cache %s: another run is still probing; probing without waiting", path)
                    break
                time.sleep(0.05)
        yield held
    finally:
        os.close(fd)  # releases the lock


def _cache_path(bundle: Bundle, threads: int | None, device: str, pairs, shared_cpu: bool = False) -> Path | None:
    try:
        return cache_dir() / "speed" / f"{bundle.name}-{_profile_key(bundle, threads, device, pairs, shared_cpu)}.json"
    except (OSError, RuntimeError):  # no home folder to resolve
        return None


def _listed(reasons: Sequence[str]) -> str:
    return "\n".join(f"  - {r}" for r in reasons)


def _unavailable(mode: Allowed) -> str | None:
    """Why ``mode``'s backend cannot be loaded here, or None (this loads its library)."""
    ok, why = mode.resolved.backend.available()
    return None if ok else why


def choose(bundle: Bundle, *, threads: int | None = None, device: str = "cpu", backend: str | None = None,
           precision: str | None = None, force: bool = False, use_cache: bool = True,
           allow_fallback: bool = False, shared_cpu: bool = False, extra: dict | None = None) -> Selection:
    """The mode triage runs: pinned (``backend``/``precision``), or the fastest the gate allows here.
    ``shared_cpu``: an intake pool will run beside inference (:attr:`RunnerOptions.shared_cpu`).
    ``extra``: backend settings (:attr:`RunnerOptions.extra`), e.g. a remote backend's server URL; a remote
    backend is used only when named, at the precision given or else the one its server serves.

    Selection is done once: the result carries the artifact, backend and runner options
    (:meth:`Selection.create_runner`) and, with ``force``, the gate's warning."""
    options = RunnerOptions(device=device, threads=threads, allow_fallback=allow_fallback, shared_cpu=shared_cpu,
                            extra=dict(extra or {}))
    if backend and get_backend(backend).remote:
        options.extra["bundle"] = bundle
        precision = precision or get_backend(backend).served_precision(bundle, options)
    pairs, rejected = candidates(bundle, backend=backend, precision=precision, force=force, options=options)
    if not pairs:
        raise BackendUnavailable(f"nothing allowed can run {bundle.name} here:\n" + _listed(rejected))
    if len(pairs) == 1:
        only = pairs[0]
        missing = _unavailable(only)
        if missing:
            rejected.append(f"{only.backend} {only.precision}: {missing}")
            raise BackendUnavailable(f"nothing allowed can run {bundle.name} here:\n" + _listed(rejected))
        return Selection(only.backend, only.precision, only.resolved.artifact.id,
                         reason="the only allowed choice" if (backend or precision) is None else "as pinned",
                         candidates=[ModeTiming(only.backend, only.precision, only.resolved.artifact.id)],
                         rejected=rejected, forced=only.forced, resolved=only.resolved)
    keys = [f"{a.backend}:{a.precision}" for a in pairs]
    path = _cache_path(bundle, threads, device, pairs, shared_cpu) if use_cache else None
    stats: dict[str, ProbeStats] = {}
    problems: list[str] = []
    probed = False
    with contextlib.ExitStack() as stack:
        if path is not None:
            stats, problems = read_cache(path, bundle.name)
            if problems or not all(k in stats for k in keys):
                # probing is needed: wait for any other run probing the same thing, then look again,
                # since that run may just have written what this one needs
                stack.enter_context(_probe_lock(path))
                stats, problems = read_cache(path, bundle.name)
            if problems:
                more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                log.warning("ignoring what is invalid in the speed cache %s: %s%s; it will be re-probed and "
                            "rewritten", path, "; ".join(problems[:3]), more)
        cands = []
        for (b, p, res, _), k in zip(pairs, keys):
            if k not in stats:
                probed = True
                try:
                    stats[k] = probe_stats(bundle, b, p, threads=threads, device=device)
                except EdgeInferError as exc:
                    rejected.append(f"{b} {p}: failed its speed probe ({exc})")
                    continue
            s = stats[k]
            cands.append(ModeTiming(b, p, res.artifact.id, p50_ms=_sig(s.p50_ms), spread_ms=_sig(s.spread_ms)))
        if path is not None and (probed or problems):
            try:
                write_json(path, _cache_doc(bundle.name, {k: stats[k] for k in keys if k in stats}))
            except (OSError, ValueError) as exc:
                log.debug("could not write the speed cache %s (%s); probing again next time", path, exc)
    if not cands:
        raise BackendUnavailable("every candidate failed its speed probe:\n" + "\n".join(rejected))
    cands.sort(key=lambda c: (c.p50_ms, _rank(c.precision), c.backend))
    while True:  # the pick must load: a cached choice has not loaded its library yet
        best, why = pick(cands)
        chosen = next(a for a in pairs if (a.backend, a.precision) == (best.backend, best.precision))
        missing = _unavailable(chosen)
        if not missing:
            break
        rejected.append(f"{best.backend} {best.precision}: {missing}")
        cands.remove(best)
        if not cands:
            raise BackendUnavailable("no allowed mode can be loaded here:\n" + _listed(rejected))
    ref = next((c for c in cands if c.backend == "onnxruntime" and c.precision == "fp32"), None)
    speedup = f", {ref.p50_ms / best.p50_ms:.1f}x ONNX Runtime fp32" if ref and best is not ref and best.p50_ms > 0 else ""
    reason = f"{why}{speedup}; {'probed now' if probed else 'cached probe, ' + str(path)})"
    return Selection(best.backend, best.precision, best.artifact_id, reason=reason, candidates=cands,
                     rejected=rejected, forced=chosen.forced, resolved=chosen.resolved)
