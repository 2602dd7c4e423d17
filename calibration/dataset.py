"""Calibration sets from a folder of DICOM studies.

1. :func:`scan` reads every file's header through the runtime's intake stage
   (:class:`edgeinfer.intake.Intake`), keeps the images the bundle applies to, and
   notes each one's sha256, study and *stratum*: (modality, manufacturer, photometric
   interpretation, body part).
2. :func:`plan_selection` picks N images stratified over those strata, deterministically
   for a seed: every stratum gets at least one image when N allows, the rest is shared in
   proportion to the strata's sizes (largest remainder), and within a stratum one image per
   study is taken before a second from the same study. Each stratum keeps an ordered queue of
   replacements for images that fail to preprocess.
3. :func:`build_calibration_set` preprocesses the chosen images with the bundle's own spec
   through the same intake stage (the runtime's code, not a copy) and writes a
   tensor cache (``.npz``) keyed on every candidate file's sha256, the selection parameters,
   the preprocessing spec's digest and the edgeinfer version: a changed file, a changed spec
   or a new edgeinfer gives a new key, so a stale cache is never reused. The cache also
   stores the key and the hashes it was built from, and both are checked again on load.
4. :class:`TensorReader` hands the tensors out in batches through ONNX Runtime's
   calibration-data protocol (``get_next`` returns a feed dict, then None).

Only numpy and edgeinfer are imported here.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Iterator, Protocol, Sequence

import numpy as np

from edgeinfer import __version__ as edgeinfer_version
from edgeinfer import dicomio
from edgeinfer._io import atomic_write, cache_root, write_json
from edgeinfer.bundle import Bundle, sha256_file
from edgeinfer.errors import InputError
from edgeinfer.intake import DEFAULT_IGNORE, NO_STUDY_UID, Intake, discover, ignored, study_uid
from edgeinfer.preprocess import PreprocessSpec

from . import CalibrationError

#: the header fields a stratum is made of, in order
STRATUM_FIELDS = ("modality", "manufacturer", "photometric", "body_part")
#: written into the cache and the calibration manifest; bump when their layout changes
CACHE_FORMAT = 1
MISSING = "(missing)"

Progress = Callable[[int], None]
#: ``stages(description, total)`` -> a context manager yielding an ``advance(n)`` callback
Stages = Callable[[str, int], ContextManager[Progress]]


@contextlib.contextmanager
def stage(stages: Stages | None, description: str, total: int) -> Iterator[Progress | None]:
    """One progress stage, or nothing when no progress display was asked for."""
    if stages is None:
        yield None
        return
    with stages(description, total) as advance:
        yield advance


# --- strata -------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class Stratum:
    modality: str
    manufacturer: str
    photometric: str
    body_part: str

    @classmethod
    def of(cls, ds) -> "Stratum":
        def text(keyword: str) -> str:
            v = str(ds.get(keyword, "") or "").strip()
            return v.upper() if keyword != "Manufacturer" else (v or MISSING)

        return cls(text("Modality") or MISSING, text("Manufacturer"),
                   text("PhotometricInterpretation") or MISSING, text("BodyPartExamined") or MISSING)

    @property
    def label(self) -> str:
        return " / ".join((self.modality, self.manufacturer, self.photometric, self.body_part))

    def as_dict(self) -> dict:
        return dict(zip(STRATUM_FIELDS, (self.modality, self.manufacturer, self.photometric, self.body_part)))

    def digest(self) -> int:
        return int(hashlib.sha256(self.label.encode()).hexdigest()[:12], 16)


@dataclass(frozen=True)
class Candidate:
    path: Path
    relpath: str
    sha256: str
    study_uid: str
    stratum: Stratum


@dataclass
class Scan:
    """Every file under a folder: usable candidates, and the rest with the reason."""

    root: Path
    candidates: list[Candidate]
    skipped: list[dict] = field(default_factory=list)    # {"path", "code", "reason"}
    n_files: int = 0

    def strata(self) -> dict[Stratum, list[Candidate]]:
        out: dict[Stratum, list[Candidate]] = {}
        for c in self.candidates:
            out.setdefault(c.stratum, []).append(c)
        return dict(sorted(out.items()))

    def fingerprint(self) -> str:
        """sha256 over the candidates' (sha256, stratum): identifies the usable content of the folder."""
        h = hashlib.sha256()
        for sha, label in sorted((c.sha256, c.stratum.label) for c in self.candidates):
            h.update(f"{sha} {label}\n".encode())
        return h.hexdigest()

    def skipped_summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.skipped:
            out[s["code"]] = out.get(s["code"], 0) + 1
        return dict(sorted(out.items()))


