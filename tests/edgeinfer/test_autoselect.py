"""The default mode is the fastest *allowed* one, and pinning restricts the choice."""
import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
from helpers import make_bundle

from edgeinfer import autoselect
from edgeinfer.autoselect import ModeTiming, pick
from edgeinfer.bundle import load_bundle, write_manifest
from edgeinfer.errors import BackendUnavailable


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _with_bf16_record(tmp_path, passed):
    d = make_bundle(tmp_path / f"b{passed}")
    b = load_bundle(d)
    m = b.manifest
    m["validation"] = {"runtime_precisions": {"openvino:bf16": {
        "passed": passed, "artifact_sha256": b.artifact(precision="fp32").sha256, "reasons": [] if passed else ["agreement 0.9"]}}}
    write_manifest(d, m)
    return load_bundle(d)


def test_unvalidated_precisions_are_not_candidates(tiny_bundle):
    pairs, rejected = autoselect.candidates(load_bundle(tiny_bundle))
    assert {(b, p) for b, p, *_ in pairs} == {("onnxruntime", "fp32"), ("openvino", "fp32")}
    assert any(r.startswith("openvino bf16") and "never been validated" in r for r in rejected)


def test_a_validated_runtime_precision_becomes_a_candidate(tmp_path):
    pytest.importorskip("openvino")
    pairs, _ = autoselect.candidates(_with_bf16_record(tmp_path, True))
    assert ("openvino", "bf16") in {(b, p) for b, p, *_ in pairs}
    pairs, rejected = autoselect.candidates(_with_bf16_record(tmp_path, False))
    assert ("openvino", "bf16") not in {(b, p) for b, p, *_ in pairs}
    assert any("failed the accuracy gate" in r for r in rejected)


def _fake_probes(monkeypatch, fake):
    """Replace the probe with fixed (p50, spread) timings; returns the list of probes taken."""
    calls = []

    def probe_stats(bundle, backend, precision, **kw):
        calls.append((backend, precision))
        return autoselect.ProbeStats(*fake[(backend, precision)])

    monkeypatch.setattr(autoselect, "probe_stats", probe_stats)
    return calls


def _cache_file(cache):
    files = sorted((cache / "speed").glob("*.json"))
    assert len(files) == 1, files
    return files[0]


def test_choose_picks_the_fastest_and_caches_the_probe(tiny_bundle, cache, monkeypatch):
    b = load_bundle(tiny_bundle)
    calls = _fake_probes(monkeypatch, {("onnxruntime", "fp32"): (5.0, 0.2), ("openvino", "fp32"): (2.0, 0.1)})
    sel = autoselect.choose(b)
    assert (sel.backend, sel.precision) == ("openvino", "fp32")
    assert "2.5x ONNX Runtime fp32" in sel.reason and "probed now" in sel.reason
    assert len(calls) == 2
    sel2 = autoselect.choose(b)
    assert len(calls) == 2 and "cached probe" in sel2.reason  # no second probe
    saved = json.loads(_cache_file(cache).read_text())
    assert saved == {"format": 2, "bundle": b.name, "probes": {
        "onnxruntime:fp32": {"p50_ms": 5.0, "spread_ms": 0.2}, "openvino:fp32": {"p50_ms": 2.0, "spread_ms": 0.1}}}
    assert {(c["backend"], c["p50_ms"], c["spread_ms"]) for c in sel.as_dict()["candidates"]} == {
        ("onnxruntime", 5.0, 0.2), ("openvino", 2.0, 0.1)}


def test_pinning_restricts_and_skips_the_probe(tiny_bundle, monkeypatch):
    monkeypatch.setattr(autoselect, "probe_stats", lambda *a, **k: pytest.fail("pinned choice must not probe"))
    sel = autoselect.choose(load_bundle(tiny_bundle), backend="ort", precision="fp32")
    assert (sel.backend, sel.precision, sel.reason) == ("onnxruntime", "fp32", "as pinned")


def test_nothing_allowed_is_a_clear_error(tiny_bundle):
    with pytest.raises(BackendUnavailable, match="never been validated"):
        autoselect.choose(load_bundle(tiny_bundle), backend="openvino", precision="bf16")


def test_real_probe_stats_gives_a_median_and_a_spread(tiny_bundle):
    st = autoselect.probe_stats(load_bundle(tiny_bundle), "onnxruntime", "fp32", threads=1, warmup=1, iterations=8)
    assert st.p50_ms > 0 and st.spread_ms >= 0
    assert isinstance(st.p50_ms, float)


