"""edgeinfer.bench.cli: the ``edgeinfer bench`` handler, its exit status, and the package's surface."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from edgeinfer import bench
from edgeinfer.errors import UsageError


def test_exit_code():
    assert bench.exit_code({"rows": [{"status": "unavailable"}], "e2e": []}) == 1
    assert bench.exit_code({"rows": [{"status": "ok"}, {"status": "unavailable"}], "e2e": []}) == 0
    assert bench.exit_code({"rows": [{"status": "ok"}, {"status": "error"}], "e2e": []}) == 2


def _parser():
    p = argparse.ArgumentParser(prog="edgeinfer")
    bench.add_parser(p.add_subparsers(dest="command"))
    return p


def test_cli_handler_end_to_end_without_data(bench_bundle, tmp_path, capsys):
    """No --data: the inputs come from phantoms generated on the fly. Every report is written."""
    out = tmp_path / "r"
    args = _parser().parse_args([
        "bench", str(bench_bundle), "--backend", "ort", "--precision", "fp32,int8,fp16", "--batch", "1",
        "--warmup-s", "0.01", "--duration-s", "0.03", "--blocks", "2", "--images", "2", "--e2e-repeats", "1",
        "--json", str(out / "b.json"), "--report", str(out / "b.md"), "--plot", str(out / "b.png"), "--no-progress"])
    assert args.func(args) == 0
    d = json.loads((out / "b.json").read_text())
    assert [r["status"] for r in d["rows"]] == ["ok", "unavailable", "ok"]
    assert "phantom" in d["data"]["source"]
    assert (out / "b.md").stat().st_size > 500 and (out / "b.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "ort fp32" in printed and "wrote" in printed


def test_cli_json_to_stdout_and_usage_errors(bench_bundle, phantom_dir, capsys):
    args = _parser().parse_args(["bench", str(bench_bundle), "--backend", "ort", "--precision", "fp32",
                                 "--iterations", "4", "--blocks", "2", "--warmup-s", "0", "--data", str(phantom_dir),
                                 "--images", "2", "--e2e", "none", "--json", "-", "--no-progress"])
    assert args.func(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["rows"][0]["n"] == 4 and d["rows"][0]["raw"]["n"] == 4 and d["e2e"] == []
    with pytest.raises(SystemExit):  # --duration-s and --iterations exclude each other
        _parser().parse_args(["bench", "--duration-s", "1", "--iterations", "3"])
    for bad in (["--precision", "fp64"], ["--batch", "0"], ["--blocks", "0"]):
        with pytest.raises(UsageError):
            bench.settings_from_args(_parser().parse_args(["bench", *bad]))


def test_backend_all_is_every_local_backend_and_aliases_still_work():
    from edgeinfer.backends import local_backends, registered

    every = bench.settings_from_args(_parser().parse_args(["bench", "--threads", "1"])).backends
    assert every == bench.backend_names() and set(every) == set(local_backends())
    # the remote backend needs a server: benchmarks/triton_bench.py starts one and measures it
    assert set(registered()) - set(every) == {"triton"} and registered()["triton"].remote
    some = bench.settings_from_args(_parser().parse_args(["bench", "--backend", "trt,ov,ort", "--threads", "1"]))
    assert some.backends == ("onnxruntime", "openvino", "tensorrt")
    with pytest.raises(UsageError, match="choose from onnxruntime, openvino, tensorrt"):
        bench.settings_from_args(_parser().parse_args(["bench", "--backend", "cuda-graphs"]))


def test_bench_import_is_light():
    code = ("import sys, edgeinfer.bench, edgeinfer.sysinfo; "
            "print(sorted(m for m in ('matplotlib', 'openvino', 'torch', 'monai', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_package_keeps_its_names():
    """Everything in __all__, and the names the benchmark suites and scripts use, at edgeinfer.bench."""
    import edgeinfer.bench as pkg
    from edgeinfer.bench import cli, compare, e2e, inputs, matrix, plan, report, stats

    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, name
    assert (pkg.run, pkg.render_markdown, pkg.add_parser, pkg.split, pkg.discover_files, pkg.STAGES) == \
        (matrix.run, report.render_markdown, cli.add_parser, stats.split, inputs.discover_files, e2e.STAGES)
    assert (pkg.SHORT, pkg.PRECISIONS, pkg.openvino_speedup_target) == \
        (plan.SHORT, plan.PRECISIONS, compare.openvino_speedup_target)
    from edgeinfer.cli import build_parser  # edgeinfer's CLI registers bench through add_parser

    assert build_parser(["bench"]).parse_args(["bench", "--backend", "ort"]).func is pkg.cmd_bench


def test_cli_end_to_end_with_intake_processes(bench_bundle, phantom_dir, tmp_path):
    """--e2e-processes: the overlapped pass's workers are processes (triage --processes), and it says so."""
    out = tmp_path / "b.json"
    args = _parser().parse_args(["bench", str(bench_bundle), "--backend", "ort", "--precision", "fp32",
                                 "--iterations", "4", "--blocks", "2", "--warmup-s", "0", "--data", str(phantom_dir),
                                 "--images", "2", "--e2e-repeats", "1", "--e2e-workers", "1", "--e2e-processes",
                                 "--json", str(out), "--report", str(tmp_path / "b.md"), "--no-progress"])
    assert args.func(args) == 0
    e = json.loads(out.read_text())["e2e"][0]
    assert e["overlapped"]["processes"] is True and e["overlapped"]["workers"] == 1
    assert e["overlapped"]["studies_per_s"] > 0 and e["errors"] == 0
    assert e["overlapped"]["pool_start_s"] > 0  # the pool started once, before the passes, and was timed
    md = (tmp_path / "b.md").read_text()
    assert "(1 decode processes," in md and "Starting the worker processes took" in md
