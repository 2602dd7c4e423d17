"""The spool: received instances stored as received, durably, privately, under names no sender controls."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from .._io import atomic_write

#: patient images and results: readable by the node's user only (folders 0700, files 0600)
DIR_MODE, FILE_MODE = 0o700, 0o600


def content_digest(data: bytes) -> str:
    """sha256 of an instance's bytes as received: what "the same instance" means to the node."""
    return hashlib.sha256(data).hexdigest()


class Spool:
    """``ROOT/instances/ab/<sha256 of the SOP Instance UID>-<content digest>.dcm`` and ``ROOT/results/...``.

    File names are hashes, so a SOP Instance UID of ``../../x`` or one with letters never
    becomes a path; the content digest in the name means two different instances sent with one
    SOP Instance UID never land on the same file, so an acknowledged file is never overwritten.
    Every write is atomic (temporary file, fsync, rename, fsync of the folder), every file is
    0600 and every folder 0700: the spool holds patient data.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.instances = self.root / "instances"
        self.results = self.root / "results"
        for d in (self.root, self.instances, self.results):
            d.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(d, DIR_MODE)  # a spool made before the node kept it private

    @staticmethod
    def key(uid: str) -> str:
        return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]

    def instance_path(self, sop_uid: str, digest: str) -> Path:
        k = self.key(sop_uid)
        return self.instances / k[:2] / f"{k}-{digest[:16]}.dcm"

    def _private_folder(self, path: Path) -> None:
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

    def store_instance(self, sop_uid: str, digest: str, data: bytes) -> Path:
        path = self.instance_path(sop_uid, digest)
        self._private_folder(path)
        return atomic_write(path, data, mode=FILE_MODE)

    def store_result(self, study_uid: str, version: int, data: bytes) -> Path:
        path = self.results / f"{self.key(study_uid)}-v{version}.dcm"
        self._private_folder(path)
        return atomic_write(path, data, mode=FILE_MODE)

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
