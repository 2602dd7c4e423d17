"""TensorRT build and load policy: pure functions, no ``tensorrt`` import.

Everything that decides *what* to build and *whether* a plan may be loaded lives in this
package, so it is unit-tested on machines without a GPU. ``export/trt_build.py`` and
``edgeinfer/backends/tensorrt.py`` only translate these decisions into TensorRT calls.
The INT8 calibration cache (build side only) is ``export/trt_calibration_cache.py``.

The package:

* :mod:`.versions`: reading what the rules compare: TensorRT versions, compute capabilities,
  hardware-compatibility levels, integer arguments;
* :mod:`.batch`: batch sizes, optimisation profiles and their DLA limits, INT8 calibration batches;
* :mod:`.build`: what to build (:func:`build_plan` -> :class:`BuildPlan`);
* :mod:`.compat`: whether a built plan may be loaded here (compatibility records,
  :func:`check_compatibility`, :func:`rebuild_decision`).

Rules, with the documentation they come from:

* Precision lives in the graph: an engine of a given precision is built from the bundle's
  ONNX graph of that precision (the FP16 graph, the Q/DQ INT8 graph; ``GRAPH_FOR``), so the
  precision label and accuracy gate of that graph describe what the engine runs. The one
  exception, the TensorRT 10.x INT8 calibrator on the FP32 graph, is used only when asked
  for (the project's design document, docs/ARCHITECTURE.md, gives the reasons).
  TensorRT 11 removed the weak-typing builder flags (``BuilderFlag.FP16``, ``INT8``...) and
  the INT8 calibrators; every network is strongly typed and ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is
  "retained for API compatibility but is ignored" (NvInfer.h of TensorRT 11.1;
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html).
  Note the flag's *value* changed from 1 (10.x) to 0 (11.x): the build code must look
  flags up by name, never hard-code bit positions.
* TensorRT 10.x has ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (NvInfer.h of
  release/10.0 onwards). Weak typing was deprecated in 10.12. The implicit INT8
  calibrators were deprecated in 10.1 ("Superseded by explicit quantization",
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/c-api/deprecated.html).
* Plans are not portable across TensorRT versions, platforms or GPU architectures unless
  built version-compatible / hardware-compatible
  (https://docs.nvidia.com/deeplearning/tensorrt/11.1.0/inference-library/engine-compatibility.html,
  https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/getting-started/support-matrix.html).
* DLA: FP16 and INT8 only, no dynamic dimensions, batch <= 4096, GPU fallback; TensorRT
  10.7 was the last 10.x release with DLA; 11.x has DLA on Jetson AGX Orin again from
  11.4.1 with JetPack 7.2.2 (https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/dla-layer-restrictions.html,
  https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/inference-library/work-with-dla.html).
"""
from ..errors import PlanIncompatible, PolicyError
from .batch import (DLA_MAX_BATCH, DLA_MAX_DIM, MAX_BATCH, calibration_batches, check_batch, check_dla_profile,
                    parse_batch, profile_shapes)
from .build import CALIBRATION_METHODS, GRAPH_FOR, PRECISIONS, BuildPlan, build_plan
from .compat import (RECORD_FIELDS, Difference, check_compatibility, compatibility_record, compatibility_warnings,
                     incompatible_error, lean_runtime_embedded, rebuild_decision, record_problems)
from .versions import (HARDWARE_COMPAT_LEVELS, MIN_TENSORRT, check_int, describe_cc, normalize_hardware_compat,
                       parse_compute_capability, parse_version)

__all__ = [
    "PRECISIONS", "GRAPH_FOR", "HARDWARE_COMPAT_LEVELS", "PolicyError", "PlanIncompatible", "BuildPlan",
    "parse_version", "parse_compute_capability", "describe_cc", "normalize_hardware_compat", "parse_batch",
    "check_batch", "profile_shapes", "check_dla_profile", "build_plan", "compatibility_record",
    "record_problems", "check_compatibility", "compatibility_warnings", "rebuild_decision",
    "incompatible_error", "calibration_batches", "check_int", "CALIBRATION_METHODS",
    "RECORD_FIELDS", "Difference", "lean_runtime_embedded", "MIN_TENSORRT", "MAX_BATCH", "DLA_MAX_BATCH",
    "DLA_MAX_DIM",
]
