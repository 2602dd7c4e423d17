"""CUDA and TensorRT plumbing shared by the runner and the builder (edgeinfer.backends.cuda).

No GPU is needed: the runtime fallback is tested with fakes of the three TensorRT modules put
in ``sys.modules``, the CUDA version rules with distribution names as pip installs them.
"""
import sys
import types

import pytest

from edgeinfer.backends import cuda
from edgeinfer.errors import CudaError, MissingDependency


# --- which TensorRT runtime ------------------------------------------------------------------------
@pytest.fixture
def modules(monkeypatch):
    """Install fakes: modules(tensorrt=..., tensorrt_lean=...); None means 'not installed'."""
    def install(**mods):
        for name in cuda.RUNTIMES:
            mod = mods.get(name)
            if mod is None:
                monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
            else:
                monkeypatch.setitem(sys.modules, name, mod)
    return install


def _fake(name, version="11.4.0.106"):
    m = types.ModuleType(name)
    m.__version__ = version
    return m


def test_the_full_tensorrt_comes_first(modules):
    full, lean = _fake("tensorrt"), _fake("tensorrt_lean")
    modules(tensorrt=full, tensorrt_dispatch=_fake("tensorrt_dispatch"), tensorrt_lean=lean)
    assert cuda.import_trt_runtime() == (full, "tensorrt")


def test_dispatch_then_lean(modules):
    dispatch, lean = _fake("tensorrt_dispatch"), _fake("tensorrt_lean")
    modules(tensorrt_dispatch=dispatch, tensorrt_lean=lean)
    assert cuda.import_trt_runtime() == (dispatch, "tensorrt_dispatch")
    modules(tensorrt_lean=lean)
    assert cuda.import_trt_runtime() == (lean, "tensorrt_lean")


def test_no_runtime_names_each_failure_and_the_extras(modules):
    modules()
    with pytest.raises(MissingDependency) as exc:
        cuda.import_trt_runtime()
    text = str(exc.value)
    for name in cuda.RUNTIMES:
        assert f"{name}: ModuleNotFoundError" in text
    assert "edgeinfer[trt]" in text and "edgeinfer[trt-lean]" in text
    # the builder asks for the full package only, and says so
    with pytest.raises(MissingDependency, match=r"edgeinfer\[trt\]"):
        cuda.import_tensorrt("edgeinfer build")


# --- which CUDA ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("names, runtime, major", [
    (["tensorrt-cu12", "tensorrt_cu12_libs", "tensorrt_cu12_bindings"], "tensorrt", "12"),
    (["tensorrt-cu13-libs", "tensorrt-cu13-bindings", "numpy"], "tensorrt", "13"),
    (["tensorrt_lean_cu13", "tensorrt_lean_cu13_libs", "tensorrt_lean_cu13_bindings"], "tensorrt_lean", "13"),
    (["tensorrt-dispatch-cu12", "tensorrt-cu13"], "tensorrt_dispatch", "12"),
    (["tensorrt-lean-cu13-libs"], "tensorrt", None),       # the lean wheel says nothing of the full one
    (["tensorrt"], "tensorrt", None),                      # JetPack's Debian package: unknown
    (["tensorrt-cu12", "tensorrt-cu13"], "tensorrt", None),  # both: nobody can tell which one imports
    (["cuda-python", "cuda-bindings"], "tensorrt", None),  # cuda-python never counts
])
def test_the_cuda_major_comes_from_the_tensorrt_distribution(names, runtime, major):
    assert cuda.tensorrt_cuda_major(names, runtime) == major


def test_installed_distributions_lists_this_environment():
    names = {n.lower() for n in cuda.installed_distributions()}
    assert "numpy" in names and "pydicom" in names


# --- a driver older than cuda-python ------------------------------------------------------------------
class _Cudart:
    def __init__(self, driver=12060):
        self.driver = driver

    def cudaGetErrorName(self, err):
        return 0, b"cudaErrorInsufficientDriver"

    def cudaDriverGetVersion(self):
        return 0, self.driver


def test_an_insufficient_driver_is_explained(monkeypatch):
    monkeypatch.setattr(cuda, "cuda_python_version", lambda: "13.0.3")
    with pytest.raises(CudaError) as exc:
        cuda.check((cuda.INSUFFICIENT_DRIVER, 0), "cudaGetDeviceCount", _Cudart())
    text = str(exc.value)
    assert exc.value.code == 35
    assert text.startswith("cudaGetDeviceCount failed: CUDA error 35 (cudaErrorInsufficientDriver)")
    assert "cuda-python 13.0.3 is built for a newer CUDA than the NVIDIA driver: this driver supports CUDA 12.6" in text
    assert "r580" in text and "pip install 'cuda-python>=12.6,<13'" in text


def test_other_cuda_errors_keep_their_plain_message():
    with pytest.raises(CudaError) as exc:
        cuda.check((2, 0), "cudaMalloc(64)", _Cudart())
    assert exc.value.code == 2 and "driver" not in str(exc.value)
    assert cuda.check((0, 7), "x") == 7 and cuda.check((0,), "x") is None and cuda.check((0, 1, 2), "x") == (1, 2)


def test_driver_hint_without_versions():
    text = cuda.driver_mismatch_hint(None, None)
    assert text.startswith("the installed cuda-python is built for a newer CUDA than the NVIDIA driver: this driver "
                           "is older.")
