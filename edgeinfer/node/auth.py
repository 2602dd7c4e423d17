"""Who may read the console: users from a file (``--http-auth FILE``), HTTP Basic authentication, failed
logins rate-limited and audited.

The file holds one ``user:hash`` line per user (``#`` comments and blank lines allowed), each hash made by
:func:`hash_password` (``edgeinfer http-user FILE USER`` writes one): scrypt from the standard library
(n=2**14, r=8, p=1, a 16-byte random salt), ``scrypt$n$r$p$salt$key`` in hex. Passwords are never stored,
logged or echoed; the file must not be readable by others (like a private key).

:class:`Guard` answers each request: allowed (and as whom), refused (401, with a ``WWW-Authenticate``
challenge), or, after :data:`MAX_FAILURES` failures from one address within :data:`WINDOW_S` seconds, refused
without looking (429) until that window has passed. Every failure and every lock-out is an audit line naming
the address and the user name tried, never the password. Comparisons take constant time.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import stat
import threading
import time
from collections import deque
from pathlib import Path

from ..errors import UsageError

audit = logging.getLogger("edgeinfer.audit")

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
#: failed logins from one address within WINDOW_S seconds before it is refused without a check
MAX_FAILURES, WINDOW_S = 5, 60.0
REALM = "edgeinfer console"


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = secrets.token_bytes(16) if salt is None else salt
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${key.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, key = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(key) // 2)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), key)


def _valid_user(name: str) -> bool:
    return bool(name) and len(name) <= 64 and all(c.isalnum() or c in "._-@" for c in name)


def load_users(path: str | os.PathLike) -> dict[str, str]:
    """``user -> hash`` from the file; UsageError naming the file and the line (never its content) when a
    line is not ``user:scrypt$...``, or when others may read it."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--http-auth {p}: cannot read it ({exc.__class__.__name__}); make it with "
                         "'edgeinfer http-user FILE USER'") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"--http-auth {p}: readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        if not sep or not _valid_user(name) or not stored.startswith("scrypt$") or stored.count("$") != 5:
            raise UsageError(f"--http-auth {p}: line {number} is not 'user:scrypt$...'; make entries with "
                             "'edgeinfer http-user FILE USER'")
        users[name] = stored
    if not users:
        raise UsageError(f"--http-auth {p}: no user in it; add one with 'edgeinfer http-user {p} USER'")
    return users


def set_user(path: str | os.PathLike, user: str, password: str) -> None:
    """Add ``user`` to the file (or change their password), written atomically, mode 0600."""
    from .._io import atomic_write

    if not _valid_user(user):
        raise UsageError(f"user name {user!r}: letters, digits and . _ - @ only, at most 64 characters")
    if len(password) < 12:
        raise UsageError("the password is shorter than 12 characters; choose a longer one")
    p = Path(path)
    lines = p.read_text(encoding="utf-8").splitlines() if p.exists() else []
    lines = [ln for ln in lines if ln.partition(":")[0].strip() != user] + [f"{user}:{hash_password(password)}"]
    atomic_write(p, ("\n".join(lines) + "\n").encode("utf-8"), mode=0o600)


class Guard:
    """Basic authentication against ``users`` with a per-address lock-out. ``check(header, address)`` ->
    ``(status, user)``: 200 and the user; 401 (no or wrong credentials); 429 (locked out)."""

    def __init__(self, users: dict[str, str], *, clock=time.monotonic):
        self.users, self.clock = dict(users), clock
        self._failures: dict[str, deque] = {}
        self._lock = threading.Lock()
        self._dummy = hash_password(secrets.token_hex(8))   # an unknown user costs as much as a known one

    def _recent(self, address: str, now: float) -> deque:
        q = self._failures.setdefault(address, deque())
        while q and now - q[0] > WINDOW_S:
            q.popleft()
        return q

    def check(self, header: str | None, address: str) -> tuple[int, str | None]:
        now = self.clock()
        with self._lock:
            if len(self._recent(address, now)) >= MAX_FAILURES:
                return 429, None
        if not header or header.partition(" ")[0].lower() != "basic":
            return 401, None   # no credentials (or another scheme): a challenge, not a failed login
        user, password = _basic(header)
        ok = verify_password(password, self.users.get(user, self._dummy)) and user in self.users
        if ok:
            return 200, user
        with self._lock:
            q = self._recent(address, now)
            q.append(now)
            locked = len(q) >= MAX_FAILURES
        audit.warning("HTTP login failed for user %r from %s%s", _shown(user), address,
                      f"; {MAX_FAILURES} failures within {WINDOW_S:.0f} s: refused for {WINDOW_S:.0f} s"
                      if locked else "")
        return 401, None


def _basic(header: str) -> tuple[str, str]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return "", ""
    return user, password


def _shown(user: str) -> str:
    """A tried user name as the audit log shows it (what a client sent: kept short and printable)."""
    return user if _valid_user(user) else "<not a valid user name>"
