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
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import UsageError


@dataclass(frozen=True)
class ResultObject:
    """One DICOM object a writer made: its SOP Instance UID and its Part 10 bytes."""

    sop_uid: str
    data: bytes
    kind: str = "sr"


#: (study, sources, *, bundle, run, version) -> the objects to send
Writer = Callable[..., Sequence[ResultObject]]


def write_sr(study: dict, sources, *, bundle: dict, run: dict, version: int) -> list[ResultObject]:
    """The TID 1500 Comprehensive SR of the study version (:func:`edgeinfer.dicomout.sr.build_sr`)."""
    from .sr import build_sr, sr_bytes

    ds = build_sr(study, sources, bundle=bundle, run=run, version=version)
    return [ResultObject(str(ds.SOPInstanceUID), sr_bytes(ds), "sr")]


#: the writers the node knows by name
WRITERS: dict[str, Writer] = {"sr": write_sr}


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
