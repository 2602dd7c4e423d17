"""The runtime never imports torch, tensorrt, openvino or the workstation side (checked in a fresh interpreter)."""
import subprocess
import sys

import pytest

#: never imported by the runtime: heavy libraries and the workstation packages (under either name)
FORBIDDEN = ("torch", "tensorrt", "openvino", "matplotlib", "edgeinfer_export", "edgeinfer_calibration",
             "export", "calibration")
RUNTIME_COMMANDS = ("phantom", "inspect", "preview", "triage", "bench", "sign", "keygen")
WORKSTATION_COMMANDS = ("export", "build", "calibrate", "validate")

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
heavy = sorted(n for n in FORBIDDEN if n in sys.modules)
print("FAILED", failed)
print("HEAVY", heavy)
print("COUNT", len(list(pkgutil.walk_packages(edgeinfer.__path__, "edgeinfer."))))
"""

HELP = r"""
import sys
from edgeinfer.cli import main
try:
    main(ARGV)
except SystemExit:
    pass
print("HEAVY", sorted(n for n in FORBIDDEN if n in sys.modules))
"""


def _run(code: str, **kw) -> subprocess.CompletedProcess:
    # -I: isolated, so the repository folder (which holds export/ and calibration/) is not on sys.path
    return subprocess.run([sys.executable, "-I", "-c", f"FORBIDDEN = {FORBIDDEN!r}\n" + code],
                          capture_output=True, text=True, timeout=120, **kw)


def test_runtime_modules_import_without_heavy_dependencies():
    out = _run(CHECK)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert lines["FAILED"] == "[]"
    assert lines["HEAVY"] == "[]"
    assert int(lines["COUNT"]) >= 10  # the walk really visited the package


@pytest.mark.parametrize("argv", [["--help"], *[[c, "--help"] for c in RUNTIME_COMMANDS]], ids=lambda a: " ".join(a))
def test_runtime_help_imports_nothing_from_the_workstation_side(argv):
    out = _run(HELP.replace("ARGV", repr(argv)))
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    assert "usage: edgeinfer" in out.stdout


def test_top_level_help_lists_the_workstation_commands_too():
    out = _run(HELP.replace("ARGV", "['--help']"))
    for command in (*RUNTIME_COMMANDS, *WORKSTATION_COMMANDS):
        assert f"    {command}" in out.stdout, command


@pytest.mark.parametrize("command", WORKSTATION_COMMANDS)
def test_workstation_commands_are_registered_when_invoked(command):
    out = _run(HELP.replace("ARGV", repr([command, "--help"])))
    assert f"usage: edgeinfer {command}" in out.stdout and "examples:" in out.stdout, out.stdout + out.stderr


def test_tensorrt_extras_pin_cuda_python_to_their_cuda_stack():
    # cuda-python 13 needs driver r580 or newer: on a CUDA 12 driver (JetPack 6) every call fails,
    # so the CUDA 12 extras must keep it below 13, and each extra names one TensorRT CUDA build
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    extras = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())[
        "project"]["optional-dependencies"]
    for name, major in {"trt": 12, "trt-cu13": 13, "trt-lean": 13, "trt-lean-cu12": 12}.items():
        reqs = {Requirement(r).name: Requirement(r) for r in extras[name]}
        trt = [n for n in reqs if n.startswith("tensorrt")]
        assert trt and all(n.endswith(f"-cu{major}") for n in trt), (name, trt)
        spec = reqs["cuda-python"].specifier
        assert spec.contains(f"{major}.9") and not spec.contains(f"{major + 1}.0") and not spec.contains(f"{major - 1}.9"), \
            (name, str(spec))


def test_every_package_is_in_the_wheel():
    """pyproject.toml lists packages by hand: a package left out is missing from a normal (non-editable)
    install, e.g. the device images' ``pip install .``, and fails only when first imported there."""
    import tomllib

    from helpers import ROOT

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for top, folder in (("edgeinfer", "edgeinfer"), ("edgeinfer_export", "export"),
                        ("edgeinfer_calibration", "calibration")):
        found = {top + ("." + ".".join(p.parent.relative_to(ROOT / folder).parts) if p.parent != ROOT / folder else "")
                 for p in (ROOT / folder).rglob("__init__.py")}
        assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
