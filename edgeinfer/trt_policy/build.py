"""What to build: :func:`build_plan` decides, for one precision and TensorRT version, which graph
is parsed and which network, builder and parser flags are set (:class:`BuildPlan`), and refuses
the combinations TensorRT or the device does not support, with the reason."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from ..errors import PolicyError
from ..precision import GRAPH
from .batch import check_batch
from .versions import (MIN_TENSORRT, _cc_str, _pad4, _short, check_int, describe_cc, normalize_hardware_compat,
                       parse_compute_capability, parse_version)

PRECISIONS = GRAPH
#: the ONNX graph (artifact precision, format "onnx") each engine precision is built from
GRAPH_FOR = {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}
#: the INT8 calibration methods this runtime implements (TensorRT 10.x only)
CALIBRATION_METHODS = ("entropy2",)


# --- what to build ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildPlan:
    """How to build one engine: which graph, which flags (by TensorRT enum *name*)."""

    tensorrt_version: str
    precision: str
    #: the bundle artifact (precision, format "onnx") to parse
    graph: str
    network_flags: tuple[str, ...]        # NetworkDefinitionCreationFlag names
    builder_flags: tuple[str, ...]        # BuilderFlag names to set
    clear_builder_flags: tuple[str, ...]  # BuilderFlag names to clear (TF32 is on by default)
    parser_flags: tuple[str, ...]         # OnnxParserFlag names
    strongly_typed: bool
    calibrator: bool                      # IInt8EntropyCalibrator2 + cache (TensorRT 10.x only)
    dla_core: int | None
    hardware_compatibility: str
    version_compatible: bool
    lean_runtime_embedded: bool | None = None   # version-compatible plans: does the plan carry its lean runtime?
    warnings: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _dla_supported(v: tuple[int, ...]) -> str | None:
    """None if this TensorRT version builds DLA engines on Jetson, else why not."""
    p = _pad4(v)
    if p[0] == 10 and p[1] <= 7:
        return None
    if p[0] == 10:
        return (f"TensorRT {_short(v)} has no DLA support: TensorRT 10.7 was the last 10.x release that supported "
                "DLA (JetPack 6 ships 10.3, which does)")
    if p[:3] < (11, 4, 1):
        return (f"TensorRT {_short(v)} has no DLA support on Jetson: DLA returned in TensorRT 11.4.1 "
                "(Jetson AGX Orin with JetPack 7.2.2 or later)")
    return None


def build_plan(trt_version: str, precision: str, *, graph_precision: str | None = None,
               strongly_typed_available: bool | None = None, dla_core: int | None = None,
               hardware_compat: str | None = None, version_compat: bool = False,
               exclude_lean_runtime: bool = False,
               calibrator: bool = False, batch: Sequence[int] | None = None,
               device: Mapping[str, Any] | None = None) -> BuildPlan:
    """Decide how to build a ``precision`` engine with TensorRT ``trt_version``.

    ``graph_precision`` is the graph the caller intends to parse (None: the policy picks);
    a mismatch is refused with the reason. ``strongly_typed_available`` defaults to
    "TensorRT >= 10". ``calibrator=True`` asks for the TensorRT 10.x implicit INT8 path
    (FP32 graph + IInt8EntropyCalibrator2 + cache); it is never chosen implicitly.
    ``batch`` (min, opt, max) and ``device`` (the build machine, as from ``device_info()``)
    are optional and enable the DLA and hardware-compatibility checks that need them.
    ``exclude_lean_runtime`` (version-compatible plans only) leaves the lean runtime out of
    the plan: smaller, but it then runs only on a TensorRT of exactly the building version.
    """
    if precision not in PRECISIONS:
        raise PolicyError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    v = parse_version(trt_version)
    if v[:2] < MIN_TENSORRT:
        raise PolicyError(
            f"TensorRT {trt_version} is not supported: edgeinfer builds with TensorRT 10 or newer (named-tensor "
            "API, strongly typed networks, explicit quantization). JetPack 6 ships TensorRT 10.x; upgrade.")
    major = v[0]
    if strongly_typed_available is None:
        strongly_typed_available = major >= 10
    level = normalize_hardware_compat(hardware_compat)
    if not isinstance(version_compat, bool):
        raise PolicyError(f"version_compat must be True or False, not {version_compat!r}")
    if not isinstance(exclude_lean_runtime, bool):
        raise PolicyError(f"exclude_lean_runtime must be True or False, not {exclude_lean_runtime!r}")
    if exclude_lean_runtime and not version_compat:
        raise PolicyError("excluding the lean runtime applies to version-compatible plans only; "
                          "add --version-compatible or drop --exclude-lean-runtime")
    if dla_core is not None:
        check_int(dla_core, "DLA core")
    warnings: list[str] = []
    network_flags: list[str] = []
    builder_flags: list[str] = []
    parser_flags: list[str] = []
    graph = GRAPH_FOR[precision]

    if calibrator:
        if precision != "int8":
            raise PolicyError(f"a calibrator is for INT8 only; precision {precision} was asked")
        if major >= 11:
            raise PolicyError(
                f"TensorRT {trt_version} has no INT8 calibrators (removed in TensorRT 11, deprecated since 10.1). "
                "Build INT8 from the bundle's Q/DQ graph (explicit quantization) instead.")
        graph = "fp32"
        warnings.append("implicit INT8 calibration (IInt8EntropyCalibrator2) is deprecated since TensorRT 10.1 and "
                        "removed in 11; the bundle's Q/DQ INT8 graph is the supported path")

    if graph_precision is not None and graph_precision != graph:
        hint = ""
        if precision == "int8" and graph_precision == "fp32" and major == 10:
            hint = "; to calibrate the FP32 graph on TensorRT 10.x, ask for the calibrator explicitly"
        elif precision != "fp32":
            hint = f"; precision lives in the graph: produce the {precision} ONNX graph first"
        raise PolicyError(f"a {precision} engine on TensorRT {trt_version} is built from the {graph} graph, "
                          f"not the {graph_precision} graph{hint}")

    dla = dla_core is not None
    if dla:
        if precision == "fp32":
            raise PolicyError("DLA runs FP16 and INT8 only; it has no FP32. Build fp16 or int8 for DLA, "
                              "or drop --dla-core to build an FP32 engine for the GPU.")
        why = _dla_supported(v)
        if why:
            raise PolicyError(why)
        if level != "none":
            raise PolicyError("hardware compatibility applies to GPU engines only; it cannot be combined with DLA "
                              "(and is not supported on JetPack)")
        if device is not None and device.get("dla_cores") is not None:
            n = device.get("dla_cores")
            if dla_core >= n:
                raise PolicyError(f"DLA core {dla_core} asked, this device has {n} DLA core(s)"
                                  + (f" (0..{n - 1})" if n else ""))
        builder_flags.append("GPU_FALLBACK")
        warnings.append("layers DLA cannot run fall back to the GPU (GPU_FALLBACK): check the build log for "
                        "which layers run where")

    weak = False
    if major >= 11:
        strongly_typed = True  # always on; the STRONGLY_TYPED creation flag is deprecated and ignored
    elif calibrator:
        strongly_typed, weak = False, True
        builder_flags.append("INT8")
    elif dla:
        # 10.x DLA builds select DLA precision with the FP16/INT8 builder flags ("DLA support is
        # currently limited to networks running in FP16 and INT8 mode"); the typed graph still
        # decides which tensors are FP16 or quantized.
        strongly_typed, weak = False, True
        builder_flags.append("FP16" if precision == "fp16" else "INT8")
        if precision == "int8":
            warnings.append("DLA INT8 from a Q/DQ graph: layers outside Q/DQ pairs stay FP32 and run on the GPU")
    elif precision == "fp32" or strongly_typed_available:
        strongly_typed = bool(strongly_typed_available)
        if strongly_typed:
            network_flags.append("STRONGLY_TYPED")
    else:  # 10.x without the STRONGLY_TYPED flag: weak typing, the precision flag enables the typed kernels
        strongly_typed, weak = False, True
        builder_flags.append("FP16" if precision == "fp16" else "INT8")
    if weak and _pad4(v)[:2] >= (10, 12):
        warnings.append("weakly typed build: weak typing is deprecated since TensorRT 10.12")

    if level != "none" or version_compat:
        # the ONNX parser's native InstanceNorm keeps plugins (host code) out of portable plans
        parser_flags.append("NATIVE_INSTANCENORM")
    if level != "none":
        if device is not None:
            if device.get("integrated"):
                raise PolicyError("hardware compatibility is not supported on JetPack / integrated GPUs; "
                                  "build on the device that will run the plan")
            cc = device.get("compute_capability")
            if cc is not None:
                cc = parse_compute_capability(cc)
                need = (8, 0) if level == "ampere_plus" else (7, 5)
                if cc < need:
                    raise PolicyError(f"hardware compatibility {level} needs a build GPU of compute capability "
                                      f">= {_cc_str(need)}; this one is {describe_cc(cc)}")
        if level == "same_compute_capability" and _pad4(v)[:2] < (10, 9):
            raise PolicyError(f"hardware compatibility same_compute_capability needs TensorRT >= 10.9; "
                              f"this is {trt_version}")
        warnings.append(f"hardware-compatible ({level}) plans may be slower than device-specific ones")
    if version_compat:
        builder_flags.append("VERSION_COMPATIBLE")
        if exclude_lean_runtime:
            builder_flags.append("EXCLUDE_LEAN_RUNTIME")
            warnings.append(f"the lean runtime is left out of the plan: it runs only on TensorRT {trt_version} "
                            "exactly, and not on the dispatch runtime")
        else:
            warnings.append("version-compatible plans embed a lean runtime (host code) and may be slower")

    if batch is not None:
        lo, opt, hi = check_batch(batch)
        if dla:
            # (check_batch already caps the batch at MAX_BATCH == DLA_MAX_BATCH)
            if not lo == opt == hi:
                raise PolicyError(f"DLA does not support dynamic dimensions: batch {lo},{opt},{hi} asked; "
                                  f"pass one fixed batch, e.g. --batch {hi}")

    return BuildPlan(
        tensorrt_version=trt_version, precision=precision, graph=graph,
        network_flags=tuple(network_flags), builder_flags=tuple(builder_flags),
        # TF32 is on by default; an edgeinfer engine computes in the precision its graph says
        clear_builder_flags=("TF32",), parser_flags=tuple(parser_flags),
        strongly_typed=strongly_typed, calibrator=bool(calibrator), dla_core=dla_core,
        hardware_compatibility=level, version_compatible=version_compat,
        lean_runtime_embedded=(not exclude_lean_runtime) if version_compat else None, warnings=tuple(warnings))
