"""The one atomic writer, the strict JSON reader and the output-path check."""
import ast
import json
import resource
from pathlib import Path

import pytest

from edgeinfer._io import (atomic_write, check_output_path, parse_json, publish_dir, read_json, staging_dir,
                           write_json)
from edgeinfer.errors import JsonFileError, OutputPathError

ROOT = Path(__file__).resolve().parents[2]


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path):
    p = tmp_path / "sub" / "a.json"
    write_json(p, {"a": 1})
    write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [x.name for x in p.parent.iterdir()] == ["a.json"]
    assert p.stat().st_mode & 0o777 == 0o644


def test_a_write_cut_by_the_file_size_limit_keeps_the_previous_file(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"previous")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # Python ignores SIGXFSZ: writes fail with EFBIG
    try:
        with pytest.raises(OSError):
            atomic_write(p, b"x" * 100_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert p.read_bytes() == b"previous"
    assert [x.name for x in tmp_path.iterdir()] == ["a.bin"]


def test_strict_json_refuses_non_finite_numbers_and_deep_nesting(tmp_path):
    for text in ('{"t": NaN}', '{"t": Infinity}', '{"t": -Infinity}', '{"t": 1e999}'):
        with pytest.raises(JsonFileError, match="finite|NaN|Infinity"):
            parse_json(text, where="x")
    with pytest.raises(JsonFileError, match="nested"):
        parse_json("[" * 100_000 + "]" * 100_000, where="x")
    with pytest.raises(JsonFileError, match="nested 40 levels"):
        parse_json("[" * 40 + "]" * 40, where="x")
    assert parse_json('{"a": [1, 2.5, null]}', where="x") == {"a": [1, 2.5, None]}
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"a": "x" * 2000}))
    with pytest.raises(JsonFileError, match="more than the 1,000 allowed"):
        read_json(big, max_bytes=1000)
    with pytest.raises(JsonFileError, match="cannot read"):
        read_json(tmp_path / "missing.json")


def test_output_path_check(tmp_path):
    (tmp_path / "f").write_text("x")
    assert check_output_path(tmp_path / "new" / "deeper" / "wl.json") == tmp_path / "new" / "deeper" / "wl.json"
    for bad, words in ((tmp_path, "is a folder"), ("/dev/full", "not a regular file"),
                       (tmp_path / "f" / "wl.json", "is a file, not a folder")):
        with pytest.raises(OutputPathError, match=words):
            check_output_path(bad)
    with pytest.raises(OutputPathError, match="one of the inputs"):
        check_output_path(tmp_path / "f", inputs=[tmp_path / "f"])
    (tmp_path / "link").symlink_to(tmp_path / "f")
    with pytest.raises(OutputPathError, match="one of the inputs"):
        check_output_path(tmp_path / "link", inputs=[tmp_path / "f"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edgeinfer-probe")]


def test_publish_dir_swaps_folders_whole(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old").write_text("old")
    staged = staging_dir(target, "test")
    (staged / "new").write_text("new")
    with pytest.raises(FileExistsError):
        publish_dir(staged, target, replace=False)
    publish_dir(staged, target, replace=True)
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


# files written for a user go through the one atomic writer; the exceptions are named
_ALLOWED_DIRECT_WRITES = {
    ("edgeinfer/_io.py", "fdopen"),             # the writer itself
    ("edgeinfer/bench/memory.py", "open"),      # /proc/self/clear_refs, a kernel control file
    ("export/train_phantom.py", "savez"),       # the training script's own scratch cache
    ("export/train_phantom.py", "save"),        # torch.save of the weights, a workstation step
    ("export/train_ct.py", "save"),             # the same for the head-CT U-Net
    ("export/train_ct.py", "write_bytes"),      # a training study's slices in a temporary folder, read back at once
}
#: calls that write a file directly; copies into a staging folder (bundles) are published whole instead
_WRITERS = {"write_text", "write_bytes", "imwrite", "save_as", "fdopen"}
#: calls that may write to an in-memory buffer (named ``buf``) for the atomic writer
_TO_BUFFER = {"savefig", "dcmwrite", "save", "savez"}


def test_every_user_file_goes_through_the_atomic_writer():
    found = set()
    for folder in ("edgeinfer", "calibration", "export"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "attr", getattr(node.func, "id", None))
                if name == "open" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                        and any(c in str(node.args[1].value) for c in "wax"):
                    found.add((rel, "open"))
                elif name in _WRITERS:
                    found.add((rel, name))
                elif name in _TO_BUFFER and node.args \
                        and not (isinstance(node.args[0], ast.Name) and node.args[0].id == "buf"):
                    found.add((rel, name))
    assert found <= _ALLOWED_DIRECT_WRITES, sorted(found - _ALLOWED_DIRECT_WRITES)
