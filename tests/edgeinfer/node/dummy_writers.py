"""A result writer from outside edgeinfer, for the node's tests: a second SR per study version (other UIDs), as an
SC or SEG writer will add a second object. The node loads it as ``--result dummy_writers:second_sr``."""
from __future__ import annotations

from edgeinfer.dicomout import ResultObject, build_sr, sr_bytes


def second_sr(study, sources, *, bundle, run, version):
    ds = build_sr(study, sources, bundle=bundle, run=run, version=version, uid_prefix="1.2.826.0.1.3680043.10.543.")
    return [ResultObject(str(ds.SOPInstanceUID), sr_bytes(ds), "sr")]
