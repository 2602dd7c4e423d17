"""Spool retention: a study's instances leave the spool once its result is delivered, never before.

A study's instance files are deleted when it is scored, every result of it is sent (no outbox item
pending or dead-lettered), and its current result is ``retain_hours`` old. Under disk pressure (free
space below ``min_free_mb`` plus a margin) the age is waived and delivered studies go oldest first,
so that the node frees space before it has to refuse instances. A study still receiving, queued,
being scored or waiting for its SR to reach PACS is never touched.

The state keeps the instances' rows (``purged`` set): the same instance sent again is still a
duplicate (Success, nothing re-scored), and a new instance of the study starts a new version made
from the instances on disk. The row is marked before the file is deleted, so a crash in between
leaves a file the next start deletes (:meth:`Retention.remove_leftovers`), never a row whose file is
gone without the state knowing.
"""
from __future__ import annotations

import logging
import os
import time

from .loop import Loop

log = logging.getLogger("edgeinfer.node")
audit = logging.getLogger("edgeinfer.audit")

#: free space (MB) above ``min_free_mb`` under which delivered studies are deleted whatever their age
PRESSURE_MARGIN_MB = 256


class Retention(Loop):
    name = "edgeinfer-retention"
    what = "spool retention"

    def __init__(self, config, state, spool, metrics=None):
        super().__init__()
        self.config, self.state, self.spool, self.metrics = config, state, spool, metrics
        retain_s = float(config.retain_hours) * 3600
        self.retain_s = retain_s
        self.interval = min(60.0, max(1.0, retain_s / 20))   # a pass a minute, more often for short retention

    def under_pressure(self) -> bool:
        return self.spool.free_mb() < self.config.min_free_mb + PRESSURE_MARGIN_MB

    def step(self, now: float | None = None) -> bool:
        """One batch: True when it deleted something (the loop goes on at once)."""
        now = time.time() if now is None else now
        pressure = self.under_pressure()
        studies = self.state.purgeable(result_before=now if pressure else now - self.retain_s)
        purged = 0
        for study_uid in studies:
            paths = self.state.mark_purged(study_uid, now=now)
            for path in paths:
                _unlink(path)
            if paths:
                purged += len(paths)
                audit.info("study %s: %d instance(s) deleted from the spool (%s)", study_uid, len(paths),
                           "disk pressure, result delivered" if pressure else
                           f"result delivered, older than {self.config.retain_hours:g} h")
            if pressure and not self.under_pressure():
                break
        if purged and self.metrics is not None:
            self.metrics.spool_purged_total.inc(purged)
        return purged > 0

    def remove_leftovers(self) -> int:
        """Delete files of instances the state marks purged (a crash between the mark and the delete)."""
        return sum(_unlink(p) for p in self.state.purged_paths())


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.error("could not delete a purged spool file (%s); it stays until the next start", exc.strerror or exc)
        return False
