"""Whether a built plan may be loaded here: the compatibility record stored with a plan
(:func:`compatibility_record`), what differs between it and this device
(:func:`check_compatibility`, :func:`compatibility_warnings`), whether a rebuild could help
(:func:`rebuild_decision`), and the error that says so (:func:`incompatible_error`)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import PlanIncompatible, PolicyError
from .versions import (MIN_TENSORRT, _cc_str, _pad4, describe_cc, normalize_hardware_compat, parse_compute_capability,
                       parse_version)


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
