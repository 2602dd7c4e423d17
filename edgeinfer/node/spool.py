"""The spool: received instances stored as received, durably, under names no sender controls."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from .._io import atomic_write


class Spool:
    """``ROOT/instances/ab/<sha256 of the SOP Instance UID>.dcm`` and ``ROOT/results/...``.

    File names are hashes, so a SOP Instance UID of ``../../x`` or one with letters never
    becomes a path. Every write is atomic (temporary file, fsync, rename, fsync of the folder).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.instances = self.root / "instances"
        self.results = self.root / "results"
        for d in (self.instances, self.results):
            d.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(uid: str) -> str:
        return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]

    def instance_path(self, sop_uid: str) -> Path:
        k = self.key(sop_uid)
        return self.instances / k[:2] / f"{k}.dcm"

    def store_instance(self, sop_uid: str, data: bytes) -> Path:
        return atomic_write(self.instance_path(sop_uid), data)

    def store_result(self, study_uid: str, version: int, data: bytes) -> Path:
        return atomic_write(self.results / f"{self.key(study_uid)}-v{version}.dcm", data)

    def free_mb(self) -> float:
        return shutil.disk_usage(self.root).free / 2**20

    def remove_temporary(self) -> int:
        """Delete temporary files a crash left behind (the atomic writer's ``.*.tmp``); returns how many."""
        n = 0
        for p in self.root.rglob(".*.tmp"):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
        return n