# --- the stable choice (pure) --------------------------------------------------------------------
def _c(backend, precision, p50, spread):
    return ModeTiming(backend, precision, f"{backend}-{precision}", p50_ms=p50, spread_ms=spread)


def test_pick_within_the_spread_prefers_the_more_precise():
    int8, fp16 = _c("openvino", "int8", 2.0, 0.3), _c("openvino", "fp16", 2.25, 0.1)
    best, why = pick([int8, fp16])
    assert best is fp16
    assert "more precise" in why and "within" in why and "openvino int8" in why
    # the larger of the two spreads counts, whichever candidate it belongs to
    assert pick([_c("openvino", "int8", 2.0, 0.05), _c("openvino", "fp16", 2.25, 0.3)])[0].precision == "fp16"
    # exactly at the spread is still within it (no float-rounding flip)
    assert pick([_c("openvino", "int8", 2.0, 0.3), _c("openvino", "fp16", 2.3, 0.3)])[0].precision == "fp16"
    # the most precise of several close ones, not merely the next one
    cands = [_c("openvino", "int8", 2.0, 0.5), _c("openvino", "bf16", 2.1, 0.5), _c("onnxruntime", "fp32", 2.4, 0.5),
             _c("openvino", "fp16", 2.2, 0.5)]
    assert (pick(cands)[0].backend, pick(cands)[0].precision) == ("onnxruntime", "fp32")


def test_pick_beyond_the_spread_takes_the_faster():
    int8, fp16 = _c("openvino", "int8", 2.0, 0.1), _c("openvino", "fp16", 2.5, 0.2)
    best, why = pick([fp16, int8])
    assert best is int8 and why.startswith("fastest allowed of 2") and "more precise" not in why
    # no spread known (None or 0): only the fastest
    assert pick([_c("a", "int8", 2.0, None), _c("b", "fp32", 2.01, 0.0)])[0].backend == "a"


def test_pick_breaks_ties_deterministically():
    a, b = _c("openvino", "fp32", 3.0, 0.0), _c("onnxruntime", "fp32", 3.0, 0.0)
    assert pick([a, b])[0] is b and pick([b, a])[0] is b   # same precision and time: backend name
    x, y = _c("openvino", "int8", 3.0, 0.0), _c("openvino", "fp16", 3.0, 0.0)
    assert pick([x, y])[0] is y and pick([y, x])[0] is y   # same time: the more precise
    fast, slow = _c("openvino", "fp32", 2.0, 0.5), _c("onnxruntime", "fp32", 2.2, 0.5)
    assert pick([slow, fast])[0] is fast                     # same precision, within the spread: the faster
    with pytest.raises(ValueError):
        pick([ModeTiming("a", "fp32", "x")])


def test_choose_reports_a_more_precise_mode_chosen_within_the_spread(tmp_path, cache, monkeypatch):
    pytest.importorskip("openvino")
    b = _with_bf16_record(tmp_path, True)
    _fake_probes(monkeypatch, {("onnxruntime", "fp32"): (5.0, 0.2), ("openvino", "fp32"): (2.3, 0.4),
                               ("openvino", "bf16"): (2.0, 0.2)})
    sel = autoselect.choose(b)
    assert (sel.backend, sel.precision) == ("openvino", "fp32")
    assert "more precise" in sel.reason and "within" in sel.reason and "openvino bf16" in sel.reason
    assert {(c["precision"], c["spread_ms"]) for c in sel.as_dict()["candidates"] if c["backend"] == "openvino"} == {
        ("fp32", 0.4), ("bf16", 0.2)}


# --- the speed cache is a hint -------------------------------------------------------------------
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def warnings_seen():
    """Warnings of edgeinfer.autoselect (a handler on the logger itself: the CLI tests turn propagation off)."""
    logger, handler = logging.getLogger("edgeinfer.autoselect"), _Records()
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield lambda: [r.getMessage() for r in handler.records if r.levelno == logging.WARNING]
    logger.removeHandler(handler)
    logger.setLevel(old)


def _count_probes(monkeypatch):
    """Count real probes (real ONNX Runtime / OpenVINO runs, kept short)."""
    real, calls = autoselect.probe_stats, []

    def counting(bundle, backend, precision, **kw):
        calls.append((backend, precision))
        return real(bundle, backend, precision, **{**kw, "warmup": 1, "iterations": 5})

    monkeypatch.setattr(autoselect, "probe_stats", counting)
    return calls


