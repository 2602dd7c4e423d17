"""TensorRT build and load policy: pure functions, no ``tensorrt`` import.

Everything that decides *what* to build and *whether* a plan may be loaded lives here,
so it is unit-tested on machines without a GPU. ``export/trt_build.py`` and
``edgeinfer/backends/tensorrt.py`` only translate these decisions into TensorRT calls.
The INT8 calibration cache (build side only) is ``export/trt_calibration_cache.py``.

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
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from .errors import PlanIncompatible, PolicyError
from .precision import GRAPH

PRECISIONS = GRAPH
#: the ONNX graph (artifact precision, format "onnx") each engine precision is built from
GRAPH_FOR = {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}
HARDWARE_COMPAT_LEVELS = ("none", "ampere_plus", "same_compute_capability")
#: the INT8 calibration methods this runtime implements (TensorRT 10.x only)
CALIBRATION_METHODS = ("entropy2",)

MIN_TENSORRT = (10, 0)
#: DLA general restrictions (dla-layer-restrictions.html)
DLA_MAX_BATCH = 4096
DLA_MAX_DIM = 8192
#: the largest batch this runtime accepts in an optimisation profile (a sanity bound)
MAX_BATCH = 4096

#: compute capability -> family, for readable messages only
_ARCH = {
    (5, 3): "Maxwell (Jetson Nano)", (6, 1): "Pascal", (6, 2): "Pascal (Jetson TX2)", (7, 0): "Volta",
    (7, 2): "Xavier", (7, 5): "Turing", (8, 0): "Ampere (A100)", (8, 6): "Ampere",
    (8, 7): "Orin", (8, 9): "Ada Lovelace", (9, 0): "Hopper", (10, 0): "Blackwell",
    (10, 1): "Thor", (11, 0): "Thor", (12, 0): "Blackwell (RTX)", (12, 1): "Blackwell (GB10)",
}


# --- versions ---------------------------------------------------------------------------------
_VERSION_RE = re.compile(r"^v?(\d+(?:\.\d+){0,3})((?:[.+\-]?[A-Za-z][0-9A-Za-z.+\-]*)?)$")


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; ``"11.4"`` -> ``(11, 4)``.

    Accepts 2 to 4 numeric parts (TensorRT reports major.minor.patch.build) and ignores a
    trailing tag such as ``.post1``, ``rc1`` or ``+cuda12``. Anything else is a PolicyError.
    """
    if not isinstance(text, str):
        raise PolicyError(f"version must be a string like '10.3.0.30', not {type(text).__name__} {text!r}")
    m = _VERSION_RE.match(text.strip())
    if not m:
        raise PolicyError(f"cannot read version {text!r}: expected major.minor[.patch[.build]], e.g. '10.3.0.30'")
    parts = tuple(int(p) for p in m.group(1).split("."))
    if len(parts) < 2:
        raise PolicyError(f"cannot read version {text!r}: need at least major.minor, e.g. '10.3'")
    return parts


def _pad4(v: Sequence[int]) -> tuple[int, int, int, int]:
    return tuple(list(v) + [0] * (4 - len(v)))[:4]  # type: ignore[return-value]


def _short(v: Sequence[int], n: int = 3) -> str:
    return ".".join(str(x) for x in _pad4(v)[:n])


def parse_compute_capability(cc: Any) -> tuple[int, int]:
    """``"8.7"``, ``(8, 7)`` or ``[8, 7]`` -> ``(8, 7)``."""
    if isinstance(cc, str):
        m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", cc)
        if m:
            return int(m.group(1)), int(m.group(2))
    elif isinstance(cc, (tuple, list)) and len(cc) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                              for x in cc):
        return int(cc[0]), int(cc[1])
    raise PolicyError(f"compute capability must look like '8.7', not {cc!r}")


