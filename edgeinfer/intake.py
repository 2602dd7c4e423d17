"""The one intake stage: from a folder, a file or a dataset to the tensor a model sees.

    discover -> ignore rules -> hardened read (header) -> applicability -> decode -> preprocess

Triage, bench, calibration, validation, the export checks and preview all come through here,
so what the model sees on a device is what it saw when it was calibrated and validated.
Every path given to :meth:`Intake.take` comes back as an :class:`Image` or a
:class:`Rejection` (a skip or an error, with its reason): nothing is lost, and bad input
never raises. Per-stage timings (read, decode, preprocess) travel with each image.

The stages are separate methods (:meth:`Intake.header`, :meth:`Intake.prepare`) so that a
caller can read headers first and decode later, or run the decode and preprocess work in a
pool while a runner infers the previous batch.
"""
from __future__ import annotations

import fnmatch
import functools
import multiprocessing
import os
import signal
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from . import dicomio
from .errors import EdgeInferError, InputError, NotApplicable
from .preprocess import Prepared, PreprocessSpec, decode_size, preprocess_pixels, select_frame
from .sysinfo import tune_allocator
from .vr import shown_body_part, shown_modality, shown_photometric, shown_uid, valid_uid

#: sidecar files that sit next to studies; listed as skipped, never read as DICOM
DEFAULT_IGNORE = ("*.csv", "*.json", "*.txt", "*.md", "*.png", "*.jpg", "*.npy", ".*")
#: the study an image without a StudyInstanceUID is grouped under
NO_STUDY_UID = "(no StudyInstanceUID)"


