"""The worklist: its priorities, its one order, and the document ``triage --output`` writes and ``/worklist``
serves. Light on purpose (no numpy, no model): the DICOM writers and the node's HTTP side import it."""
from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from .bundle import Bundle

#: a study the model could not decide: ranked above the lowest priority, and read by a human
INDETERMINATE = "INDETERMINATE"


# --- the records, written down (edgeinfer/schema/worklist-v1.schema.json says the same for JSON readers) ---------
class ImageRecord(TypedDict, total=False):
    """One image of a study on the worklist, as triage made it and the node stores it."""

    path: str                       # the file read (the node: its hash-named spool file)
    sop_instance_uid: str
    series_uid: str
    modality: str
    status: str                     # "ok" (scored) or "indeterminate" (see reason)
    score: float | None             # the task's image score, 0..1; None when not scored
    reason: str                     # why it was not scored
    label_scores: dict[str, float | None]   # classification: one probability per bundle label
    window: dict                    # the window applied: source, center, width, function (or why others were rejected)
    frame: int                      # the frame used of a multi-frame image
    inverted: bool                  # MONOCHROME1 inverted to the model's polarity
    source_shape: list[int]         # the stored image's rows, columns
    notes: list[str]                # what the reader noticed but accepted
    timings_ms: dict[str, float | None]     # read (with decode), preprocess, infer, total
    heatmaps: list[dict]            # flagged studies: per urgent label at/above the operating point, the
                                    # class-activation map's grid, its peak on the image and the pixel spacing


class StudyRecord(TypedDict, total=False):
    """One study on the worklist: its priority and score, its images, the model that scored it."""

    study_uid: str
    priority: str                   # a bundle priority, or INDETERMINATE (a human read)
    score: float | None             # the study score (max or mean of its image scores); None: not scored
    modality: str
    images: list[ImageRecord]
    failed_images: list[str]        # files of the study that were rejected before scoring
    model: dict                     # bundle, bundle_version, precision, backend (and the artifact's sha256, provider)
    reason: str                     # why the study needs a human read
    version: int                    # the node: which version of the study this result is
    received_last: float            # the node: when its last instance arrived (seconds since the epoch)
    timings_ms: dict[str, float | None]
    volumes_ml: dict[str, float]    # segmentation: the volume of each label's mask, mL (it sets the priority)
    segmentation: dict              # segmentation: the series used, voxel sizes, components, notes and the mask,
                                    # packed (edgeinfer/volume_triage.py), from which the SEG is built


#: the keys every study and image record has (the schema's "required")
STUDY_REQUIRED = ("study_uid", "priority", "score", "modality", "images", "failed_images", "model")
IMAGE_REQUIRED = ("path", "status", "score")


def volumes_text(study: dict) -> str:
    """A segmentation study's volumes for people, e.g. "hemorrhage 12.4 mL"; "" for a study without."""
    volumes = study.get("volumes_ml")
    if not isinstance(volumes, dict):
        return ""
    return ", ".join(f"{label} {ml:.1f} mL" if ml >= 0.1 else f"{label} {ml:.2f} mL"
                     for label, ml in volumes.items() if isinstance(ml, (int, float)) and not isinstance(ml, bool))


def priority_order(bundle: "Bundle") -> list[str]:
    """Worklist order: the bundle's priorities, with INDETERMINATE just above the lowest."""
    names = [p["name"] for p in bundle.manifest["triage"]["priorities"]]
    return names[:-1] + [INDETERMINATE] + names[-1:]


def flagged_priorities(bundle: "Bundle") -> frozenset[str]:
    """The priorities that flag a study for a read before the others: every one above INDETERMINATE (a
    heatmap is made for these studies' images, and the pointing game counts them)."""
    order = priority_order(bundle)
    return frozenset(order[:order.index(INDETERMINATE)])


def sort_studies(studies: list[dict], bundle: "Bundle") -> list[dict]:
    """``studies`` in worklist order (in place, and returned): priority, then the higher score, then the UID."""
    order = {name: i for i, name in enumerate(priority_order(bundle))}
    studies.sort(key=lambda s: (order.get(s["priority"], len(order)),
                                -(s["score"] if s["score"] is not None else -1.0), s["study_uid"]))
    return studies


def worklist_document(results: list[dict], *, bundle: "Bundle", run: dict, window: dict | None = None) -> dict:
    """The node's live worklist, in the shape ``edgeinfer triage --output`` writes: the studies of ``results``
    (the node's result records) in worklist order, and the summary of what it lists; ``window``: which part
    of the node's results it is."""
    from . import __version__

    studies = sort_studies([r["study"] for r in results if r.get("study")], bundle)
    skipped = [x for r in results for x in r.get("skipped", [])]
    not_applicable = sorted((r["not_applicable"] for r in results if r.get("not_applicable")),
                            key=lambda n: n["study_uid"])
    errors = [x for r in results for x in r.get("errors", [])]
    counts = {p: 0 for p in priority_order(bundle)}
    for s in studies:
        counts[s["priority"]] = counts.get(s["priority"], 0) + 1
    n_img = sum(len(s["images"]) for s in studies)
    return {"edgeinfer": __version__, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "bundle": bundle.summary(), "run": run, **({"window": window} if window else {}),
            "studies": studies, "not_applicable": not_applicable, "skipped": skipped, "errors": errors,
            "summary": {"files": n_img + len(skipped) + len(errors), "images_scored": n_img, "studies": len(studies),
                        "by_priority": counts, "not_applicable": len(not_applicable), "skipped": len(skipped),
                        "errors": len(errors)}}