def _valid_text(name, ort=(4.1, 0.3), ov=(2.0, 0.2)):
    return json.dumps({"format": 2, "bundle": name, "probes": {
        "onnxruntime:fp32": {"p50_ms": ort[0], "spread_ms": ort[1]}, "openvino:fp32": {"p50_ms": ov[0], "spread_ms": ov[1]}}})


def _nested(depth):
    v = 1.0
    for _ in range(depth):
        v = [v]
    return v


BAD_CACHES = {
    # name: (file content from the bundle name, which entries must be re-probed: "all" or a set)
    "p50-null": (lambda n: '{"p50_ms": null}', "all"),
    "old-format": (lambda n: json.dumps({"bundle": n, "p50_ms": {"onnxruntime:fp32": 5.0, "openvino:fp32": 2.0}}), "all"),
    "format-3": (lambda n: _valid_text(n).replace('"format": 2', '"format": 3'), "all"),
    "other-bundle": (lambda n: _valid_text("someone-else"), "all"),
    "nan": (lambda n: _valid_text(n).replace("2.0", "NaN"), "all"),
    "infinity": (lambda n: _valid_text(n).replace("2.0", "Infinity"), "all"),
    "overflow": (lambda n: _valid_text(n).replace("2.0", "1e999"), "all"),
    "negative": (lambda n: _valid_text(n, ov=(-2.0, 0.2)), {"openvino:fp32"}),
    "zero": (lambda n: _valid_text(n, ov=(0, 0.2)), {"openvino:fp32"}),
    "negative-spread": (lambda n: _valid_text(n, ort=(4.1, -0.3)), {"onnxruntime:fp32"}),
    "absurdly-slow": (lambda n: _valid_text(n, ort=(1e300, 0.3)), {"onnxruntime:fp32"}),
    "string-timing": (lambda n: _valid_text(n).replace("4.1", '"4.1"'), {"onnxruntime:fp32"}),
    "bool-timing": (lambda n: _valid_text(n).replace("4.1", "true"), {"onnxruntime:fp32"}),
    "list-spread": (lambda n: _valid_text(n).replace("0.2", "[0.2]"), {"openvino:fp32"}),
    "entry-not-object": (lambda n: json.dumps({"format": 2, "bundle": n, "probes": {
        "onnxruntime:fp32": 4.1, "openvino:fp32": {"p50_ms": 2.0, "spread_ms": 0.2}}}), {"onnxruntime:fp32"}),
    "missing-spread": (lambda n: json.dumps({"format": 2, "bundle": n, "probes": {
        "onnxruntime:fp32": {"p50_ms": 4.1}, "openvino:fp32": {"p50_ms": 2.0, "spread_ms": 0.2}}}), {"onnxruntime:fp32"}),
    "both-entries-bad": (lambda n: _valid_text(n, ort=(None, 0.1), ov=(-1, "x")), "all"),
    "probes-a-list": (lambda n: json.dumps({"format": 2, "bundle": n, "probes": [4.1, 2.0]}), "all"),
    "top-level-list": (lambda n: "[1, 2, 3]", "all"),
    "top-level-null": (lambda n: "null", "all"),
    "empty": (lambda n: "", "all"),
    "truncated": (lambda n: _valid_text(n)[:40], "all"),
    "binary": (lambda n: "\udcff\x00garbage", "all"),
    "just-over-the-size-cap": (lambda n: _valid_text(n) + " " * (autoselect.CACHE_MAX_BYTES + 1 - len(_valid_text(n))), "all"),
    "just-over-the-depth-cap": (lambda n: json.dumps({"format": 2, "bundle": n, "probes": {
        "onnxruntime:fp32": {"p50_ms": 4.1, "spread_ms": 0.3}, "x": _nested(autoselect.CACHE_MAX_DEPTH)}}), "all"),
    "recursion-deep": (lambda n: "[" * 30_000 + "]" * 30_000, "all"),  # under the size cap, past the parser's stack
}