# --- discovery ---------------------------------------------------------------------------------
def discover(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Every entry under the given files/folders, sorted, each once.

    Not only the regular files: every entry the reader must account for is listed too (a
    folder that cannot be listed, a FIFO, socket or device, a link to a folder, a dangling
    link), so the reader rejects it with a reason instead of it vanishing from the run.
    Links to folders are not followed inside a folder (no loops, no escaping the tree).
    """
    seen: set[str] = set()
    out: list[Path] = []
    for item in inputs:
        top = Path(item)
        found: list[Path] = []
        if top.is_dir():
            stack = [top]
            while stack:
                folder = stack.pop()
                try:
                    with os.scandir(folder) as it:
                        entries = list(it)
                except OSError:
                    found.append(folder)  # unreadable: the reader says why
                    continue
                for entry in entries:
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_dir = False
                    (stack if is_dir else found).append(Path(entry.path))
            found.sort()
        else:
            found = [top]
        for f in found:
            key = os.path.abspath(f)
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def ignored(path: Path, patterns: Sequence[str]) -> str | None:
    """The first name pattern ``path`` matches (it is listed as skipped, never read), or None."""
    return next((p for p in patterns if fnmatch.fnmatch(path.name, p)), None)


# --- header rules ------------------------------------------------------------------------------
def applicability(ds, applies_to: dict, name: str, *, what_it_is_only: bool = False) -> str | None:
    """None if a bundle with these ``applies_to`` rules handles this image, else the reason it does not.

    ``what_it_is_only``: only the rules on what the image shows (modality, body part), not on how its
    pixels are encoded (photometric interpretation): for an image whose pixels cannot be read, a pixel
    problem must stay an error (a human read), never become "not for this model".
    Header values in the reason pass through :mod:`edgeinfer.vr`: never echoed as written.
    """
    raw_modality = ds.get("Modality", "")
    modality = str(raw_modality or "").upper().strip()
    if modality not in applies_to["modalities"]:
        return (f"modality {shown_modality(raw_modality)} is not handled by {name} "
                f"(it reads {', '.join(applies_to['modalities'])})")
    parts = applies_to.get("body_parts")
    if parts:
        raw_body = ds.get("BodyPartExamined", "")
        body = str(raw_body or "").upper().strip()
        if not body and not applies_to.get("allow_missing_body_part", True):
            return f"body part is not recorded; {name} needs one of {', '.join(parts)}"
        if body and body not in parts:
            return f"body part {shown_body_part(raw_body)} is not handled by {name} (it reads {', '.join(parts)})"
    photometric = None if what_it_is_only else applies_to.get("photometric")
    raw_pi = ds.get("PhotometricInterpretation", "")
    pi = str(raw_pi or "").upper().strip()
    if photometric and pi not in photometric:
        return (f"photometric interpretation {shown_photometric(raw_pi)} is not handled "
                f"(needs {', '.join(photometric)})")
    return None


def study_uid(ds) -> str:
    """The study an image belongs to (the reader refused malformed UIDs; shown_uid keeps that promise)."""
    return shown_uid(ds.get("StudyInstanceUID", ""), missing=NO_STUDY_UID)


# --- results -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rejection:
    """A path that gives no image: ``skipped`` (not for this bundle, or ignored) or an error."""

    path: Path
    skipped: bool
    code: str
    reason: str
    study_uid: str | None = None   # set when the header was readable: the study needs a human read

    def record(self) -> dict:
        rec = {"path": str(self.path), "code": self.code, "reason": self.reason}
        if self.study_uid:
            rec["study_uid"] = self.study_uid
        return rec


@dataclass
class Image:
    """One image ready for a model, with where it came from and what each stage cost."""

    path: Path | None
    ds: object
    prepared: Prepared
    timings_ms: dict[str, float]             # read, decode, preprocess
    notes: list[str] = field(default_factory=list)

    @property
    def tensor(self) -> np.ndarray:
        return self.prepared.tensor

    @property
    def study_uid(self) -> str:
        return study_uid(self.ds)


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1e3


# --- the stage ---------------------------------------------------------------------------------
class Intake:
    """Read, check, decode and preprocess images for one preprocessing spec and one set of rules."""

    def __init__(self, spec: PreprocessSpec, *, applies_to: dict | None = None, name: str = "this model",
                 limits: dicomio.ReadLimits | None = None, ignore: Sequence[str] = DEFAULT_IGNORE):
        self.spec = spec
        self.applies_to = applies_to
        self.name = name
        self.limits = limits or dicomio.ReadLimits()
        self.ignore = tuple(ignore)

    @classmethod
    def for_bundle(cls, bundle, **kw) -> "Intake":
        m = bundle.manifest
        return cls(PreprocessSpec.from_manifest(m["preprocessing"]), applies_to=m["applies_to"],
                   name=bundle.name, **kw)

    def header(self, path: str | os.PathLike):
        """The checked header of ``path`` (pixels present, not decoded). Raises InputError;
        NotApplicable when the rules say this image is not for this model.

        Applicability comes from the header even when the image cannot be read: a file the checked
        reader refuses (no pixel data, a deflate bomb, damaged pixels) is looked at once more through its
        routing header; a CT is then not applicable rather than an error of a chest study, and an error
        of an applicable image carries its study, so that the study goes to a human read."""
        try:
            ds = dicomio.read_dataset(path, self.limits)
        except NotApplicable:
            raise
        except InputError as exc:
            uid, why = self._routing_verdict(path)
            if why:
                raise NotApplicable(why) from None
            if uid and exc.study_uid is None:
                exc.study_uid = uid
            raise
        if self.applies_to is not None:
            why = applicability(ds, self.applies_to, self.name)
            if why:
                raise NotApplicable(why)
        return ds

    def _routing_verdict(self, path) -> tuple[str | None, str | None]:
        """For a file the checked reader refused: (its study UID, why it is not for this model) from its
        routing header (``dicomio.parse.routing_header``); (None, None) when it has no real header (junk
        parses to nothing with a valid Study Instance UID) or names no modality to judge by."""
        from .dicomio.parse import _read_bytes, routing_header
        from .dicomio.quiet import _library_quiet

        try:
            data = _read_bytes(str(path), self.limits)  # the checked file read: no FIFO, device or giant
            with _library_quiet():  # values are converted here, warnings and all
                head = routing_header(data, specific_tags=["StudyInstanceUID", "Modality", "BodyPartExamined"])
                uid = str(head.get("StudyInstanceUID", "") or "").strip(" \x00")
                if not valid_uid(uid):
                    return None, None
                why = None
                if self.applies_to is not None and str(head.get("Modality", "") or "").strip():
                    why = applicability(head, self.applies_to, self.name, what_it_is_only=True)
                return uid, why
        except Exception:  # noqa: BLE001 - not even a header: the first error stands
            return None, None

    def prepare(self, ds, path: Path | None = None, *, read_ms: float = 0.0) -> Image:
        """Decode the frame the spec selects and preprocess it. Raises InputError."""
        t0 = time.perf_counter()
        frame = select_frame(dicomio.number_of_frames(ds), self.spec)
        # a JPEG 2000 frame may come back smaller than the image: what the preprocessing averages it to
        stored = dicomio.decode_frame(ds, frame, self.limits,
                                      at_least=functools.partial(decode_size, ds=ds, spec=self.spec))
        shape = (int(ds.Rows), int(ds.Columns))  # checked by the decode
        t1 = time.perf_counter()
        prepared = preprocess_pixels(stored, ds, self.spec, frame=frame, shape=shape)
        t2 = time.perf_counter()
        notes = dicomio.pixel_notes(ds, self.limits) + list(prepared.notes)
        return Image(path, ds, prepared, {"read": round(read_ms, 3), "decode": round(_ms(t0, t1), 3),
                                          "preprocess": round(_ms(t1, t2), 3)}, notes)

    def read(self, path: str | os.PathLike) -> Image:
        """:meth:`header` then :meth:`prepare`. Raises InputError."""
        t0 = time.perf_counter()
        ds = self.header(path)
        return self.prepare(ds, Path(path), read_ms=_ms(t0, time.perf_counter()))

    def take(self, path: str | os.PathLike) -> Image | Rejection:
        """An :class:`Image`, or a :class:`Rejection` with its reason; never raises for bad input."""
        path = Path(path)
        pattern = ignored(path, self.ignore)
        if pattern:
            return Rejection(path, True, "ignored", f"ignored (name matches {pattern})")
        ds = None
        t0 = time.perf_counter()
        try:
            ds = self.header(path)
            return self.prepare(ds, path, read_ms=_ms(t0, time.perf_counter()))
        except NotApplicable as exc:
            return Rejection(path, True, exc.code, exc.reason)
        except InputError as exc:
            uid = exc.study_uid or (study_uid(ds) if ds is not None else None)
            return Rejection(path, False, exc.code, str(exc), uid)

    def pool(self, workers: int, *, processes: bool = False) -> "Pool":
        """A pool of ``workers`` threads (or processes) for :meth:`stream` to use again and again
        (``pool=``), so that processes start once, not with every stream. Close it when done (it is
        a context manager); :meth:`Pool.warm` starts its workers before the first stream."""
        return Pool(self, workers, processes)

    def stream(self, paths: Iterable[str | os.PathLike], *, workers: int = 1, ahead: int | None = None,
               processes: bool = False, pool: "Pool | None" = None) -> Iterator[Image | Rejection]:
        """:meth:`take` for every path, in order, with up to ``workers`` threads (or processes) working ahead.

        The caller (inference, usually) consumes one outcome while the pool reads, decodes and
        preprocesses the next ones. At most ``ahead`` (default ``2 * workers``) outcomes are in
        flight, so memory stays bounded whatever the number of paths. ``workers=0`` takes each
        path in the calling thread (no pool). Outcomes come back in input order; bad input is a
        :class:`Rejection` as with :meth:`take`, never an exception.

        Threads (the default): numpy, OpenCV, ONNX Runtime and the compressed-image decoders
        (imagecodecs, :mod:`edgeinfer.dicomio.codecs`) release the GIL, so on two cores inference
        and intake overlap, and two threads decode compressed images at once. pydicom's parsing
        holds the GIL, and the library boundary (:mod:`edgeinfer.dicomio.quiet`) admits one thread
        at a time outside the decoders' calls.

        ``processes``: each worker is a process of its own (spawned: nothing of this process's
        threads or libraries is inherited), so the intake scales with the cores, at about 100 MB
        of memory per worker; images come back without their pixel data (the tensor is what
        travels). A worker that dies (a decoder that crashes on a file) costs that file only: it
        is retried alone in a fresh pool and, if it kills that one too, becomes a Rejection
        (``worker-died``) while the rest go on. Three files in a row doing so mean the workers
        cannot run at all: that raises.

        ``pool``: a :meth:`pool` of this intake to use (``workers`` and ``processes`` are then
        its own), which the stream leaves running for the next one.
        """
        if pool is not None:
            if pool.intake is not self:
                raise ValueError("the pool belongs to another Intake")
            workers = pool.workers
        elif workers <= 0:
            yield from map(self.take, paths)
            return
        depth = max(1, ahead if ahead is not None else 2 * workers)
        it = iter(paths)
        own = pool is None
        pool = pool or Pool(self, workers, processes)
        pending: deque = deque()  # (path, future), in input order
        try:
            for path in it:
                pending.append((path, pool.submit(path)))
                if len(pending) >= depth:
                    break
            while pending:
                path, fut = pending.popleft()
                try:
                    outcome = fut.result()
                    pool.deaths_in_a_row = 0
                except BrokenProcessPool:
                    outcome = pool.after_death(path, pending)
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(nxt)))
                yield outcome
        finally:  # the consumer stopped early (an error, a cancel): drop what was not started
            for _path, fut in pending:
                fut.cancel()
            if own:
                pool.shutdown()


class Pool:
    """The executor behind :meth:`Intake.stream`: threads, or spawned processes that can be replaced."""

    #: files in a row that kill their worker before the pool is deemed unable to run at all
    MAX_DEATHS_IN_A_ROW = 3

    def __init__(self, intake: Intake, workers: int, processes: bool):
        self.intake, self.workers, self.processes = intake, workers, processes
        self.deaths_in_a_row = 0
        self.executor = self._start()

    def _start(self):
        if not self.processes:
            return ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="edgeinfer-intake")
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.intake,))

    def submit(self, path):
        if not self.processes:
            return self.executor.submit(self.intake.take, path)
        try:
            return self.executor.submit(_take_in_worker, path)
        except BrokenProcessPool:  # a worker died while the pool was idle (killed from outside): start afresh
            self.restart()
            return self.executor.submit(_take_in_worker, path)

    def restart(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = self._start()

    def after_death(self, path, pending: deque) -> Image | Rejection:
        """A worker died while ``path`` (the first in line) or another file was being read.

        ``path`` is retried alone in a fresh pool: its outcome, or a Rejection if it kills that
        one too. The files still pending are submitted again to the pool that is left.
        """
        self.restart()
        try:
            outcome = self.submit(path).result()
            self.deaths_in_a_row = 0
        except BrokenProcessPool:
            self.deaths_in_a_row += 1
            if self.deaths_in_a_row >= self.MAX_DEATHS_IN_A_ROW:
                raise EdgeInferError(f"the intake worker processes died on {self.deaths_in_a_row} files in a row; "
                                     "they cannot run here (see the messages above). Run without --processes "
                                     "(intake threads) instead") from None
            self.restart()
            outcome = Rejection(Path(path), False, "worker-died",
                                "the process reading this file died (a decoder crashed on it), so the file was not "
                                "read; check it with a DICOM validator", self._study_of(path))
        retry = [p for p, _f in pending]
        pending.clear()
        pending.extend((p, self.submit(p)) for p in retry)
        return outcome

    def _study_of(self, path) -> str | None:
        """The study of a file that killed its reader, from its header (read here: the checked reader is
        Python, not a decoder), so that its study is not scored as if the file did not exist; None if unreadable."""
        try:
            return study_uid(dicomio.read_dataset(path, self.intake.limits))
        except Exception:  # noqa: BLE001 - the file is already an error of its own; this only attributes it
            return None

    def warm(self) -> None:
        """Start every worker now (a process imports edgeinfer and receives the intake), not on the first files."""
        if self.processes:
            for fut in [self.executor.submit(_ready) for _ in range(self.workers)]:
                fut.result()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


#: the Intake of a worker process (Intake.stream(processes=True))
_WORKER: Intake | None = None


def _init_worker(intake: Intake) -> None:
    global _WORKER
    _WORKER = intake
    tune_allocator()  # as the parent's CLI does
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def _ready() -> int:
    return os.getpid()


def _take_in_worker(path) -> Image | Rejection:
    outcome = _WORKER.take(path)
    if isinstance(outcome, Image):
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in outcome.ds:
                delattr(outcome.ds, keyword)  # the tensor is what travels back, not megabytes of pixels
    return outcome


def prepare_dataset(ds, spec: PreprocessSpec, limits: dicomio.ReadLimits | None = None) -> Prepared:
    """One-off: a header dataset (from the reader, or built in memory) -> :class:`Prepared`."""
    return Intake(spec, limits=limits).prepare(ds).prepared


__all__ = ["DEFAULT_IGNORE", "NO_STUDY_UID", "Image", "Intake", "Pool", "Rejection", "applicability", "discover",
           "ignored", "prepare_dataset", "study_uid"]