def _relpath(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def scan(data: str | os.PathLike | Sequence[str | os.PathLike], bundle: Bundle, *,
         limits: dicomio.ReadLimits | None = None, ignore: Iterable[str] = DEFAULT_IGNORE,
         progress: Progress | None = None) -> Scan:
    """Read every file's header under ``data``; keep the images ``bundle`` applies to.

    Duplicate files (same sha256) are kept once. Nothing is decoded here.
    """
    inputs = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    root = Path(inputs[0]) if len(inputs) == 1 and Path(inputs[0]).is_dir() else Path(os.path.commonpath(
        [os.path.abspath(p) for p in inputs]))
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise CalibrationError(f"no such file or folder: {', '.join(missing)}")
    intake = Intake.for_bundle(bundle, limits=limits, ignore=ignore)
    files = discover(inputs)
    result = Scan(root=root, candidates=[], n_files=len(files))
    seen: set[str] = set()
    for f in files:
        rel = _relpath(f, root)
        try:
            pat = ignored(f, intake.ignore)
            if pat:
                result.skipped.append({"path": rel, "code": "ignored", "reason": f"ignored (name matches {pat})"})
                continue
            try:
                ds = intake.header(f)
            except InputError as exc:  # NotApplicable included: the reason says which rule
                result.skipped.append({"path": rel, "code": exc.code, "reason": str(exc)})
                continue
            digest = sha256_file(f)
            if digest in seen:
                result.skipped.append({"path": rel, "code": "duplicate", "reason": "same content as another file"})
                continue
            seen.add(digest)
            uid = study_uid(ds)
            if uid == NO_STUDY_UID:  # each such image is a study of its own: never pooled across splits
                uid = f"{NO_STUDY_UID} {rel}"
            result.candidates.append(Candidate(f, rel, digest, uid, Stratum.of(ds)))
        finally:
            if progress:
                progress(1)
    return result


# --- selection ----------------------------------------------------------------------------------
def allocate(sizes: Sequence[int], n: int) -> list[int]:
    """Split ``n`` over strata of ``sizes``: one each first (when n allows), then in proportion.

    Largest-remainder rounding, capped by each stratum's size, ties broken by index.
    """
    sizes = [int(s) for s in sizes]
    total = sum(sizes)
    n = min(int(n), total)
    if n <= 0 or not sizes:
        return [0] * len(sizes)
    quota = [0] * len(sizes)
    if n >= sum(1 for s in sizes if s > 0):
        quota = [1 if s > 0 else 0 for s in sizes]
    else:  # fewer samples than strata: the largest strata get one each
        for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))[:n]:
            quota[i] = 1
        return quota
    while sum(quota) < n:
        left = n - sum(quota)
        room = [s - q for s, q in zip(sizes, quota)]
        weight = sum(r for r in room)
        share = [left * r / weight for r in room]
        add = [min(int(np.floor(x)), r) for x, r in zip(share, room)]
        rest = left - sum(add)
        order = sorted(range(len(sizes)), key=lambda i: (-(share[i] - np.floor(share[i])), -room[i], i))
        for i in order:
            if rest <= 0:
                break
            if add[i] < room[i]:
                add[i] += 1
                rest -= 1
        quota = [q + a for q, a in zip(quota, add)]
    return quota