def _cc_str(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def describe_cc(cc: tuple[int, int]) -> str:
    name = _ARCH.get(tuple(cc))
    return f"{_cc_str(cc)} ({name})" if name else _cc_str(cc)


def normalize_hardware_compat(level: Any) -> str:
    """None/'none' -> 'none'; 'AMPERE_PLUS', 'ampere-plus' -> 'ampere_plus'; ..."""
    if level is None:
        return "none"
    if not isinstance(level, str):
        raise PolicyError(f"hardware compatibility level must be one of {', '.join(HARDWARE_COMPAT_LEVELS)}, "
                          f"not {level!r}")
    key = level.strip().lower().replace("-", "_")
    key = {"ampere+": "ampere_plus", "same_cc": "same_compute_capability"}.get(key, key)
    if key not in HARDWARE_COMPAT_LEVELS:
        raise PolicyError(f"hardware compatibility level {level!r} is not one of {', '.join(HARDWARE_COMPAT_LEVELS)}")
    return key


def check_int(value: Any, what: str, *, minimum: int = 0) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``, else a PolicyError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"{what} must be an integer, not {value!r}")
    if value < minimum:
        raise PolicyError(f"{what} must be >= {minimum}, not {value}")
    return value


# --- batch and optimisation profiles ---------------------------------------------------------
def parse_batch(text: str) -> tuple[int, int, int]:
    """``"1,4,8"`` -> ``(1, 4, 8)``; ``"8"`` -> ``(8, 8, 8)`` (a fixed batch)."""
    if not isinstance(text, str) or not text.strip():
        raise PolicyError(f"--batch must be MIN,OPT,MAX (e.g. 1,4,8) or one fixed size (e.g. 8), not {text!r}")
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, 3) or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise PolicyError(f"--batch {text!r}: expected MIN,OPT,MAX (e.g. 1,4,8) or one fixed size (e.g. 8)")
    values = tuple(int(p) for p in parts)
    batch = values * 3 if len(values) == 1 else values
    return check_batch(batch)  # type: ignore[arg-type]


