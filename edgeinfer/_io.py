"""File helpers shared by the runtime and the workstation tools.

Every file edgeinfer writes for a user (worklists, reports, manifests, caches, previews,
plans) goes through :func:`atomic_write`, and every JSON file it trusts (manifests,
records, caches) is read through :func:`read_json`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .errors import JsonFileError, OutputPathError

#: default cap on a trusted JSON file's size; a manifest is a few kB
MAX_JSON_BYTES = 1 << 20
#: default cap on nesting (objects and arrays) in a trusted JSON file
MAX_JSON_DEPTH = 32


def cache_root() -> Path:
    """The one cache root: ``$EDGEINFER_CACHE``, else ``$XDG_CACHE_HOME/edgeinfer``, else ``~/.cache/edgeinfer``.

    Speed probes (``speed/``), calibration tensors (``calibration/``) and TensorRT timing caches
    (``tensorrt/``) live under it. Everything there is a hint: deleting it costs time, never a result.
    """
    if os.environ.get("EDGEINFER_CACHE"):
        return Path(os.environ["EDGEINFER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeinfer"


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or create inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never half of it.

    The bytes go to a temporary file in the same folder, are fsync'd, renamed into place, and
    the folder is fsync'd so the rename survives a power cut. A failure (full disk, ``ulimit
    -f``, a read-only folder) removes the temporary file, leaves any previous file as it was,
    and raises ``OSError``.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it 0600; bundles and caches are read by service users too
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return path


def staging_dir(target: str | os.PathLike, purpose: str = "staging") -> Path:
    """A new hidden folder next to ``target`` (same file system), to build a folder that
    :func:`publish_dir` then renames into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{purpose}-", dir=target.parent))


def publish_dir(staged: str | os.PathLike, target: str | os.PathLike, *, replace: bool) -> Path:
    """Make the folder ``staged`` (from :func:`staging_dir`) durable and rename it to ``target``.

    Readers see the old folder or the new one, never a mix. An existing ``target`` is swapped
    out by rename (only if ``replace``; else ``FileExistsError``) and deleted afterwards; if the
    swap fails, the old folder is renamed back.
    """
    staged, target = Path(staged), Path(target)
    for root, _, files in os.walk(staged):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)
    if not target.exists():
        os.rename(staged, target)
    else:
        if not replace:
            raise FileExistsError(target)
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / "x")
        try:
            os.rename(staged, target)
        except OSError:
            os.rename(old / "x", target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(target.parent)
    return target


def json_text(obj: Any) -> str:
    """The one JSON rendering for files and stdout: indented, strict (no NaN/Infinity tokens)."""
    return json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n"


def write_json(path: str | os.PathLike, obj: Any, mode: int = 0o644) -> Path:
    """Render ``obj`` with :func:`json_text` (before touching the file) and write it atomically."""
    return atomic_write(path, json_text(obj), mode)


def check_output_path(path: str | os.PathLike, *, option: str = "--output",
                      inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse, before any work, an output path that could not be written or would destroy an input.

    Refused: a folder, a device or pipe (``/dev/full``), a path under a file, a folder that
    cannot be written (probed by creating a file: permission bits say nothing for root, a
    read-only mount does), and any of ``inputs`` (the same file, by device and inode).
    Raises :class:`OutputPathError`; returns the path.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(f"{option} {p} is a folder; name a file in it, e.g. {p / 'worklist.json'}")
    if p.exists() and not p.is_file():
        raise OutputPathError(f"{option} {p} is not a regular file (a device, pipe or socket); name a regular file")
    if p.exists():
        st = p.stat()
        for item in inputs:
            try:
                other = os.stat(item)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                raise OutputPathError(f"{option} {p} is one of the inputs ({item}): writing there would destroy it; "
                                 "name a file outside the inputs")
    folder = p.parent
    while not folder.exists():
        if folder.is_symlink():
            raise OutputPathError(f"{option} {p}: {folder} is a broken link; name a path in an existing folder")
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"{option} {p}: {folder} is a file, not a folder; name a path in a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgeinfer-probe-", dir=folder)
    except OSError as exc:
        raise OutputPathError(f"{option} {p}: cannot create files in {folder} ({exc.strerror or exc}); "
                         "choose a writable folder") from None
    os.close(fd)
    os.unlink(probe)
    return p


def emit_json(obj: Any, dest: str | os.PathLike) -> None:
    """``-``: print to stdout; anything else: :func:`write_json`. The one JSON output of every command."""
    if str(dest) == "-":
        sys.stdout.write(json_text(obj))
    else:
        write_json(dest, obj)


def _refuse_constant(token: str):
    raise ValueError(f"non-finite number {token} (JSON has no NaN or Infinity)")


def _depth(obj: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in node)
    return deepest


def non_finite_at(obj: Any) -> str | None:
    """JSON-pointer-like path of the first NaN or infinite float in ``obj``, or None (no recursion)."""
    stack = [(obj, "")]
    while stack:
        node, at = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return at.lstrip("/")
        if isinstance(node, dict):
            stack.extend((v, f"{at}/{k}") for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{at}/{i}") for i, v in enumerate(node))
    return None


def parse_json(text: str | bytes, *, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Strict JSON: NaN, Infinity and overflowing numbers refused; nesting capped. Raises JsonFileError."""
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise JsonFileError(f"{where}: nested too deeply to be read (the limit is {max_depth} levels); "
                            "this is not a file edgeinfer wrote") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise JsonFileError(f"{where}: not valid JSON ({exc})") from None
    bad = non_finite_at(obj)  # e.g. 1e999, which the parser turns into inf
    if bad is not None:
        raise JsonFileError(f"{where}: the number at /{bad} is too large to be finite; JSON numbers must be finite")
    depth = _depth(obj)
    if depth > max_depth:
        raise JsonFileError(f"{where}: nested {depth} levels deep, more than the {max_depth} allowed; "
                            "this is not a file edgeinfer wrote")
    return obj


def read_json(path: str | os.PathLike, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH,
              what: str = "JSON file") -> Any:
    """Read a JSON file edgeinfer trusts: size-capped before reading, then :func:`parse_json`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise JsonFileError(f"{what} {path} is {size:,} bytes, more than the {max_bytes:,} allowed")
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise JsonFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # grew while we read, or not a regular file
        raise JsonFileError(f"{what} {path} is more than the {max_bytes:,} bytes allowed")
    return parse_json(data, where=f"{what} {path}", max_depth=max_depth)
