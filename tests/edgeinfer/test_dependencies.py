"""The runtime never imports torch, tensorrt, openvino, export or calibration (checked in a fresh interpreter)."""
import subprocess
import sys

CHECK = r"""
import importlib, pkgutil, sys
import edgeinfer
failed = []
for m in pkgutil.walk_packages(edgeinfer.__path__, "edgeinfer."):
    if m.name == "edgeinfer.__main__":
        continue
    try:
        importlib.import_module(m.name)
    except Exception as e:
        failed.append(f"{m.name}: {e!r}")
heavy = sorted(n for n in ("torch", "tensorrt", "openvino", "export", "calibration", "matplotlib") if n in sys.modules)
print("FAILED", failed)
print("HEAVY", heavy)
print("COUNT", len(list(pkgutil.walk_packages(edgeinfer.__path__, "edgeinfer."))))
"""


def test_runtime_modules_import_without_heavy_dependencies():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert lines["FAILED"] == "[]"
    assert lines["HEAVY"] == "[]"
    assert int(lines["COUNT"]) >= 10  # the walk really visited the package


def test_cli_help_works_without_torch_loaded():
    code = "import sys; from edgeinfer.cli import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("False"), out.stdout + out.stderr
