"""The spool: names no sender controls, private files and folders, or readable by an operator's group."""
import re
import stat

import pytest

from edgeinfer.errors import UsageError
from edgeinfer.node.spool import Spool, content_digest


def test_spool_names_are_hashes_never_paths_and_the_spool_is_private(tmp_path):
    (tmp_path / "spool").mkdir(mode=0o755)                           # a spool made before it was kept private
    spool = Spool(tmp_path / "spool")
    digest = content_digest(b"data")
    for hostile in ("../../x", "/abs/olute", "1.2.3/../../etc", "ABC^PATIENT", "1.2.840.1"):
        p = spool.store_instance(hostile, digest, b"data")
        assert p.resolve().is_relative_to((tmp_path / "spool" / "instances").resolve())
        assert re.fullmatch(r"[0-9a-f]{40}-[0-9a-f]{16}\.dcm", p.name) and re.fullmatch(r"[0-9a-f]{2}", p.parent.name)
        assert p.read_bytes() == b"data"
        assert stat.S_IMODE(p.stat().st_mode) == 0o600 and stat.S_IMODE(p.parent.stat().st_mode) == 0o700
    # two contents under one SOP Instance UID never share a file
    assert spool.instance_path("1.2.3", digest) != spool.instance_path("1.2.3", content_digest(b"other"))
    r = spool.store_result("1.2.3.99", b"sr")
    assert stat.S_IMODE(r.stat().st_mode) == 0o600
    for d in (spool.root, spool.instances, spool.results):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    (spool.instances / ".x.dcm-abc.tmp").write_bytes(b"half")
    assert spool.remove_temporary() == 1
    assert not list(spool.root.rglob("*.tmp"))


def test_an_operator_s_group_may_read_the_spool_and_an_unknown_group_is_refused(tmp_path):
    import grp
    import os

    group = grp.getgrgid(os.getgid()).gr_name
    spool = Spool(tmp_path / "spool", group=group)
    p = spool.store_instance("1.2.3", content_digest(b"data"), b"data")
    r = spool.store_result("1.2.3.99", b"sr")
    for f in (p, r):
        assert stat.S_IMODE(f.stat().st_mode) == 0o640 and f.stat().st_gid == os.getgid()
    for d in (spool.root, spool.instances, spool.results, p.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o750 and d.stat().st_gid == os.getgid()
    with pytest.raises(UsageError, match=r"spool_group 'no-such-group-xyz': no such group on this machine"):
        Spool(tmp_path / "other", group="no-such-group-xyz")
