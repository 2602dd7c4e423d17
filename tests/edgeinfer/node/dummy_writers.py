"""A result writer from outside edgeinfer, for the node's tests: a second SR per study version (other UIDs), as an
SC or SEG writer will add a second object. The node loads it as ``--result dummy_writers:second_sr``."""
from __future__ import annotations

from edgeinfer.dicomout import ResultObject, build_sr, sr_bytes


def second_sr(study, sources, *, bundle, run, version):
    ds = build_sr(study, sources, bundle=bundle, run=run, version=version, uid_prefix="1.2.826.0.1.3680043.10.543.")
    return [ResultObject(str(ds.SOPInstanceUID), sr_bytes(ds), "sr")]


def dies_once(study, sources, *, bundle, run, version):
    """Kills its process at the first call of a test (a library crash), then builds as ``second_sr``."""
    import os
    from pathlib import Path

    marker = Path(os.environ["EDGEINFER_TEST_MARKER"])
    if not marker.exists():
        marker.write_text("died")
        os._exit(3)
    return second_sr(study, sources, bundle=bundle, run=run, version=version)


def dies_always(study, sources, *, bundle, run, version):
    import os

    os._exit(3)


def hangs(study, sources, *, bundle, run, version):
    import time

    time.sleep(600)
