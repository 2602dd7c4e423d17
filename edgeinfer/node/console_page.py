"""The console page at ``/``: the worklist as a radiographer at the console reads it.

Server-side HTML (a Jinja2 template, autoescaped; no JavaScript): one row per study of the node's
default worklist window, most urgent first, with its priority, score, time since its last image arrived,
modality, image count, the volumes a segmentation model measured, a thumbnail of its strongest heatmap (a flagged study; it opens the full image from
``/heatmap/...``), Study Instance UID and the reason when a human must read it; the page reloads
itself every few seconds. It carries no patient identity unless the HTTP side is HTTPS with a login (``--http-tls-cert``/``--http-tls-key`` and ``--http-auth``): then
it shows each study's patient name and accession number (from the header kept at receive time), else it says
why it does not.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..worklist import volumes_text

REFRESH_S = 5
#: the long side of a heatmap thumbnail on the page, in pixels
THUMB = 96
_TEMPLATES = Path(__file__).with_name("templates")
_env = None


def _environment():
    global _env
    if _env is None:
        from jinja2 import Environment, FileSystemLoader, select_autoescape

        _env = Environment(loader=FileSystemLoader(str(_TEMPLATES)), autoescape=select_autoescape(["html"]),
                           trim_blocks=True, lstrip_blocks=True)
    return _env


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 90:
        return f"{s} s"
    if s < 5400:
        return f"{round(s / 60)} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _first_heatmap(study_uid: str, study: dict) -> dict | None:
    """Link and thumbnail of the study's strongest heatmap (``/heatmap/...``), or None."""
    from urllib.parse import quote

    best = None
    for img in study.get("images") or []:
        for heat in img.get("heatmaps") or []:
            if best is None or heat["score"] > best[1]["score"]:
                best = (img, heat)
    if best is None:
        return None
    img, heat = best
    href = (f"/heatmap/{quote(study_uid)}/{quote(str(img.get('sop_instance_uid', '')))}/{quote(heat['label'], safe='')}"
            f"?v={int(study.get('version') or 1)}")   # a new study version is a new URL: the browser may cache
    return {"href": href, "thumb": f"{href}&size={THUMB}", "label": heat["label"]}


def render(view, now: float | None = None) -> str:
    """The page for ``view`` (a NodeView: its worklist window, readiness and health)."""
    now = time.time() if now is None else now
    doc = view.worklist()
    reasons = [str(r) for r in view.readiness()]
    bundle = doc.get("bundle", {})
    studies = []
    for s in doc.get("studies", []):
        score = s.get("score")
        uid = str(s.get("study_uid", ""))
        received = s.get("received_last")
        studies.append({
            "priority": str(s.get("priority", "")), "study_uid": uid,
            "study_uid_short": uid if len(uid) <= 28 else f"...{uid[-24:]}",
            "score_text": "-" if score is None else f"{score:.2f}",
            "volume_text": volumes_text(s) or "-",
            "age_text": _age(now - received if isinstance(received, (int, float)) else None),
            "modality": str(s.get("modality", "")), "n_images": len(s.get("images", [])) + len(s.get("failed_images", [])),
            "reason": str(s.get("reason", "")), "heatmap": _first_heatmap(uid, s),
        })
    hidden = getattr(view, "identity_hidden", lambda: "this HTTP side has no TLS and no login")()
    ids = view.identity([s["study_uid"] for s in studies]) if hidden is None else {}
    for s in studies:
        s["identity"] = ids.get(s["study_uid"], {"patient_name": "", "accession": ""})
    counts = doc.get("summary", {}).get("by_priority", {})
    urgent = [f"{n} {p}" for p, n in counts.items() if n and p != list(counts)[-1]] if counts else []
    window = doc.get("window", {})
    phantom = str(bundle.get("name", "")).startswith("phantom")
    return _environment().get_template("console.html").render(
        refresh_s=REFRESH_S, thumb=THUMB, ae_title=str(getattr(getattr(view, "config", None), "ae_title", "")),
        ready=not reasons, reasons=reasons, bundle_name=bundle.get("name", ""), bundle_version=bundle.get("version", ""),
        counts_title=", ".join(urgent) or "no urgent study", studies=studies,
        known=("STAT", "URGENT", "INDETERMINATE", "ROUTINE"),
        identity_why=hidden, show_identity=hidden is None,
        clinical_warning=("The embedded phantom model is for demonstrating and testing the pipeline: not for clinical "
                          "use.") if phantom else "",
        not_applicable=len(doc.get("not_applicable", [])), truncated=bool(window.get("truncated")),
        in_window=window.get("studies_in_window"), window_h=24, created=doc.get("created", ""))
