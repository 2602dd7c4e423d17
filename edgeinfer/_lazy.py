"""Import heavy optional modules at first use, with an error that names the extra.

``import edgeinfer`` must never pull in torch, tensorrt or openvino; modules call
``lazy_import("openvino", extra="openvino")`` inside the functions that need them.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingDependency

#: module -> extra that installs it
EXTRAS = {
    "torch": "export",
    "onnx": "export",
    "onnxscript": "export",
    "tensorrt": "trt",
    "cuda": "trt",
    "cuda.bindings": "trt",
    "openvino": "openvino",
    "matplotlib": "dev",
}


def lazy_import(name: str, *, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        extra = extra or EXTRAS.get(name.split(".")[0], None)
        what = f" for {purpose}" if purpose else ""
        how = f"pip install 'edgeinfer[{extra}]'" if extra else f"pip install {name}"
        raise MissingDependency(
            f"'{name}' is needed{what} but could not be imported ({exc.__class__.__name__}: {exc}). "
            f"Install it with: {how}"
        ) from exc


def module_present(name: str) -> bool:
    """Whether ``name`` is installed, told from the import system's finders alone (nothing is imported,
    except the parent package of a dotted name)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # parent package missing
        return False
