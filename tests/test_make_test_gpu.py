"""``make test-gpu``: what the GPU host runs. It must never pass by skipping everything.

It installs nothing (GPU hosts are often offline), asks the runner's own probe for a GPU
(cuda-python, not nvidia-smi), and fails when the probe finds none or when no GPU test passed.
Run here, without a GPU: once as it is (the probe fails), once with the probe told there is a
GPU while every selected GPU test skips (zero passed).
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEAN_TEST = "tests/edgeinfer/backends/test_tensorrt.py::test_the_real_lean_runtime_refuses_what_it_must_not_load"


def make_test_gpu(tmp_path, *pytest_args, env=None):
    e = dict(os.environ, **(env or {}))
    e.pop("EDGEINFER_SKIP_GPU", None)
    return subprocess.run(["make", "-s", "-C", str(ROOT), "test-gpu", f"GPU_PYTHON={sys.executable}",
                           "PYTEST_ARGS=" + " ".join(pytest_args)], capture_output=True, text=True, env=e,
                          timeout=300)


def test_no_usable_gpu_fails_with_the_probe_s_reason(tmp_path):
    r = make_test_gpu(tmp_path, LEAN_TEST)
    assert r.returncode != 0
    assert "no CUDA GPU is usable" in r.stdout + r.stderr


def test_zero_gpu_tests_passing_is_a_failure(tmp_path):
    # a pytest plugin that makes the runner's probe see one GPU: the lean runtime is not
    # installed here, so the one selected GPU test skips and nothing passes
    (tmp_path / "one_fake_gpu.py").write_text("from edgeinfer.backends import cuda\ncuda.gpu_count = lambda: 1\n")
    r = make_test_gpu(tmp_path, "-p", "one_fake_gpu", LEAN_TEST, env={"PYTHONPATH": str(tmp_path)})
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "1 skipped" in out and "no GPU test passed" in out