@dataclass
class SelectionPlan:
    """Per stratum: how many to take, and candidates in the order to try them."""

    n_requested: int
    seed: int
    strata: dict[Stratum, tuple[int, list[Candidate]]]

    def first_choice(self) -> list[Candidate]:
        return [c for quota, queue in self.strata.values() for c in queue[:quota]]


def _order_within(stratum: Stratum, items: list[Candidate], seed: int) -> list[Candidate]:
    """Seeded shuffle (independent of file paths and listing order), then one image per study first."""
    items = sorted(items, key=lambda c: c.sha256)
    rng = np.random.default_rng([int(seed), stratum.digest()])
    shuffled = [items[i] for i in rng.permutation(len(items))]
    rank: dict[str, int] = {}
    keyed = []
    for pos, c in enumerate(shuffled):
        r = rank.get(c.study_uid, 0)
        rank[c.study_uid] = r + 1
        keyed.append((r, pos, c))
    return [c for _, _, c in sorted(keyed, key=lambda t: (t[0], t[1]))]


def plan_selection(candidates: Sequence[Candidate], n: int, seed: int = 0) -> SelectionPlan:
    if n < 1:
        raise CalibrationError(f"the number of calibration samples must be at least 1, got {n}")
    groups: dict[Stratum, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.stratum, []).append(c)
    keys = sorted(groups)
    quota = allocate([len(groups[k]) for k in keys], n)
    return SelectionPlan(n, seed, {k: (q, _order_within(k, groups[k], seed)) for k, q in zip(keys, quota)})


def select(candidates: Sequence[Candidate], n: int, seed: int = 0) -> list[Candidate]:
    """The first-choice stratified selection of ``n`` candidates (see :func:`plan_selection`)."""
    return plan_selection(candidates, n, seed).first_choice()


# --- the data-reader protocol ------------------------------------------------------------------
class CalibrationDataReader(Protocol):
    """ONNX Runtime's calibration protocol: feed dicts from ``get_next`` until it returns None."""

    def get_next(self) -> dict[str, np.ndarray] | None: ...


class TensorReader:
    """Batches of prepared tensors as ``{input_name: array}``; satisfies ORT's CalibrationDataReader.

    Also implements ``__len__`` (number of batches) and ``set_range`` so ONNX Runtime can
    calibrate in strides (bounded memory for the histogram calibrators), and ``rewind``.
    ``progress(n)`` is called with the number of images handed out.
    """

    def __init__(self, tensors: np.ndarray, input_name: str, batch_size: int = 8,
                 progress: Progress | None = None):
        if tensors.ndim < 2 or len(tensors) == 0:
            raise CalibrationError("a calibration reader needs at least one tensor")
        self.tensors = np.ascontiguousarray(tensors, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = max(1, int(batch_size))
        self.progress = progress
        self._n_batches = -(-len(self.tensors) // self.batch_size)
        self._start, self._end = 0, self._n_batches
        self._next = 0

    def __len__(self) -> int:
        return self._n_batches

    def rebatched(self, batch_size: int) -> "TensorReader":
        """The same tensors and progress callback in batches of ``batch_size``."""
        return TensorReader(self.tensors, self.input_name, batch_size, self.progress)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end = max(0, int(start_index)), min(self._n_batches, int(end_index))
        self._next = self._start

    def rewind(self) -> None:
        self._start, self._end, self._next = 0, self._n_batches, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        i = self._next
        self._next += 1
        batch = self.tensors[i * self.batch_size:(i + 1) * self.batch_size]
        if self.progress:
            self.progress(len(batch))
        return {self.input_name: batch}

    def __iter__(self):
        while (item := self.get_next()) is not None:
            yield item


# --- the calibration set -------------------------------------------------------------------------
@dataclass
class CalibrationSet:
    tensors: np.ndarray                 # (N, C, H, W) float32, exactly what the model sees
    samples: list[Candidate]
    manifest: dict                      # the calibration manifest (JSON-ready)
    cache_path: Path | None = None
    from_cache: bool = False

    @property
    def study_uids(self) -> list[str]:
        return [c.study_uid for c in self.samples]

    def reader(self, input_name: str, batch_size: int = 8, progress: Progress | None = None) -> TensorReader:
        return TensorReader(self.tensors, input_name, batch_size, progress)


def default_cache_dir() -> Path:
    return cache_root() / "calibration"


def cache_key(scan_result: Scan, spec: PreprocessSpec, n: int, seed: int) -> str:
    """Identifies a calibration set's tensors: every candidate's content, the selection and the spec."""
    payload = {"format": CACHE_FORMAT, "edgeinfer": edgeinfer_version, "spec": spec.digest(),
               "samples": int(n), "seed": int(seed), "candidates": scan_result.fingerprint(), "dtype": "float32"}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _load_cache(path: Path, key: str, spec: PreprocessSpec, by_sha: dict[str, Candidate]):
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key or str(z["spec_digest"]) != spec.digest():
                return None
            shas = [str(s) for s in z["sha256"]]
            tensors = np.array(z["tensors"], dtype=np.float32)
            failed = json.loads(str(z["failed"]))
    except (OSError, KeyError, ValueError):
        return None  # unreadable or foreign: rebuild (and overwrite)
    c, (h, w) = spec.channels, spec.target_size
    if tensors.shape != (len(shas), c, h, w) or any(s not in by_sha for s in shas):
        return None
    return tensors, [by_sha[s] for s in shas], failed


def _save_cache(path: Path, key: str, spec: PreprocessSpec, tensors: np.ndarray, samples: list[Candidate],
                failed: list[dict]) -> None:
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), spec_digest=np.array(spec.digest()),
             sha256=np.array([c.sha256 for c in samples]), tensors=tensors,
             failed=np.array(json.dumps(failed)))
    atomic_write(path, buf.getvalue())


