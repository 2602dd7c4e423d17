"""edgeinfer.sysinfo: what a report says about the machine, and the allocator setting the CLI makes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeinfer import sysinfo


def _in_fresh_process(code: str, **env) -> dict:
    import os

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


TUNE = """
import ctypes, json
from edgeinfer import sysinfo
first = sysinfo.tune_allocator()
print(json.dumps({"first": first, "again": sysinfo.tune_allocator(),
                  "reported": sysinfo.machine_info()["allocator"]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_allocator_is_tuned_once_and_reported(monkeypatch):
    import platform

    for key in sysinfo.ALLOCATOR_ENV:  # this machine's own settings would (rightly) win
        monkeypatch.delenv(key, raising=False)
    got = _in_fresh_process(TUNE)
    if platform.libc_ver()[0] != "glibc":
        assert got["first"] == {"tuned": False, "why": "not glibc"}
        return
    assert got["first"] == {"tuned": True, "why": "mallopt", **sysinfo.ALLOCATOR}
    assert got["again"] == got["reported"] == got["first"]


def test_the_operator_s_own_allocator_settings_win():
    got = _in_fresh_process(TUNE, MALLOC_TRIM_THRESHOLD_="1000000")
    assert got["first"] == {"tuned": False, "why": "left to the environment (MALLOC_TRIM_THRESHOLD_)"}


def test_the_cli_tunes_the_allocator_before_it_works(monkeypatch, capsys):
    from edgeinfer import cli

    calls = []
    monkeypatch.setattr(cli, "tune_allocator", lambda: calls.append(1))
    assert cli.main(["inspect"]) == 0 and calls == [1]