def check_batch(batch: Sequence[int]) -> tuple[int, int, int]:
    """Validate a (min, opt, max) batch triple: 1 <= min <= opt <= max <= MAX_BATCH."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        raise PolicyError(f"batch must be (min, opt, max), not {batch!r}")
    lo, opt, hi = (check_int(b, f"batch {name}", minimum=1) for b, name in zip(batch, ("min", "opt", "max")))
    if not lo <= opt <= hi:
        raise PolicyError(f"batch (min, opt, max) = ({lo}, {opt}, {hi}) must satisfy 1 <= min <= opt <= max")
    if hi > MAX_BATCH:
        raise PolicyError(f"batch max {hi} is larger than {MAX_BATCH}; a profile that large wastes device memory")
    return lo, opt, hi


def _is_dynamic(dim: Any) -> bool:
    return dim is None or isinstance(dim, str) or (isinstance(dim, int) and not isinstance(dim, bool) and dim < 0)


def profile_shapes(inputs: Mapping[str, Sequence[Any]], batch: Sequence[int] = (1, 1, 8)
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """The optimisation profile: ``{input name: (min_shape, opt_shape, max_shape)}``.

    ``inputs`` maps each network input to its shape, where the first (batch) axis may be
    dynamic (``-1`` as TensorRT reports it, ``None``, or a name such as ``"batch"`` as the
    manifest writes it). Every other axis must be static: a second dynamic axis would need
    its own min/opt/max, which this runtime does not guess. A static batch axis is kept as
    it is, and then ``batch`` must be that fixed size.
    """
    lo, opt, hi = check_batch(batch)
    if not isinstance(inputs, Mapping) or not inputs:
        raise PolicyError("the network has no inputs to build an optimisation profile for")
    out = {}
    for name, shape in inputs.items():
        shape = list(shape)
        if not shape:
            raise PolicyError(f"input {name!r} is a scalar; expected (batch, ...)")
        for i, d in enumerate(shape[1:], start=1):
            if _is_dynamic(d):
                raise PolicyError(f"input {name!r} has a dynamic axis {i} ({d!r}) besides the batch axis; "
                                  f"only the batch axis may be dynamic. Re-export with a fixed size "
                                  f"(shape is {shape}).")
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                raise PolicyError(f"input {name!r} axis {i} is {d!r}; dimensions must be positive integers")
        rest = tuple(int(d) for d in shape[1:])
        first = shape[0]
        if _is_dynamic(first):
            out[name] = ((lo,) + rest, (opt,) + rest, (hi,) + rest)
        else:
            if isinstance(first, bool) or not isinstance(first, int) or first < 1:
                raise PolicyError(f"input {name!r} batch axis is {first!r}; expected a positive integer or dynamic")
            if (lo, opt, hi) != (first, first, first):
                raise PolicyError(f"input {name!r} has a fixed batch of {first} (shape {shape}); the engine can only "
                                  f"run batch {first}, but batch {lo},{opt},{hi} was asked. Pass --batch {first} "
                                  "or re-export with a dynamic batch axis.")
            fixed = (first,) + rest
            out[name] = (fixed, fixed, fixed)
    return out


def check_dla_profile(shapes: Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]]) -> None:
    """DLA has no dynamic dimensions (min == opt == max), batch <= 4096, other dims <= 8192."""
    for name, (lo, opt, hi) in shapes.items():
        if not (tuple(lo) == tuple(opt) == tuple(hi)):
            raise PolicyError(f"DLA does not support dynamic dimensions: input {name!r} profile is "
                              f"min {tuple(lo)}, opt {tuple(opt)}, max {tuple(hi)}. Pass one fixed batch, e.g. --batch {hi[0]}.")
        if hi[0] > DLA_MAX_BATCH:
            raise PolicyError(f"DLA supports batch <= {DLA_MAX_BATCH}; input {name!r} asks {hi[0]}")
        big = [d for d in hi[1:] if d > DLA_MAX_DIM]
        if big:
            raise PolicyError(f"DLA supports non-batch dimensions <= {DLA_MAX_DIM}; input {name!r} has {tuple(hi)}")


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


# --- compatibility records ---------------------------------------------------------------------
#: ``tensorrt_cuda`` is the CUDA major of the TensorRT build (from its distribution: cu12, cu13;
#: null when unknown) and the one CUDA value compared; ``cuda_version`` is what older records
#: held (cuda-python's own CUDA runtime, which says nothing about TensorRT): information only.
#: ``lean_runtime_embedded``: null for ordinary plans; for version-compatible ones, false when
#: built with EXCLUDE_LEAN_RUNTIME (then only the exact TensorRT version runs it).
RECORD_FIELDS = ("tensorrt_version", "tensorrt_cuda", "cuda_version", "gpu_name", "compute_capability", "dla_core",
                 "hardware_compatibility", "version_compatible", "lean_runtime_embedded", "plan_sha256", "platform")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def compatibility_record(*, tensorrt_version: str, gpu_name: str, compute_capability: Any, plan_sha256: str,
                         tensorrt_cuda: str | None = None, cuda_version: str | None = None,
                         dla_core: int | None = None, hardware_compatibility: str | None = None,
                         version_compatible: bool = False, lean_runtime_embedded: bool | None = None,
                         platform: str | None = None) -> dict:
    """The ``compatibility`` object stored with a tensorrt-plan artifact in the manifest."""
    if version_compatible and lean_runtime_embedded is None:
        lean_runtime_embedded = True
    rec = {
        "tensorrt_version": tensorrt_version,
        "tensorrt_cuda": tensorrt_cuda,
        "cuda_version": cuda_version,
        "gpu_name": gpu_name,
        "compute_capability": _cc_str(parse_compute_capability(compute_capability)),
        "dla_core": dla_core,
        "hardware_compatibility": normalize_hardware_compat(hardware_compatibility),
        "version_compatible": version_compatible,
        "lean_runtime_embedded": lean_runtime_embedded,
        "plan_sha256": plan_sha256,
        "platform": platform,
    }
    problems = record_problems(rec)
    if problems:
        raise PolicyError("invalid compatibility record: " + "; ".join(problems))
    return rec


def record_problems(record: Any) -> list[str]:
    """Why ``record`` is not a usable compatibility record (empty list if it is)."""
    if not isinstance(record, Mapping):
        return [f"the compatibility record is {type(record).__name__}, not an object"]
    problems = []
    for key in ("tensorrt_version", "gpu_name", "compute_capability", "plan_sha256"):
        if key not in record or record[key] in (None, ""):
            problems.append(f"the compatibility record lacks {key!r}")
    try:
        if record.get("tensorrt_version"):
            parse_version(record["tensorrt_version"])
    except PolicyError as exc:
        problems.append(str(exc))
    try:
        if record.get("compute_capability") not in (None, ""):
            parse_compute_capability(record["compute_capability"])
    except PolicyError as exc:
        problems.append(str(exc))
    sha = record.get("plan_sha256")
    if sha and not (isinstance(sha, str) and _SHA_RE.match(sha)):
        problems.append(f"plan_sha256 {sha!r} is not a lowercase hex sha256")
    dla = record.get("dla_core")
    if dla is not None and (isinstance(dla, bool) or not isinstance(dla, int) or dla < 0):
        problems.append(f"dla_core {dla!r} is not null or a non-negative integer")
    if not isinstance(record.get("version_compatible", False), bool):
        problems.append(f"version_compatible {record.get('version_compatible')!r} is not true or false")
    try:
        normalize_hardware_compat(record.get("hardware_compatibility"))
    except PolicyError as exc:
        problems.append(str(exc))
    lean = record.get("lean_runtime_embedded")
    if lean is not None and not isinstance(lean, bool):
        problems.append(f"lean_runtime_embedded {lean!r} is not null, true or false")
    elif lean is not None and not record.get("version_compatible"):
        problems.append("lean_runtime_embedded is set on a plan that is not version-compatible")
    for key in ("tensorrt_cuda", "cuda_version", "platform", "gpu_name"):
        if record.get(key) is not None and not isinstance(record.get(key), str):
            problems.append(f"{key} {record.get(key)!r} is not a string")
    return problems


def lean_runtime_embedded(record: Mapping[str, Any]) -> bool | None:
    """None for an ordinary plan; True/False for a version-compatible one (older records: True)."""
    if not record.get("version_compatible"):
        return None
    lean = record.get("lean_runtime_embedded")
    return True if lean is None else bool(lean)


@dataclass(frozen=True)
class Difference:
    message: str
    #: can ``edgeinfer build`` on this device produce an equivalent plan?
    rebuildable: bool = True


def _version_rule(built: tuple[int, ...], built_s: str, here: tuple[int, ...], here_s: str,
                  version_compatible: bool, lean_embedded: bool | None = None) -> Difference | None:
    b, h = _pad4(built), _pad4(here)
    if version_compatible and lean_embedded is False:
        # IRuntime.load_runtime: a plan built VERSION_COMPATIBLE + EXCLUDE_LEAN_RUNTIME runs on a
        # lean runtime "built with the same version of TensorRT" (TensorRT's own API docs)
        if b != h:
            return Difference(f"built version-compatible with TensorRT {built_s} but without its lean runtime "
                              f"(EXCLUDE_LEAN_RUNTIME), this device has {here_s} (such plans run only on the exact "
                              "TensorRT version that built them)")
        return None
    if not version_compatible:
        # "By default, TensorRT engines are compatible only with the version of TensorRT used to
        # build them" (engine-compatibility.html); the DRIVE OS notes spell it out: major, minor,
        # patch and build must match.
        if b != h:
            return Difference(f"built with TensorRT {built_s}, this device has {here_s} (plans are not portable "
                              "across TensorRT versions unless built version-compatible)")
        return None
    # Version-compatible plans run on the same or a newer runtime of the same major, and
    # 8 -> 10 and 10 -> 11 across majors; never on an older runtime (support-matrix 11.4.1).
    if h < b:
        return Difference(f"built version-compatible with TensorRT {built_s}, this device has the older "
                          f"{here_s} (version-compatible plans run only on the same or a newer TensorRT)")
    if b[0] != h[0] and (b[0], h[0]) not in ((8, 10), (10, 11)):
        return Difference(f"built version-compatible with TensorRT {built_s}, this device has {here_s} "
                          "(across major versions only TensorRT 8 -> 10 and 10 -> 11 are supported)")
    return None


def _differences(record: Any, device: Mapping[str, Any], plan_sha256: str | None = None) -> list[Difference]:
    problems = record_problems(record)
    if problems:
        return [Difference(p + " (the plan cannot be checked, so it will not be loaded)") for p in problems]
    out: list[Difference] = []
    if plan_sha256 is not None and plan_sha256 != record["plan_sha256"]:
        out.append(Difference(f"the plan's sha256 is {plan_sha256[:16]}…, its compatibility record says "
                              f"{record['plan_sha256'][:16]}…"))
    dev_trt = device.get("tensorrt_version")
    if not dev_trt:
        out.append(Difference("this device has no TensorRT (install the 'trt' extra)", rebuildable=False))
    else:
        try:
            here = parse_version(dev_trt)
        except PolicyError as exc:
            out.append(Difference(f"this device's TensorRT version is unreadable: {exc}", rebuildable=False))
        else:
            if here[:2] < MIN_TENSORRT:
                out.append(Difference(f"this device has TensorRT {dev_trt}; edgeinfer needs 10 or newer",
                                      rebuildable=False))
            built = parse_version(record["tensorrt_version"])
            d = _version_rule(built, record["tensorrt_version"], here, dev_trt,
                              bool(record.get("version_compatible")), lean_runtime_embedded(record))
            if d:
                out.append(d)
    out.extend(_runtime_rule(record, device.get("tensorrt_runtime")))
    rec_platform, dev_platform = record.get("platform"), device.get("platform")
    if rec_platform and dev_platform and rec_platform != dev_platform:
        out.append(Difference(f"built on {rec_platform}, this device is {dev_platform} (serialized engines are "
                              "not portable across platforms)"))
    rec_cuda, dev_cuda = _cuda_major(record.get("tensorrt_cuda")), _cuda_major(device.get("tensorrt_cuda"))
    # edgeinfer policy (not a TensorRT rule): a TensorRT built for another CUDA major (the cu12
    # and cu13 packages) is another TensorRT build, so the plan is not loaded. Only the CUDA
    # majors of the TensorRT distributions are compared; cuda-python's version says nothing.
    if rec_cuda and dev_cuda and rec_cuda != dev_cuda:
        out.append(Difference(f"built with a TensorRT for CUDA {rec_cuda}, this device's TensorRT is built for "
                              f"CUDA {dev_cuda} (the cu{rec_cuda} and cu{dev_cuda} packages are different builds)"))
    dev_cc = device.get("compute_capability")
    rec_cc = parse_compute_capability(record["compute_capability"])
    level = normalize_hardware_compat(record.get("hardware_compatibility"))
    if level != "none" and device.get("integrated"):
        out.append(Difference(f"built hardware-compatible ({level}); hardware compatibility is not supported on "
                              "JetPack / integrated GPUs (build a plan without --hardware-compat on this device)",
                              rebuildable=False))
    if dev_cc in (None, ""):
        out.append(Difference("this device reports no CUDA GPU", rebuildable=False))
    else:
        here_cc = parse_compute_capability(dev_cc)
        if level == "ampere_plus":
            # "Require that the engine is compatible with Ampere and newer GPUs" (HardwareCompatibilityLevel)
            if here_cc < (8, 0):
                out.append(Difference(f"built hardware-compatible for Ampere and newer (compute capability >= 8.0), "
                                      f"this GPU is {describe_cc(here_cc)}"))
        elif here_cc != rec_cc:
            why = ("plans built with hardware compatibility same_compute_capability run only on that compute "
                   "capability" if level == "same_compute_capability"
                   else "plans are not portable across GPU architectures unless built hardware-compatible")
            out.append(Difference(f"built for compute capability {describe_cc(rec_cc)}, this GPU is "
                                  f"{describe_cc(here_cc)} ({why})"))
    dla = record.get("dla_core")
    if dla is not None:
        n = device.get("dla_cores")
        if not n:
            out.append(Difference(f"built for DLA core {dla}, this device has no DLA", rebuildable=False))
        elif dla >= n:
            out.append(Difference(f"built for DLA core {dla}, this device has {n} DLA core(s)", rebuildable=False))
    return out


def _cuda_major(value: Any) -> str | None:
    text = str(value).strip() if value not in (None, "") else ""
    major = text.split(".")[0]
    return major if major.isdigit() else None


def _runtime_rule(record: Mapping[str, Any], runtime: str | None) -> list[Difference]:
    """The lean and dispatch runtimes deserialize version-compatible plans only (NVIDIA/TensorRT
    #4790: an ordinary plan fails there with "Unexpected call to stub loadRunner"), and the
    dispatch runtime runs the lean runtime a plan carries, so not a plan built without one."""
    if runtime not in ("tensorrt_lean", "tensorrt_dispatch"):
        return []
    what = "lean" if runtime == "tensorrt_lean" else "dispatch"
    if not record.get("version_compatible"):
        return [Difference(f"this device has only TensorRT's {what} runtime ({runtime}), which runs version-compatible "
                           "plans only; this plan is not one (rebuild it with edgeinfer build --version-compatible on "
                           "a machine with the full TensorRT)", rebuildable=False)]
    if runtime == "tensorrt_dispatch" and lean_runtime_embedded(record) is False:
        return [Difference("the plan was built without its lean runtime (EXCLUDE_LEAN_RUNTIME) and this device has "
                           "only the dispatch runtime, which runs the lean runtime a plan carries",
                           rebuildable=False)]
    return []


def check_compatibility(record: Any, device: Mapping[str, Any], *, plan_sha256: str | None = None) -> list[str]:
    """What differs between a plan's compatibility record and this device (empty: may load).

    ``device`` is a mapping like ``device_info()`` returns (``tensorrt_version``,
    ``tensorrt_runtime``, ``tensorrt_cuda``, ``gpu_name``, ``compute_capability``,
    ``integrated``, ``dla_cores``, ``platform``).
    Pass ``plan_sha256`` (of the bytes actually read) to check it against the record too.
    """
    return [d.message for d in _differences(record, device, plan_sha256)]


def compatibility_warnings(record: Any, device: Mapping[str, Any]) -> list[str]:
    """Differences that do not block loading but are worth reporting."""
    if record_problems(record):
        return []
    out = []
    level = normalize_hardware_compat(record.get("hardware_compatibility"))
    rec_name, dev_name = record.get("gpu_name"), device.get("gpu_name")
    if level == "none" and rec_name and dev_name and rec_name != dev_name:
        out.append(f"built on {rec_name}, running on {dev_name} (same compute capability; TensorRT tunes plans for "
                   "the GPU model they were built on, so performance may differ)")
    if record.get("version_compatible") and device.get("tensorrt_version") and \
            device.get("tensorrt_version") != record.get("tensorrt_version"):
        out.append(f"version-compatible plan built with TensorRT {record['tensorrt_version']} runs on "
                   f"{device['tensorrt_version']} through its embedded lean runtime")
    if record.get("tensorrt_cuda") and not device.get("tensorrt_cuda"):
        out.append("this device's TensorRT does not say which CUDA it was built for; the plan's CUDA "
                   f"({record['tensorrt_cuda']}) could not be checked")
    return out


def rebuild_decision(record: Any, device: Mapping[str, Any], allow_rebuild: bool, *,
                     plan_sha256: str | None = None) -> tuple[str, list[str]]:
    """``("load", [])``, ``("rebuild", reasons)`` or ``("refuse", reasons)``.

    "rebuild" only when the caller allows it and a build on this device can produce an
    equivalent plan; a plan for hardware this device lacks (DLA, a GPU) is refused.
    """
    diffs = _differences(record, device, plan_sha256)
    if not diffs:
        return "load", []
    reasons = [d.message for d in diffs]
    if allow_rebuild and all(d.rebuildable for d in diffs):
        return "rebuild", reasons
    return "refuse", reasons


def incompatible_error(artifact_id: str, differences: Sequence[str], *, allow_rebuild_hint: bool = True
                       ) -> PlanIncompatible:
    """The error raised instead of deserializing a plan that does not match this device."""
    lines = "\n".join(f"  - {d}" for d in differences)
    hint = ("\nRebuild it on this device (edgeinfer build BUNDLE --precision ...) or run the ONNX artifact "
            "with another backend." if allow_rebuild_hint else "")
    return PlanIncompatible(f"TensorRT plan {artifact_id} was not loaded: it does not match this device "
                            f"(a plan is executable code and is only deserialized on the device it was built for):\n"
                            f"{lines}{hint}", differences)


# --- INT8 calibration (TensorRT 10.x) -----------------------------------------------------------
def calibration_batches(x: Any, batch: int, *, last: str = "drop") -> list:
    """Split a calibration tensor stack ``x`` (N, ...) into batches of exactly ``batch``.

    TensorRT feeds every calibration batch at the calibration profile's shape, so all
    batches have the same size. ``last`` decides the final partial batch:
    ``"drop"`` (default) leaves it out; ``"pad"`` fills it with samples from the start of
    the set (every sample is seen, a few twice); ``"error"`` refuses a set that does not
    divide evenly.
    """
    import numpy as np

    batch = check_int(batch, "calibration batch", minimum=1)
    if last not in ("drop", "pad", "error"):
        raise PolicyError(f"last-batch policy {last!r} is not one of drop, pad, error")
    if not isinstance(x, np.ndarray) or x.ndim < 2:
        raise PolicyError(f"calibration data must be a numpy array (N, ...) with a sample axis, "
                          f"not {type(x).__name__}{getattr(x, 'shape', '')}")
    n = x.shape[0]
    if n == 0:
        raise PolicyError("the calibration set is empty")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise PolicyError("the calibration set contains NaN or infinite values; fix the preprocessing first")
    full, rest = divmod(n, batch)
    if rest and last == "error":
        raise PolicyError(f"{n} calibration samples do not divide into batches of {batch} ({rest} left over)")
    if full == 0 and last == "drop":
        raise PolicyError(f"the calibration set has {n} samples, fewer than one batch of {batch}; "
                          "use a smaller batch or last='pad'")
    out = [np.ascontiguousarray(x[i * batch:(i + 1) * batch]) for i in range(full)]
    if rest and last == "pad":
        idx = [(full * batch + k) % n for k in range(rest)] + [k % n for k in range(batch - rest)]
        out.append(np.ascontiguousarray(x[idx]))
    return out


__all__ = [
    "PRECISIONS", "GRAPH_FOR", "HARDWARE_COMPAT_LEVELS", "PolicyError", "PlanIncompatible", "BuildPlan",
    "parse_version", "parse_compute_capability", "describe_cc", "normalize_hardware_compat", "parse_batch",
    "check_batch", "profile_shapes", "check_dla_profile", "build_plan", "compatibility_record",
    "record_problems", "check_compatibility", "compatibility_warnings", "rebuild_decision",
    "incompatible_error", "calibration_batches", "check_int", "CALIBRATION_METHODS",
]