def _prepare_plan(plan: SelectionPlan, spec: PreprocessSpec, limits: dicomio.ReadLimits,
                  progress: Progress | None) -> tuple[np.ndarray, list[Candidate], list[dict]]:
    tensors, samples, failed = [], [], []
    for stratum, (quota, queue) in plan.strata.items():
        taken = 0
        for c in queue:
            if taken >= quota:
                break
            try:
                tensors.append(Intake(spec, limits=limits).read(c.path).tensor)
            except InputError as exc:
                failed.append({"path": c.relpath, "sha256": c.sha256, "code": exc.code, "reason": str(exc)})
                continue
            samples.append(c)
            taken += 1
            if progress:
                progress(1)
        if progress and taken < quota:
            progress(quota - taken)
    c_, (h, w) = spec.channels, spec.target_size
    arr = np.stack(tensors).astype(np.float32, copy=False) if tensors else np.zeros((0, c_, h, w), np.float32)
    return arr, samples, failed


def build_calibration_set(data: str | os.PathLike, bundle: Bundle, *, samples: int = 200, seed: int = 0,
                          cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                          limits: dicomio.ReadLimits | None = None,
                          scan_result: Scan | None = None,
                          stages: Stages | None = None) -> CalibrationSet:
    """Scan ``data``, select ``samples`` images stratified, preprocess them with ``bundle``'s spec.

    ``stages(description, total)``: optional progress display per stage (see :data:`Stages`).
    ``cache_dir``: where the tensor cache lives (default: :func:`default_cache_dir`).
    """
    if bundle.manifest.get("task") == "segmentation":
        return volume_calibration_set(data, bundle, samples=samples, seed=seed, limits=limits, stages=stages)
    spec = PreprocessSpec.from_manifest(bundle.manifest["preprocessing"])
    limits = limits or dicomio.ReadLimits()
    if scan_result is None:
        n_files = len(discover([data])) if Path(data).exists() else 0
        with stage(stages, "reading headers", n_files) as advance:
            scan_result = scan(data, bundle, limits=limits, progress=advance)
    if not scan_result.candidates:
        reasons = scan_result.skipped_summary()
        raise CalibrationError(
            f"no usable image for bundle {bundle.name} under {data} ({scan_result.n_files} files; skipped: "
            f"{', '.join(f'{k} {v}' for k, v in reasons.items()) or 'none'}). Calibration needs studies the "
            f"bundle applies to (modalities {', '.join(bundle.manifest['applies_to']['modalities'])}).")
    plan = plan_selection(scan_result.candidates, samples, seed)
    key = cache_key(scan_result, spec, samples, seed)
    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_path = cdir / f"{key[:32]}.npz"
    by_sha = {c.sha256: c for c in scan_result.candidates}

    loaded = _load_cache(cache_path, key, spec, by_sha) if use_cache and cache_path.is_file() else None
    hit = loaded is not None
    if hit:
        tensors, chosen, failed = loaded
    else:
        n_plan = sum(q for q, _ in plan.strata.values())
        with stage(stages, f"preprocessing {n_plan} images", n_plan) as advance:
            tensors, chosen, failed = _prepare_plan(plan, spec, limits, advance)
        if not len(chosen):
            raise CalibrationError(f"none of the {len(failed)} selected images could be preprocessed: "
                                   + "; ".join(f"{f['path']}: {f['reason']}" for f in failed[:5]))
        if use_cache:
            try:
                _save_cache(cache_path, key, spec, tensors, chosen, failed)
            except OSError:
                cache_path = None  # a read-only cache folder must not stop calibration
    manifest = calibration_manifest(scan_result, plan, chosen, failed, spec, key, cache_path, hit)
    if use_cache and cache_path is not None and not hit:
        try:   # the calibration manifest next to its tensors, for people looking into the cache
            write_json(cache_path.with_suffix(".json"), manifest)
        except OSError:
            pass
    return CalibrationSet(tensors, chosen, manifest, cache_path, hit)


