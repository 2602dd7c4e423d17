"""The tables of the DICOM Conformance Statement (``docs/conformance.md``), made from the code that negotiates.

The statement's prose is written by hand; its tables of SOP classes and transfer syntaxes are made here,
from :func:`edgeinfer.node.receiver.scp_contexts` (what the SCP accepts), :func:`edgeinfer.dicomio.decodes`
(which pixel data is decoded) and :data:`edgeinfer.node.outbox.SCU_TRANSFER_SYNTAXES` (what the SR is
sent in), and kept between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` markers. A test checks the
file against this module and a running node against the file:

    .venv/bin/python -m edgeinfer.node.conformance --check docs/conformance.md
    .venv/bin/python -m edgeinfer.node.conformance --write docs/conformance.md   # after a change
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage, SegmentationStorage

STORED_NOT_ANALYSED = "stored, not analysed: the study goes to a human read with that reason"


def _name(uid: str) -> str:
    from pydicom.uid import UID

    from ..dicomio.checks import NEWER_TRANSFER_SYNTAXES

    name = UID(uid).name
    return NEWER_TRANSFER_SYNTAXES.get(uid, name if name != uid else "(named in a newer DICOM edition)")


#: what the node sends in each result SOP class it proposes
_SENT = {ComprehensiveSRStorage: "the triage result of every study version (`--result sr`)",
         SecondaryCaptureImageStorage: "one per heatmap of a flagged study (`--result heatmaps`)",
         SegmentationStorage: "a segmentation bundle: the masks of every study version it segmented (`--result seg`)"}


def tables() -> dict[str, str]:
    """Markdown of each generated table, by marker name."""
    from pydicom.uid import UID

    from ..dicomio import decodes
    from .outbox import SCU_TRANSFER_SYNTAXES
    from .receiver import scp_contexts

    contexts = scp_contexts()
    storage = [(a, ts) for a, ts in contexts if UID(a).name != "Verification SOP Class"]
    verification = [(a, ts) for a, ts in contexts if UID(a).name == "Verification SOP Class"]
    every_ts = storage[0][1]
    assert all(ts == every_ts for _, ts in storage), "the storage SOP classes no longer share one transfer syntax list"

    scp = ["| SOP class | UID | role |", "|---|---|---|"]
    scp += [f"| {_name(a)} | `{a}` | SCP |" for a, _ in verification]
    scp += [f"| {_name(a)} | `{a}` | SCP |" for a, _ in sorted(storage, key=lambda c: _name(c[0]).lower())]

    ts_rows = ["| transfer syntax | UID | accepted | pixel data |", "|---|---|---|---|"]
    for ts in every_ts:
        ts_rows.append(f"| {_name(ts)} | `{ts}` | yes | {'decoded and analysed' if decodes(ts) else STORED_NOT_ANALYSED} |")

    verif_ts = ["| transfer syntax | UID |", "|---|---|"] + [f"| {_name(t)} | `{t}` |" for t in verification[0][1]]

    from .outbox import RESULT_SOP_CLASSES

    syntaxes = ", ".join(f"{_name(t)} (`{t}`)" for t in SCU_TRANSFER_SYNTAXES)
    scu = ["| SOP class | UID | role | transfer syntaxes proposed | sent |", "|---|---|---|---|---|"]
    scu += [f"| {_name(a)} | `{a}` | SCU | {syntaxes} | {_SENT.get(a, 'by a result writer named module:function')} |"
            for a in RESULT_SOP_CLASSES]
    return {"scp-sop-classes": "\n".join(scp), "transfer-syntaxes": "\n".join(ts_rows),
            "verification-transfer-syntaxes": "\n".join(verif_ts), "scu-sop-classes": "\n".join(scu)}


_BLOCK = re.compile(r"(<!-- table:(?P<name>[a-z-]+) -->\n)(?:(?P<body>.*?)\n)?(<!-- /table:(?P=name) -->)", re.S)


def render(text: str) -> str:
    """``text`` with every marked table made afresh; KeyError naming a marker this module does not make."""
    made = tables()
    return _BLOCK.sub(lambda m: m.group(1) + made[m.group("name")] + "\n" + m.group(4), text)


def stale(text: str) -> list[str]:
    """The tables of ``text`` that differ from the code's, and the ones missing from it."""
    made = tables()
    found = {m.group("name"): m.group("body") for m in _BLOCK.finditer(text)}
    return sorted(n for n in made if found.get(n) != made[n])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="the generated tables of the DICOM Conformance Statement")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--check", metavar="FILE", help="exit 1 when FILE's tables differ from the code's")
    g.add_argument("--write", metavar="FILE", help="rewrite FILE's tables from the code")
    args = p.parse_args(argv)
    path = Path(args.check or args.write)
    text = path.read_text(encoding="utf-8")
    if args.check:
        bad = stale(text)
        if bad:
            print(f"{path}: table(s) {', '.join(bad)} differ from what the node negotiates; run "
                  f"python -m edgeinfer.node.conformance --write {path}", file=sys.stderr)
            return 1
        return 0
    from .._io import atomic_write

    atomic_write(path, render(text).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
