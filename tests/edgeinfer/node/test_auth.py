"""Console users: scrypt hashes in a private file, Basic authentication, failed logins rate-limited and
audited without the password."""
from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys

import pytest

from edgeinfer.errors import UsageError
from edgeinfer.node.auth import MAX_FAILURES, WINDOW_S, Guard, hash_password, load_users, set_user, verify_password

SECRET = "correct horse battery"


def _basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_hashes_verify_and_are_salted():
    a, b = hash_password(SECRET), hash_password(SECRET)
    assert a != b and a.startswith("scrypt$16384$8$1$") and SECRET not in a
    assert verify_password(SECRET, a) and not verify_password(SECRET + "x", a)
    assert not verify_password(SECRET, "md5$abc") and not verify_password(SECRET, "scrypt$junk")


def test_the_users_file_is_made_private_and_read_back(tmp_path):
    f = tmp_path / "users"
    set_user(f, "radiographer", SECRET)
    set_user(f, "it.admin", SECRET + "2")
    set_user(f, "radiographer", SECRET + "3")                       # a new password replaces the old line
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    users = load_users(f)
    assert set(users) == {"radiographer", "it.admin"} and verify_password(SECRET + "3", users["radiographer"])
    assert SECRET not in f.read_text()
    with pytest.raises(UsageError, match="shorter than 12"):
        set_user(f, "x", "short")
    with pytest.raises(UsageError, match="letters, digits"):
        set_user(f, "bad:name", SECRET)


@pytest.mark.parametrize("content, words", [
    ("radiographer:plaintext\n", "line 1 is not 'user:scrypt$...'"),
    ("# only a comment\n", "no user in it"),
])
def test_a_bad_users_file_is_refused_naming_the_line_not_its_content(tmp_path, content, words):
    f = tmp_path / "users"
    f.write_text(content)
    f.chmod(0o600)
    with pytest.raises(UsageError, match=words.replace("$", r"\$")) as info:
        load_users(f)
    assert "plaintext" not in str(info.value)


def test_a_users_file_others_may_read_is_refused(tmp_path):
    f = tmp_path / "users"
    set_user(f, "radiographer", SECRET)
    f.chmod(0o644)
    with pytest.raises(UsageError, match="readable by others .*chmod 600"):
        load_users(f)


def test_guard_allows_users_refuses_others_and_locks_out_an_address_after_failures(caplog):
    now = [1000.0]
    guard = Guard({"radiographer": hash_password(SECRET)}, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="edgeinfer.audit")
    assert guard.check(_basic("radiographer", SECRET), "10.0.0.1") == (200, "radiographer")
    assert guard.check(None, "10.0.0.1") == (401, None)                 # no credentials: a challenge, not a failure
    assert guard.check("Bearer abc", "10.0.0.1") == (401, None)
    for _ in range(MAX_FAILURES - 1):
        assert guard.check(_basic("radiographer", "wrong-guess"), "10.0.0.1") == (401, None)
    assert guard.check(_basic("nobody", SECRET), "10.0.0.1") == (401, None)
    assert guard.check(_basic("radiographer", SECRET), "10.0.0.1") == (429, None)   # locked, even when right
    assert guard.check(_basic("radiographer", SECRET), "10.0.0.2") == (200, "radiographer")  # others are not
    now[0] += WINDOW_S + 1
    assert guard.check(_basic("radiographer", SECRET), "10.0.0.1") == (200, "radiographer")
    failures = [r.getMessage() for r in caplog.records if "login failed" in r.getMessage()]
    assert len(failures) == MAX_FAILURES
    assert "for user 'radiographer' from 10.0.0.1" in failures[0] and "refused for 60 s" in failures[-1]
    assert "'nobody'" in caplog.text and "wrong-guess" not in caplog.text and SECRET not in caplog.text


def test_http_user_command_reads_the_password_from_stdin(tmp_path):
    f = tmp_path / "users"
    r = subprocess.run([sys.executable, "-m", "edgeinfer", "http-user", str(f), "radiographer", "--password-stdin"],
                       input=SECRET + "\n", capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 0, r.stderr
    assert "user radiographer set" in r.stdout and SECRET not in r.stdout + r.stderr
    assert verify_password(SECRET, load_users(f)["radiographer"])