def volume_calibration_set(data: str | os.PathLike, bundle: Bundle, *, samples: int = 200, seed: int = 0,
                           limits: dicomio.ReadLimits | None = None, stages: Stages | None = None) -> CalibrationSet:
    """A segmentation bundle's calibration set: slices of each study's chosen series, read as the runtime reads
    them (:meth:`edgeinfer.segmentation.SegmentationSpec.read`: HU, resampled, windows as channels), at the
    model's tile size (padded as the sliding window pads), ``samples`` in all, spread evenly over the studies
    and through each volume (the first at a seeded offset). Not cached: reading a few volumes is quick."""
    from edgeinfer.segmentation import SegmentationSpec
    from edgeinfer.volume import _header, choose_series

    spec = SegmentationSpec.from_manifest(bundle.manifest["segmentation"])
    limits = limits or dicomio.ReadLimits()
    n_files = len(discover([data])) if Path(data).exists() else 0
    with stage(stages, "reading headers", n_files) as advance:
        scan_result = scan(data, bundle, limits=limits, progress=advance)
    by_study: dict[str, dict[str, list]] = {}
    for c in scan_result.candidates:
        try:
            ds = _header(c.path, limits)
        except InputError:
            continue
        by_study.setdefault(c.study_uid, {}).setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((c, ds))
    if not by_study:
        raise CalibrationError(f"no series under {data} that bundle {bundle.name} applies to "
                               f"({scan_result.n_files} files: {scan_result.skipped_summary() or 'none skipped'})")
    rng = np.random.default_rng(seed)
    k = len(by_study)
    per_study = [samples // k + (1 if i < samples % k else 0) for i in range(k)]     # spread evenly
    rows, cols = spec.roi
    tensors, chosen, failed = [], [], []
    with stage(stages, f"reading {len(by_study)} volumes", len(by_study)) as advance:
        for (uid, series), quota in zip(sorted(by_study.items()), per_study):
            best, _ = choose_series({k: [ds for _, ds in v] for k, v in series.items()}, spec.series)
            if best is not None:
                members = [c for c, _ in series[best]]
                try:
                    x, vol = spec.read([c.path for c in members], limits, headers=[ds for _, ds in series[best]])
                except InputError as exc:
                    failed.append({"path": members[0].relpath, "sha256": members[0].sha256, "code": exc.code,
                                   "reason": str(exc)})
                else:
                    n = x.shape[1]
                    step = max(1.0, n / max(1, quota))
                    start = float(rng.uniform(0, step))
                    for k in sorted({min(n - 1, int(start + j * step)) for j in range(min(quota, n))}):
                        tile = np.zeros((x.shape[0], rows, cols), np.float32)
                        h, w = min(rows, x.shape[2]), min(cols, x.shape[3])
                        tile[:, :h, :w] = x[:, k, :h, :w]
                        tensors.append(tile)
                        chosen.append(members[vol.plan.order[k]] if n == len(vol.plan.order) else members[0])
            if advance:
                advance(1)
    if not tensors:
        raise CalibrationError(f"no volume under {data} could be read for calibration: "
                               + "; ".join(f"{f['path']}: {f['reason']}" for f in failed[:5]) or "no series fits")
    arr = np.stack(tensors)
    key = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "edgeinfer": edgeinfer_version, "seed": int(seed),
                                     "samples": int(samples), "candidates": scan_result.fingerprint(),
                                     "segmentation": bundle.manifest["segmentation"]}, sort_keys=True).encode()
                         ).hexdigest()
    manifest = {
        "format": f"edgeinfer-calibration-set/{CACHE_FORMAT}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "kind": "volume slices",
        "data": {"root": str(scan_result.root), "files": scan_result.n_files,
                 "usable_images": len(scan_result.candidates), "studies": len(by_study),
                 "skipped": scan_result.skipped_summary(), "fingerprint": scan_result.fingerprint()},
        "selection": {"samples_requested": int(samples), "samples": len(arr), "seed": int(seed),
                      "studies": len({c.study_uid for c in chosen}), "spread": "evenly through each chosen series"},
        "files": [{"path": c.relpath, "sha256": c.sha256} for c in chosen],
        "failed": failed,
        "tensor_cache": {"key": key, "file": None, "hit": False},
    }
    return CalibrationSet(arr, chosen, manifest, None, False)


