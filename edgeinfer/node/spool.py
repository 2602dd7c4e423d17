"""The spool: received instances stored as received, durably, privately, under names no sender controls."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from .._io import atomic_write

#: patient images and results: readable by the node's user only (folders 0700, files 0600) ...
DIR_MODE, FILE_MODE = 0o700, 0o600
#: ... or also by one group an operator names (``spool_group``), e.g. a backup or archive agent's
GROUP_DIR_MODE, GROUP_FILE_MODE = 0o750, 0o640


def content_digest(data: bytes) -> str:
    """sha256 of an instance's bytes as received: what "the same instance" means to the node."""
    return hashlib.sha256(data).hexdigest()


class Spool:
    """``ROOT/instances/ab/<sha256 of the SOP Instance UID>-<content digest>.dcm`` and
    ``ROOT/results/<sha256 of the result's SOP Instance UID>.dcm``.

    File names are hashes, so a SOP Instance UID of ``../../x`` or one with letters never
    becomes a path; the content digest in the name means two different instances sent with one
    SOP Instance UID never land on the same file, so an acknowledged file is never overwritten.
    Every write is atomic (temporary file, fsync, rename, fsync of the folder), every file is
    0600 and every folder 0700: the spool holds patient data. With ``group`` (a group name), files
    are 0640 and folders 0750, owned by that group: readable by its members, writable by the node only.
    """

    def __init__(self, root: str | os.PathLike, group: str | None = None):
        self.root = Path(root)
        self.instances = self.root / "instances"
        self.results = self.root / "results"
        self.gid = _group_id(group) if group else None
        self.dir_mode, self.file_mode = (GROUP_DIR_MODE, GROUP_FILE_MODE) if group else (DIR_MODE, FILE_MODE)
        for d in (self.root, self.instances, self.results):
            d.mkdir(mode=self.dir_mode, parents=True, exist_ok=True)
            self._own(d, self.dir_mode)  # a spool made before the node kept it private

    @staticmethod
    def key(uid: str) -> str:
        return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]

    def instance_path(self, sop_uid: str, digest: str) -> Path:
        k = self.key(sop_uid)
        return self.instances / k[:2] / f"{k}-{digest[:16]}.dcm"

    def _own(self, path: Path, mode: int) -> None:
        if self.gid is not None:
            os.chown(path, -1, self.gid)
        os.chmod(path, mode)

    def _private_folder(self, path: Path) -> None:
        if not path.parent.is_dir():
            path.parent.mkdir(mode=self.dir_mode, parents=True, exist_ok=True)
            self._own(path.parent, self.dir_mode)

    def _store(self, path: Path, data: bytes) -> Path:
        self._private_folder(path)
        atomic_write(path, data, mode=self.file_mode)
        if self.gid is not None:
            os.chown(path, -1, self.gid)
        return path

    def store_instance(self, sop_uid: str, digest: str, data: bytes) -> Path:
        return self._store(self.instance_path(sop_uid, digest), data)

    def store_result(self, sop_uid: str, data: bytes) -> Path:
        """A result object (SR, SC, SEG) under a hash of its SOP Instance UID (deterministic per study version,
        so a result made again after a crash is the same file)."""
        return self._store(self.results / f"{self.key(sop_uid)}.dcm", data)

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


def _group_id(name: str) -> int:
    import grp

    from ..errors import UsageError

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise UsageError(f"spool_group {name!r}: no such group on this machine; create it (groupadd) or leave "
                         "spool_group out (the spool is then readable by the node's user only)") from None
