"""Result writers: what the node files into a study for each study version, by name.

A writer takes the study's result (the worklist's study record), the source headers kept at receive
time, the bundle summary, the run record and the version, and returns the DICOM objects to send: a list
of :class:`ResultObject` (SOP Instance UID, Part 10 bytes). The node stores each in its spool, makes one
outbox item per object and destination in the same transaction as the result, and a study version
counts as delivered when all of them are. A new object type is a module of this package and one entry
in :data:`WRITERS`; a writer outside the package is named ``module:function`` (``--result``).
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import EdgeInferError, SRError, UsageError

log = logging.getLogger("edgeinfer.dicomout")


@dataclass(frozen=True)
class ResultObject:
    """One DICOM object a writer made: its SOP Instance UID and its Part 10 bytes."""

    sop_uid: str
    data: bytes
    kind: str = "sr"
    #: its Series Instance UID (what an SR referencing it lists as evidence)
    series_uid: str = ""


#: (study, sources, *, bundle, run, version) -> the objects to send
Writer = Callable[..., Sequence[ResultObject]]


def write_sr(study: dict, sources, *, bundle: dict, run: dict, version: int,
             made: Sequence[ResultObject] = ()) -> list[ResultObject]:
    """The TID 1500 Comprehensive SR of the study version (:func:`edgeinfer.dicomout.sr.build_sr`), referencing
    the heatmap images ``made`` beside it."""
    from .sr import build_sr, sr_bytes

    seg = next(((o.series_uid, o.sop_uid) for o in made if o.kind == "seg"), None)
    ds = build_sr(study, sources, bundle=bundle, run=run, version=version,
                  heatmaps=[(o.series_uid, o.sop_uid) for o in made if o.kind == "heatmap"], segmentation=seg)
    return [ResultObject(str(ds.SOPInstanceUID), sr_bytes(ds), "sr")]


def write_heatmaps(study: dict, sources, *, bundle: dict, run: dict, version: int) -> list[ResultObject]:
    """One Secondary Capture per heatmap of a flagged study (:func:`edgeinfer.dicomout.sc.build_heatmap_scs`);
    none for a study without heatmaps. Evidence must not cost the result: when they cannot be made (an image
    that cannot be read again), none are, the reason is logged (UIDs only) and the SR goes without them."""
    from .sc import build_heatmap_scs, sc_bytes

    try:
        return [ResultObject(str(ds.SOPInstanceUID), sc_bytes(ds), "heatmap", str(ds.SeriesInstanceUID))
                for ds in build_heatmap_scs(study, sources, bundle=bundle, run=run, version=version)]
    except SRError as exc:
        log.error("study %s: no heatmap images (%s); its SR goes without them", study.get("study_uid", "?"), exc)
        return []


def write_seg(study: dict, sources, *, bundle: dict, run: dict, version: int) -> list[ResultObject]:
    """The DICOM SEG of a segmentation study (:func:`edgeinfer.dicomout.seg.build_seg`) from the mask its record
    carries, one frame per scored slice in the record's order; none for a study without one (a classification
    result, or a volume the model could not run on). A SEG that cannot be built is an error, as for the SR:
    the volumes the SR reports reference it."""
    from ..segmentation import unpack_mask
    from .seg import build_seg, seg_bytes

    seg = study.get("segmentation") or {}
    if not seg.get("mask"):
        return []
    try:
        stack = unpack_mask(seg["mask"])
    except ValueError as exc:
        raise SRError(f"study {study.get('study_uid', '?')}: the record's mask cannot be read ({exc})") from None
    labels = list(seg.get("labels") or [])
    by_uid = {str(ds.get("SOPInstanceUID", "")): ds for ds in sources}
    order = [i.get("sop_instance_uid") for i in study.get("images") or [] if i.get("status") == "ok"]
    if len(labels) != stack.shape[0] or len(order) != stack.shape[1] or not all(u in by_uid for u in order):
        raise SRError(f"study {study.get('study_uid', '?')}: the mask ({list(stack.shape)}, labels {len(labels)}) "
                      f"does not match the {len(order)} scored slices and their {len(by_uid)} source headers")
    ds = build_seg({lab: stack[k] for k, lab in enumerate(labels)}, [by_uid[u] for u in order], bundle=bundle,
                   version=version, keep_empty_frames=bool(seg.get("keep_empty_frames", True)))
    return [ResultObject(str(ds.SOPInstanceUID), seg_bytes(ds), "seg", str(ds.SeriesInstanceUID))]


#: the writers the node knows by name
WRITERS: dict[str, Writer] = {"sr": write_sr, "heatmaps": write_heatmaps, "seg": write_seg}
#: what the node and ``triage --output-dicom`` write by default: the SR, and the heatmap images or the SEG it
#: references (each writer makes nothing for a study without them)
DEFAULT_RESULTS = ("sr", "heatmaps", "seg")


def resolve(name: str) -> Writer:
    """The writer called ``name``: a key of :data:`WRITERS`, or ``module:function``; UsageError if none."""
    if name in WRITERS:
        return WRITERS[name]
    module, _, attr = name.partition(":")
    if not attr:
        raise UsageError(f"result writer {name!r}: not one of {', '.join(sorted(WRITERS))}, and not module:function")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"result writer {name!r}: cannot import it ({exc.__class__.__name__}); check the module "
                         "is on the node's Python path and names that function") from None
    if not callable(fn):
        raise UsageError(f"result writer {name!r} is not a function")
    return fn


def write_results(names: Sequence[str], study: dict, sources, *, bundle: dict, run: dict, version: int
                  ) -> list[ResultObject]:
    """Every object the writers called ``names`` make for one study version. An EdgeInferError (sources naming
    two patients...) passes through; any other failure is an SRError naming the writer and the exception's
    class only (a header value highdicom refuses may be quoted in its message)."""
    objects: list[ResultObject] = []
    for name in sorted(names, key=lambda n: n == "sr"):   # the SR last: it references what the others made
        try:
            extra = {"made": tuple(objects)} if name == "sr" else {}
            objects += resolve(name)(study, sources, bundle=bundle, run=run, version=version, **extra)
        except EdgeInferError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise SRError(f"the result {name!r} could not be built from the sources' headers "
                          f"({exc.__class__.__name__})") from None
    return objects


#: an SR source's header is read from the first bytes of its spool file (groups up to 0040)
_SOURCE_HEAD_BYTES = 8 << 20


def source_header(path: str, kept: bytes | None = None):
    """The patient, study and image header (up to group 0040) of a received instance, without its pixel
    data: what an SR copies and references. From ``kept``, the header the receiver kept, else from the
    start of its spool file (an instance stored before headers were kept). Read for every instance of the
    study, so that the SR names every image, the ones the model could not read included. None when unreadable."""
    from ..dicomio.parse import routing_header
    from ..dicomio.quiet import _library_quiet

    try:
        if kept is not None:
            data = kept
        else:
            with open(path, "rb") as f:
                data = f.read(_SOURCE_HEAD_BYTES)
        with _library_quiet():
            ds = routing_header(data)
            return ds if str(ds.get("SOPInstanceUID", "") or "").strip() else None
    except Exception:  # noqa: BLE001 - counted by the caller; no value is shown
        return None