def calibration_manifest(scan_result: Scan, plan: SelectionPlan, chosen: list[Candidate], failed: list[dict],
                         spec: PreprocessSpec, key: str, cache_path: Path | None, hit: bool) -> dict:
    """What went into a calibration set, JSON-ready (goes into the bundle's ``calibration`` record)."""
    taken: dict[Stratum, int] = {}
    for c in chosen:
        taken[c.stratum] = taken.get(c.stratum, 0) + 1
    strata = [{**s.as_dict(), "available": len(queue), "selected": taken.get(s, 0)}
              for s, (_, queue) in plan.strata.items()]
    return {
        "format": f"edgeinfer-calibration-set/{CACHE_FORMAT}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {"root": str(scan_result.root), "files": scan_result.n_files,
                 "usable_images": len(scan_result.candidates),
                 "studies": len({c.study_uid for c in scan_result.candidates}),
                 "skipped": scan_result.skipped_summary(), "fingerprint": scan_result.fingerprint()},
        "selection": {"samples_requested": plan.n_requested, "samples": len(chosen), "seed": plan.seed,
                      "stratified_by": list(STRATUM_FIELDS),
                      "studies": len({c.study_uid for c in chosen})},
        "strata": strata,
        "preprocessing": {"spec_digest": spec.digest(), "edgeinfer": edgeinfer_version},
        "files": [{"path": c.relpath, "sha256": c.sha256, "stratum": c.stratum.label} for c in chosen],
        "failed": failed,
        "tensor_cache": {"key": key, "file": cache_path.name if cache_path else None, "hit": hit},
    }


__all__ = ["Stages", "stage", "STRATUM_FIELDS", "Stratum", "Candidate", "Scan", "scan", "allocate", "SelectionPlan", "plan_selection",
           "select", "CalibrationDataReader", "TensorReader", "CalibrationSet", "build_calibration_set",
           "volume_calibration_set",
           "calibration_manifest", "cache_key", "default_cache_dir"]
