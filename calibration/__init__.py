"""Workstation side: calibration sets from DICOM, FP16 and INT8 Q/DQ graphs, validation, mixed precision.

Data flows one way: ``export`` -> ``calibration`` -> bundle -> ``edgeinfer``. This package
uses the runtime's own reader, preprocessing, runner and triage code; the runtime never
imports it. Importing this package (and ``edgeinfer_calibration.cli``) is light: onnx, onnxruntime's
quantization tools and the FP16 converter are imported inside the functions that need them.
"""
from __future__ import annotations

from edgeinfer.errors import CalibrationError


__all__ = ["CalibrationError"]