def _write_bad(path, text):
    path.write_bytes(text.encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize("kind", sorted(BAD_CACHES))
def test_an_invalid_cache_is_reported_once_reprobed_and_rewritten(kind, tiny_bundle, cache, monkeypatch, warnings_seen):
    b = load_bundle(tiny_bundle)
    calls = _count_probes(monkeypatch)
    autoselect.choose(b)                       # creates the cache with real probes
    path = _cache_file(cache)
    make, reprobe = BAD_CACHES[kind]
    _write_bad(path, make(b.name))
    if kind == "just-over-the-size-cap":
        assert path.stat().st_size == autoselect.CACHE_MAX_BYTES + 1
    calls.clear()
    assert warnings_seen() == []

    sel = autoselect.choose(b)                 # no exception, a selection

    assert (sel.backend, sel.precision) in {("onnxruntime", "fp32"), ("openvino", "fp32")}
    seen = warnings_seen()
    assert len(seen) == 1, seen
    assert str(path) in seen[0] and "re-probed and rewritten" in seen[0]
    expected = {"onnxruntime:fp32", "openvino:fp32"} if reprobe == "all" else reprobe
    assert {f"{b_}:{p}" for b_, p in calls} == expected and len(calls) == len(expected)
    assert ("probed now" in sel.reason)
    stats, problems = autoselect.read_cache(path, b.name)   # rewritten, valid
    assert problems == [] and set(stats) == {"onnxruntime:fp32", "openvino:fp32"}
    doc = json.loads(path.read_text())
    assert doc["format"] == 2 and doc["bundle"] == b.name
    if reprobe != "all":                       # the valid entry was kept as it was
        kept = ({"onnxruntime:fp32", "openvino:fp32"} - reprobe).pop()
        assert doc["probes"][kept] == json.loads(_valid_text(b.name))["probes"][kept]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind

    calls.clear()
    again = autoselect.choose(b)               # and the next run uses it, silently
    assert calls == [] and "cached probe" in again.reason and len(warnings_seen()) == 1


def test_a_huge_cache_file_is_not_read(tiny_bundle, cache, monkeypatch, warnings_seen):
    b = load_bundle(tiny_bundle)
    calls = _count_probes(monkeypatch)
    autoselect.choose(b)
    path = _cache_file(cache)
    with open(path, "r+b") as f:               # ~100 MB, sparse: the size is refused before reading
        f.truncate(100 * 2**20)
    calls.clear()
    autoselect.choose(b)
    seen = warnings_seen()
    assert len(seen) == 1 and "more than the 65,536" in seen[0] and len(calls) == 2
    assert autoselect.read_cache(path, b.name)[1] == [] and path.stat().st_size < 1000


def test_a_valid_cache_gives_the_same_selection_without_probing(tiny_bundle, cache, monkeypatch, warnings_seen):
    b = load_bundle(tiny_bundle)
    (cache / "speed").mkdir(parents=True)
    calls = _fake_probes(monkeypatch, {("onnxruntime", "fp32"): (4.1, 0.3), ("openvino", "fp32"): (4.0, 0.2)})
    first = autoselect.choose(b)
    assert len(calls) == 2
    path = _cache_file(cache)
    mtime = path.stat().st_mtime_ns
    second, third = autoselect.choose(b), autoselect.choose(b)
    assert len(calls) == 2                     # no re-probe
    for s in (second, third):
        assert (s.backend, s.precision, s.artifact_id) == (first.backend, first.precision, first.artifact_id)
        assert [(c.backend, c.precision, c.p50_ms, c.spread_ms) for c in s.candidates] == \
            [(c.backend, c.precision, c.p50_ms, c.spread_ms) for c in first.candidates]
    assert path.stat().st_mtime_ns == mtime    # a valid cache is not rewritten
    assert warnings_seen() == []


_LOADED = """
import sys
from edgeinfer import autoselect
from edgeinfer.bundle import load_bundle
s = autoselect.choose(load_bundle(sys.argv[1]))
print(s.backend, *(name for name in ("onnxruntime", "openvino") if name in sys.modules))
"""


@pytest.mark.parametrize("fast", ["onnxruntime", "openvino"])
def test_a_cached_choice_loads_only_the_chosen_runtime(fast, tiny_bundle, cache, monkeypatch):
    pytest.importorskip("openvino")
    b = load_bundle(tiny_bundle)
    slow = {"onnxruntime": "openvino", "openvino": "onnxruntime"}[fast]
    _fake_probes(monkeypatch, {(fast, "fp32"): (1.0, 0.01), (slow, "fp32"): (9.0, 0.01)})
    assert autoselect.choose(b).backend == fast          # probed (faked) and cached here
    out = subprocess.run([sys.executable, "-c", _LOADED, str(tiny_bundle)], capture_output=True, text=True,
                         env={**os.environ, "EDGEINFER_CACHE": str(cache)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [fast, fast]            # chosen from the cache; the other runtime never loaded


def test_a_cached_choice_that_cannot_load_gives_way_to_the_next(tiny_bundle, monkeypatch):
    from edgeinfer.backends.openvino import OpenVinoBackend

    b = load_bundle(tiny_bundle)
    _fake_probes(monkeypatch, {("onnxruntime", "fp32"): (9.0, 0.01), ("openvino", "fp32"): (1.0, 0.01)})
    monkeypatch.setattr(OpenVinoBackend, "installed", classmethod(lambda cls: (True, "")))
    monkeypatch.setattr(OpenVinoBackend, "available", classmethod(lambda cls: (False, "libopenvino.so: cannot open")))
    sel = autoselect.choose(b)
    assert (sel.backend, sel.precision) == ("onnxruntime", "fp32")
    assert "openvino fp32: libopenvino.so: cannot open" in sel.rejected
    with pytest.raises(BackendUnavailable, match="openvino fp32: libopenvino.so: cannot open"):
        autoselect.choose(b, backend="openvino", precision="fp32")


def test_the_cache_is_written_atomically_through_write_json(tiny_bundle, cache, monkeypatch):
    b = load_bundle(tiny_bundle)
    _fake_probes(monkeypatch, {("onnxruntime", "fp32"): (4.1, 0.3), ("openvino", "fp32"): (2.0, 0.2)})
    written = []
    real = autoselect.write_json
    monkeypatch.setattr(autoselect, "write_json", lambda p, obj, *a, **k: (written.append(p), real(p, obj, *a, **k))[1])
    autoselect.choose(b)
    assert written == [_cache_file(cache)]

    # a failing write (full disk) leaves the previous file as it was and is not an error
    _write_bad(_cache_file(cache), "{broken")
    before = _cache_file(cache).read_bytes()

    def full_disk(p, obj, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(autoselect, "write_json", full_disk)
    sel = autoselect.choose(b)
    assert sel.backend == "openvino" and _cache_file(cache).read_bytes() == before


def test_an_unusable_cache_folder_just_means_probing_again(tiny_bundle, tmp_path, monkeypatch, warnings_seen):
    b = load_bundle(tiny_bundle)
    calls = _fake_probes(monkeypatch, {("onnxruntime", "fp32"): (4.1, 0.3), ("openvino", "fp32"): (2.0, 0.2)})
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    monkeypatch.setenv("EDGEINFER_CACHE", str(not_a_dir))        # cannot be created or read
    assert autoselect.choose(b).backend == "openvino" and autoselect.choose(b).backend == "openvino"
    assert len(calls) == 4 and warnings_seen() == []

    # a folder where the cache file should be: no cache, nothing written, no error
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "c2"))
    autoselect.choose(b)
    path = _cache_file(tmp_path / "c2")
    path.unlink()
    path.mkdir()
    assert autoselect.choose(b).backend == "openvino" and path.is_dir() and warnings_seen() == []

    # a pipe there is never opened (reading it would block the run); a symlink loop is no cache
    path.rmdir()
    os.mkfifo(path)
    assert autoselect.choose(b).backend == "openvino" and warnings_seen() == []
    path.unlink()
    path.symlink_to(path)
    assert autoselect.choose(b).backend == "openvino" and warnings_seen() == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads and writes anything")
def test_an_unreadable_cache_folder_just_means_probing_again(tiny_bundle, cache, monkeypatch, warnings_seen):
    b = load_bundle(tiny_bundle)
    calls = _fake_probes(monkeypatch, {("onnxruntime", "fp32"): (4.1, 0.3), ("openvino", "fp32"): (2.0, 0.2)})
    autoselect.choose(b)
    (cache / "speed").chmod(0)
    try:
        assert autoselect.choose(b).backend == "openvino" and len(calls) == 4
    finally:
        (cache / "speed").chmod(0o755)


def test_concurrent_runs_probe_once_and_agree(tiny_bundle, cache, monkeypatch):
    b = load_bundle(tiny_bundle)
    calls = []
    fake = {("onnxruntime", "fp32"): (4.1, 0.3), ("openvino", "fp32"): (2.0, 0.2)}

    def slow_probe(bundle, backend, precision, **kw):
        calls.append((backend, precision))
        time.sleep(0.2)
        return autoselect.ProbeStats(*fake[(backend, precision)])

    monkeypatch.setattr(autoselect, "probe_stats", slow_probe)
    results, errors = [], []

    def run():
        try:
            results.append(autoselect.choose(b))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 3
    assert len(calls) == 2                     # the later runs waited and reused the first one's probes
    assert len({(s.backend, s.precision) for s in results}) == 1
