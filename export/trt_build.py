"""``edgeinfer build``: a bundle's typed ONNX graph -> a TensorRT plan in the same bundle.

Run on the device that will execute the plan (a Jetson, or the x86 GPU host): plans are
not portable across TensorRT versions, GPU architectures or platforms unless built
version- / hardware-compatible, and the plan's compatibility record says which.

What is built is decided by :func:`edgeinfer.trt_policy.build_plan` (pure, unit-tested);
this module only translates that plan into TensorRT calls, following the shape of
NVIDIA's ``samples/python`` engine builders and Polygraphy's ``CreateConfig`` (read for
the design, not copied):

  Builder -> network (creation flags looked up by name) -> OnnxParser (every error listed)
  -> builder config (WORKSPACE pool, flags, TF32 cleared, optimisation profile, DLA,
  timing cache loaded and saved back, hardware/version compatibility)
  -> build_serialized_network -> deserialize once as a check -> ``<precision>.plan`` +
  manifest record (``format: tensorrt-plan`` with a ``compatibility`` object).

INT8 is built from the bundle's Q/DQ graph (explicit quantization). Only on TensorRT 10.x,
and only when asked, the FP32 graph is calibrated with ``IInt8EntropyCalibrator2`` and a
calibration cache keyed on (graph sha256, preprocessing digest, method, TensorRT version,
calibration data digest), so a stale cache is never reused (:mod:`edgeinfer_export.trt_calibration_cache`).
TensorRT 11 has no calibrators. The CUDA/TensorRT plumbing shared with the runner (lazy
imports, CUDA error checks, the TensorRT logger, ``device_info``) is
:mod:`edgeinfer.backends.cuda`.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeinfer import __version__ as edgeinfer_version
from edgeinfer import onnxgraph, trt_policy
from edgeinfer._io import atomic_write, cache_root
from edgeinfer.backends import cuda
from edgeinfer.backends.cuda import device_info  # re-exported: the device a plan is built for and checked against
from edgeinfer.bundle import artifact_record, load_bundle, upsert_artifact, write_manifest
from edgeinfer.errors import ArtifactNotFound, BackendUnavailable, ExportError, PrecisionNotValidated, UsageError
from edgeinfer.trt_policy import PolicyError

from .trt_calibration_cache import (calibration_cache_key, calibration_cache_name, data_digest,
                                    load_calibration_cache, save_calibration_cache)

log = logging.getLogger("edgeinfer.build")

#: sentinel for build_engine(timing_cache=...): a per-device file under the user cache directory
AUTO = "auto"


def _trt():
    return cuda.import_tensorrt(purpose="edgeinfer build")


def cache_dir() -> Path:
    return cache_root() / "tensorrt"


def default_timing_cache(device: dict) -> Path:
    """A timing cache per TensorRT version and GPU: tactics timed on one GPU mean nothing on another."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", device.get("gpu_name") or "gpu").strip("-").lower()
    cc = (device.get("compute_capability") or "0.0").replace(".", "")
    return cache_dir() / f"timing-trt{device.get('tensorrt_version', '0')}-sm{cc}-{gpu}.cache"


# --- INT8 calibration (TensorRT 10.x only) --------------------------------------------------
@dataclass
class CalibrationSet:
    """Preprocessed calibration tensors (N, C, H, W), made with the bundle's own preprocessing."""

    data: np.ndarray
    batch: int = 8
    last: str = "drop"          # final partial batch: drop | pad | error (trt_policy.calibration_batches)
    cache_dir: Path | None = None  # outside the bundle (a bundle refuses unknown files)


def _as_calibration(calibration: Any) -> CalibrationSet | None:
    if calibration is None or isinstance(calibration, CalibrationSet):
        return calibration
    if isinstance(calibration, np.ndarray):
        return CalibrationSet(calibration)
    if isinstance(calibration, (str, Path)):
        p = Path(calibration)
        if p.suffix != ".npy" or not p.is_file():
            raise UsageError(f"--calibration {p}: expected an existing .npy file of preprocessed tensors (N, C, H, W)")
        return CalibrationSet(np.load(p, allow_pickle=False))
    raise UsageError(f"calibration must be a CalibrationSet, a numpy array or a .npy path, not {type(calibration).__name__}")


def _kept(method):
    """Keep an exception raised inside a calibrator callback instead of handing it to TensorRT.

    TensorRT's Python wrapper catches an exception in ``get_batch``, ``read_calibration_cache``
    or ``write_calibration_cache``, prints it and carries on as if the callback had returned
    None/False: calibration silently stops early. The first exception is kept on the
    calibrator (``error``) and :meth:`raise_if_failed` re-raises it after the build.
    """
    @functools.wraps(method)
    def guarded(self, *args):
        if self.error is not None:
            return None  # one failure ends the feed; the rest of the build is thrown away
        try:
            return method(self, *args)
        except BaseException as exc:  # noqa: BLE001 - re-raised by raise_if_failed
            self.error = exc
            return None
    return guarded


def make_entropy_calibrator(trt, batches: Sequence[np.ndarray], *, input_name: str, cache_dir: Path, key: dict):
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` through one device buffer.

    ``read_calibration_cache`` returns a cache only when its key record matches ``key``
    (:func:`edgeinfer_export.trt_calibration_cache.check_calibration_cache`); ``write_calibration_cache``
    saves it with the key. Errors inside the callbacks are kept, not lost (:func:`_kept`).
    """
    cudart = cuda.import_cudart()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # required by the pybind trampoline
            self._batches = list(batches)
            self._index = 0
            self._nbytes = max((b.nbytes for b in self._batches), default=0)
            self._device = cuda.check(cudart.cudaMalloc(self._nbytes), "cudaMalloc", cudart) if self._nbytes else 0
            self.cache_rejected: list[str] = []
            self.cache_read = False
            self.cache_written: Path | None = None
            self.batches_fed = 0
            self.error: BaseException | None = None

        def raise_if_failed(self) -> None:
            """After build_serialized_network: the kept callback error, or a feed that stopped early."""
            if self.error is not None:
                raise ExportError(f"INT8 calibration failed inside TensorRT's calibrator callback "
                                  f"({type(self.error).__name__}: {self.error}); no plan was written") from self.error
            if not self.cache_read and self.batches_fed != len(self._batches):
                raise ExportError(f"TensorRT took {self.batches_fed} of the {len(self._batches)} calibration batches "
                                  "and stopped; the scales would come from part of the data, so no plan was written")

        def get_batch_size(self):  # deprecated in 10.x (explicit batch); must still match the profile
            return int(self._batches[0].shape[0]) if self._batches else 1

        @_kept
        def get_batch(self, names):
            if self._index >= len(self._batches):
                return None
            if list(names) != [input_name]:
                raise ExportError(f"the calibrator feeds input {input_name!r}; TensorRT asked for {list(names)}")
            x = np.ascontiguousarray(self._batches[self._index], dtype=np.float32)
            self._index += 1
            kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            cuda.check(cudart.cudaMemcpy(self._device, x.ctypes.data, x.nbytes, kind), "cudaMemcpy", cudart)
            self.batches_fed += 1
            return [int(self._device)]

        @_kept
        def read_calibration_cache(self):
            data, why = load_calibration_cache(cache_dir, key)
            name = calibration_cache_name(key)
            if data is None:
                self.cache_rejected = [w for w in why if "no such calibration cache" not in w]
                for w in self.cache_rejected:
                    log.warning("calibration cache not reused: %s", w)
                return None
            log.info("reusing calibration cache %s", name)
            self.cache_read = True
            return data

        @_kept
        def write_calibration_cache(self, cache):
            self.cache_written = save_calibration_cache(cache_dir, key, bytes(memoryview(cache)))

        def free(self):
            if self._device:
                cuda.check(cudart.cudaFree(self._device), "cudaFree", cudart)
                self._device = 0

    return EntropyCalibrator()


# --- the build -------------------------------------------------------------------------------
def _flags(enum, names: Sequence[str], what: str) -> list:
    out = []
    for n in names:
        if not hasattr(enum, n):
            raise ExportError(f"this TensorRT has no {what} {n}; the build policy asked for it (a TensorRT "
                              "version the policy does not know?)")
        out.append(getattr(enum, n))
    return out


def _parse(trt, network, logger, path: Path, plan: trt_policy.BuildPlan):
    parser = trt.OnnxParser(network, logger)
    for flag in plan.parser_flags:
        if hasattr(trt, "OnnxParserFlag") and hasattr(trt.OnnxParserFlag, flag):
            parser.set_flag(getattr(trt.OnnxParserFlag, flag))
    ok = parser.parse_from_file(str(path))  # from the file: resolves external data next to it
    if not ok:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors[-5:]
        raise ExportError(f"TensorRT's ONNX parser rejected {path.name} ({len(errors)} error(s)):\n"
                          + "\n".join(f"  - {e}" for e in errors)
                          + "\nCheck the operators against the TensorRT ONNX support matrix, or re-export.")
    return parser


def _source_artifact(bundle, plan: trt_policy.BuildPlan):
    try:
        source = bundle.artifact(precision=plan.graph, format="onnx")
    except ArtifactNotFound as exc:
        raise ExportError(f"{exc} A {plan.precision} engine is built from the {plan.graph} ONNX graph: produce it "
                          "first (precision lives in the graph).") from exc
    val = source.validation or {}
    if val.get("passed") is False:
        raise PrecisionNotValidated(f"artifact {source.id} ({source.precision}) failed its accuracy gate; "
                                    "it will not be built into an engine.")
    info = onnxgraph.inspect(source.path)
    if plan.graph == "int8":
        if not info.qdq_nodes:
            raise ExportError(f"artifact {source.id} is labelled int8 but has no Q/DQ nodes; TensorRT builds INT8 "
                              "from an explicitly quantized (Q/DQ) graph.")
        if info.quant_form != "int8-symmetric":
            raise ExportError(f"artifact {source.id} is quantized as {info.quant_form}; TensorRT accepts signed "
                              "INT8 with zero point 0 (symmetric). Re-quantize it.")
    return source, info


def build_engine(bundle_dir: str | os.PathLike, precision: str, *, workspace_mb: int | None = None,
                 dla_core: int | None = None, batch: Sequence[int] = (1, 1, 8),
                 timing_cache: str | os.PathLike | None = AUTO, calibration: Any = None,
                 hardware_compat: str | None = None, version_compat: bool = False,
                 exclude_lean_runtime: bool = False,
                 builder_optimization_level: int | None = None, device_id: int = 0) -> dict:
    """Build a ``precision`` TensorRT plan from ``bundle_dir``'s graph; write it and its record.

    Returns the new artifact record (already written to ``manifest.json``). ``timing_cache``
    is a file path, ``"auto"`` (a per-TensorRT-version, per-GPU file under
    ``$XDG_CACHE_HOME/edgeinfer/tensorrt``) or None (not persisted). ``calibration``
    (TensorRT 10.x, INT8 only) is a CalibrationSet, an (N, C, H, W) array or a .npy path of
    tensors preprocessed with the bundle's spec; it selects the implicit-calibration path.
    ``exclude_lean_runtime`` (with ``version_compat``) leaves the lean runtime out of the plan.
    """
    bundle_dir = Path(bundle_dir)
    batch = trt_policy.check_batch(tuple(batch))
    if workspace_mb is not None:
        trt_policy.check_int(workspace_mb, "workspace (MB)", minimum=1)
    if builder_optimization_level is not None:
        trt_policy.check_int(builder_optimization_level, "builder optimisation level", minimum=0)
    if precision not in trt_policy.PRECISIONS:
        raise PolicyError(f"precision {precision!r} is not one of {', '.join(trt_policy.PRECISIONS)}")
    calib = _as_calibration(calibration)
    bundle = load_bundle(bundle_dir)
    trt = _trt()
    device = device_info(device_id, (trt, "tensorrt"))
    plan = trt_policy.build_plan(
        str(trt.__version__), precision, dla_core=dla_core, hardware_compat=hardware_compat,
        version_compat=version_compat, exclude_lean_runtime=exclude_lean_runtime,
        calibrator=calib is not None, batch=batch, device=device,
        strongly_typed_available=hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"))
    for w in plan.warnings:
        log.warning("%s", w)
    source, info = _source_artifact(bundle, plan)

    logger = cuda.make_logger(trt)
    logger.errors.clear()
    builder = trt.Builder(logger)
    net_flags = 0
    for f in _flags(trt.NetworkDefinitionCreationFlag, plan.network_flags, "network creation flag"):
        net_flags |= 1 << int(f)
    network = builder.create_network(net_flags)
    parser = _parse(trt, network, logger, source.path, plan)  # kept alive with the network

    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    shapes = trt_policy.profile_shapes(inputs, batch)
    if plan.dla_core is not None:
        trt_policy.check_dla_profile(shapes)

    config = builder.create_builder_config()
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    for f in _flags(trt.BuilderFlag, plan.builder_flags, "builder flag"):
        config.set_flag(f)
    for name in plan.clear_builder_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    if builder_optimization_level is not None:
        config.builder_optimization_level = int(builder_optimization_level)
    if plan.hardware_compatibility != "none":
        (config.hardware_compatibility_level,) = _flags(trt.HardwareCompatibilityLevel,
                                                        [plan.hardware_compatibility.upper()],
                                                        "hardware compatibility level")
    vc_plugins: list[str] = []
    if plan.version_compatible:
        # a version-compatible plan must carry the plugin libraries the parser used (trtexec does so)
        vc_plugins = [str(p) for p in (parser.get_used_vc_plugin_libraries()
                                       if hasattr(parser, "get_used_vc_plugin_libraries") else [])]
        if vc_plugins:
            config.plugins_to_serialize = vc_plugins
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    if config.add_optimization_profile(profile) < 0:
        raise ExportError(f"TensorRT rejected the optimisation profile {shapes}: " + "; ".join(logger.errors[-3:]))
    if plan.dla_core is not None:
        if builder.num_DLA_cores <= plan.dla_core:
            raise PolicyError(f"DLA core {plan.dla_core} asked; TensorRT sees {builder.num_DLA_cores} DLA core(s)")
        if builder.max_DLA_batch_size < batch[2]:
            raise PolicyError(f"batch {batch[2]} exceeds this DLA's maximum batch {builder.max_DLA_batch_size}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(plan.dla_core)

    # timing cache: load, use, save back (tactic timings only mean something on this GPU)
    tc_path = default_timing_cache(device) if timing_cache == AUTO else (Path(timing_cache) if timing_cache else None)
    tc_bytes = b""
    if tc_path is not None and tc_path.is_file():
        tc_bytes = tc_path.read_bytes()
    cache = config.create_timing_cache(tc_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s does not match this device/TensorRT; starting an empty one", tc_path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    calibrator = None
    calib_record = None
    if plan.calibrator:
        calibrator, calib_record = _setup_calibrator(trt, builder, config, bundle, source, shapes, calib, device)

    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if calibrator is not None:
        calibrator.raise_if_failed()  # before "no plan": the callback's error is the cause
    if serialized is None:
        errors = "\n".join(f"  - {e}" for e in logger.errors[-10:]) or "  (TensorRT logged no error)"
        raise ExportError(f"TensorRT failed to build the {precision} engine from {source.path.name}:\n{errors}")
    plan_bytes = bytes(memoryview(serialized))
    if calibrator is not None:
        calib_record.update({"cache_reused": calibrator.cache_read, "batches_fed": calibrator.batches_fed,
                             "cache_rejected": calibrator.cache_rejected})

    if tc_path is not None:
        try:
            atomic_write(tc_path, bytes(memoryview(config.get_timing_cache().serialize())))
        except OSError as exc:
            log.warning("could not save the timing cache to %s: %s", tc_path, exc)

    _check_plan(trt, plan_bytes, plan, bundle.manifest, logger)
    return _write_artifact(bundle, plan, plan_bytes, source, device, batch=batch, shapes=shapes,
                           workspace_mb=workspace_mb, timing_cache=tc_path, calibration=calib_record,
                           opt_level=builder_optimization_level, parse_info=info, vc_plugins=vc_plugins)


def _setup_calibrator(trt, builder, config, bundle, source, shapes, calib, device):
    from edgeinfer.preprocess import PreprocessSpec

    if len(shapes) != 1:
        raise ExportError(f"the calibrator feeds single-input models; this one has inputs {sorted(shapes)}")
    (input_name, (lo, _opt, hi)), = shapes.items()
    cset = calib
    data = np.asarray(cset.data)
    if data.dtype != np.float32:
        raise UsageError(f"calibration tensors must be float32 (preprocessed with the bundle's spec), not {data.dtype}")
    if tuple(data.shape[1:]) != tuple(hi[1:]):
        raise UsageError(f"calibration tensors have shape {tuple(data.shape)}; the model takes (N, "
                         f"{', '.join(map(str, hi[1:]))})")
    cb = int(cset.batch)
    if not lo[0] <= cb <= hi[0]:
        raise UsageError(f"calibration batch {cb} must lie within the engine's batch range {lo[0]}..{hi[0]}")
    batches = trt_policy.calibration_batches(data, cb, last=cset.last)
    spec = PreprocessSpec.from_manifest(bundle.manifest["preprocessing"])
    key = calibration_cache_key(
        graph_sha256=source.sha256, preprocessing_digest=spec.digest(), method="entropy2",
        tensorrt_version=device["tensorrt_version"], data_digest=data_digest(data), batch=cb)
    cdir = Path(cset.cache_dir) if cset.cache_dir else cache_dir() / "calibration"
    calibrator = make_entropy_calibrator(trt, batches, input_name=input_name, cache_dir=cdir, key=key)
    config.int8_calibrator = calibrator
    calib_profile = builder.create_optimization_profile()
    fixed = (cb,) + tuple(hi[1:])
    calib_profile.set_shape(input_name, fixed, fixed, fixed)
    config.set_calibration_profile(calib_profile)
    record = {"method": "entropy2", "samples": int(data.shape[0]), "batch": cb, "last_batch": cset.last,
              "batches": len(batches), "data_sha256": key["data_digest"], "cache": calibration_cache_name(key),
              "preprocessing_digest": key["preprocessing_digest"]}
    return calibrator, record


def _check_plan(trt, plan_bytes: bytes, plan: trt_policy.BuildPlan, manifest: dict, logger) -> None:
    """Deserialize the new plan once on this device and check its I/O names against the manifest."""
    runtime = trt.Runtime(logger)
    if plan.lean_runtime_embedded is False:
        # no lean runtime inside: deserialize through this TensorRT's own lean runtime library
        try:
            runtime = cuda.load_lean_runtime(runtime, logger)
        except BackendUnavailable as exc:
            raise ExportError(f"the plan was built without its lean runtime and cannot be checked here: {exc}; "
                              "or build without --exclude-lean-runtime") from None
    if plan.dla_core is not None:
        runtime.DLA_core = int(plan.dla_core)
    if plan.version_compatible:
        runtime.engine_host_code_allowed = True  # our own plan, built a moment ago
    engine = runtime.deserialize_cuda_engine(plan_bytes)
    if engine is None:
        raise ExportError("the freshly built plan does not deserialize on this device: "
                          + "; ".join(logger.errors[-3:]))
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    want = {t["name"] for t in manifest["inputs"]} | {t["name"] for t in manifest["outputs"]}
    if names != want:
        raise ExportError(f"the engine's tensors {sorted(names)} differ from the manifest's inputs/outputs "
                          f"{sorted(want)}")


def artifact_names(precision: str, dla_core: int | None) -> tuple[str, str]:
    """(artifact id, file name): ``trt-fp16`` / ``fp16.plan``; DLA: ``trt-fp16-dla0`` / ``fp16-dla0.plan``."""
    suffix = f"-dla{dla_core}" if dla_core is not None else ""
    return f"trt-{precision}{suffix}", f"{precision}{suffix}.plan"


def _write_artifact(bundle, plan, plan_bytes, source, device, *, batch, shapes, workspace_mb, timing_cache,
                    calibration, opt_level, parse_info, vc_plugins=()) -> dict:
    art_id, fname = artifact_names(plan.precision, plan.dla_core)
    sha = hashlib.sha256(plan_bytes).hexdigest()
    compat = trt_policy.compatibility_record(
        tensorrt_version=device["tensorrt_version"], tensorrt_cuda=device.get("tensorrt_cuda"),
        cuda_version=device.get("cuda_python"),
        gpu_name=device["gpu_name"], compute_capability=device["compute_capability"], plan_sha256=sha,
        dla_core=plan.dla_core, hardware_compatibility=plan.hardware_compatibility,
        version_compatible=plan.version_compatible, lean_runtime_embedded=plan.lean_runtime_embedded,
        platform=device.get("platform"))
    produced_by = {
        "tool": "edgeinfer build", "edgeinfer": edgeinfer_version, "tensorrt": device["tensorrt_version"],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "build_plan": plan.as_dict(), "batch": list(batch),
        "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
        "workspace_mb": workspace_mb, "builder_optimization_level": opt_level,
        "timing_cache": bool(timing_cache), "source_opset": parse_info.opset,
    }
    if calibration:
        produced_by["calibration"] = calibration
    if vc_plugins:
        produced_by["serialized_plugins"] = [Path(p).name for p in vc_plugins]
    target = bundle.path / fname
    backup = None
    if target.exists():
        backup = target.with_name(f".{fname}.previous")
        os.replace(target, backup)
    try:
        atomic_write(target, plan_bytes)
        rec = artifact_record(bundle.path, fname, id=art_id, precision=plan.precision, format="tensorrt-plan",
                              produced_by=produced_by, source_artifact=source.id, compatibility=compat)
        if rec["sha256"] != sha:
            raise ExportError(f"{fname} changed while it was being written; try again")
        write_manifest(bundle.path, upsert_artifact(bundle.manifest, rec))
    except BaseException:
        if target.exists():
            target.unlink()
        if backup is not None:
            os.replace(backup, target)
        raise
    if backup is not None and backup.exists():
        backup.unlink()
    return rec


def rebuild_artifact(bundle_dir: str | os.PathLike, artifact_id: str, *, calibration: Any = None,
                     timing_cache: str | os.PathLike | None = AUTO, device_id: int = 0) -> dict:
    """Rebuild plan ``artifact_id`` on this device with the settings recorded when it was built.

    For the CLI after ``trt_policy.rebuild_decision`` said "rebuild" (e.g. TensorRT was
    upgraded). A calibrator-built INT8 plan needs its calibration tensors again: the old
    cache is keyed on the old TensorRT version and is not reused.
    """
    bundle = load_bundle(bundle_dir)
    art = bundle.artifact(id=artifact_id)
    if art.format != "tensorrt-plan":
        raise UsageError(f"artifact {artifact_id} is {art.format}, not a TensorRT plan")
    pb = art.record.get("produced_by") or {}
    bp = pb.get("build_plan") or {}
    compat = art.record.get("compatibility") or {}
    if bp.get("calibrator") and calibration is None:
        raise ExportError(f"{artifact_id} was calibrated with IInt8EntropyCalibrator2; pass the calibration tensors "
                          "again to rebuild it (or build INT8 from the bundle's Q/DQ graph)")
    return build_engine(bundle.path, art.precision, workspace_mb=pb.get("workspace_mb"),
                        dla_core=compat.get("dla_core"), batch=tuple(pb.get("batch") or (1, 1, 8)),
                        timing_cache=timing_cache, calibration=calibration,
                        hardware_compat=compat.get("hardware_compatibility"),
                        version_compat=bool(compat.get("version_compatible", False)),
                        exclude_lean_runtime=trt_policy.lean_runtime_embedded(compat) is False,
                        builder_optimization_level=pb.get("builder_optimization_level"), device_id=device_id)


# --- CLI -------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    """Arguments of ``edgeinfer build`` (call on the subparser)."""
    p.add_argument("bundle", help="bundle folder holding the ONNX graph(s)")
    p.add_argument("--precision", required=True, choices=trt_policy.PRECISIONS,
                   help="fp32 (the exported graph), fp16 (the FP16 graph), int8 (the Q/DQ graph)")
    p.add_argument("--workspace", type=int, default=None, metavar="MB",
                   help="builder workspace memory limit in MiB (default: TensorRT's, the device memory)")
    p.add_argument("--dla-core", type=int, default=None, metavar="N",
                   help="build for Jetson DLA core N (fp16/int8 only, fixed batch; unsupported layers run on the GPU)")
    p.add_argument("--batch", default="1,1,8", metavar="MIN,OPT,MAX",
                   help="batch sizes of the optimisation profile (default 1,1,8); one number for a fixed batch")
    p.add_argument("--timing-cache", default=AUTO, metavar="FILE",
                   help="tactic timing cache, loaded and saved back (default: per GPU under ~/.cache/edgeinfer)")
    p.add_argument("--no-timing-cache", action="store_true", help="do not read or write a timing cache")
    p.add_argument("--calibration", default=None, metavar="NPY",
                   help="TensorRT 10.x only: calibrate the FP32 graph with IInt8EntropyCalibrator2 on these "
                        "preprocessed tensors (N,C,H,W) instead of using the Q/DQ graph")
    p.add_argument("--calibration-batch", type=int, default=8)
    p.add_argument("--hardware-compat", default=None, choices=trt_policy.HARDWARE_COMPAT_LEVELS,
                   help="build a plan that also runs on other GPU architectures (not on Jetson)")
    p.add_argument("--version-compatible", action="store_true",
                   help="build a plan that newer TensorRT versions and the lean runtime can run (embeds a lean runtime)")
    p.add_argument("--exclude-lean-runtime", action="store_true",
                   help="with --version-compatible: leave the lean runtime out of the plan (smaller; it then runs only "
                        "on this exact TensorRT version, and not on the dispatch runtime)")
    p.add_argument("--opt-level", type=int, default=None, help="builder optimisation level 0-5 (default 3)")
    p.add_argument("--json", action="store_true", help="print the new artifact record as JSON")


def cli_build(args) -> int:
    """The ``edgeinfer build`` handler. Raises edgeinfer errors (the CLI maps them to exit 1)."""
    raw = getattr(args, "batch", None) or "1,1,8"
    batch = trt_policy.parse_batch(raw) if isinstance(raw, str) else trt_policy.check_batch(tuple(raw))
    timing = None if getattr(args, "no_timing_cache", False) else getattr(args, "timing_cache", AUTO)
    calibration = getattr(args, "calibration", None)
    if calibration is not None:
        calibration = _as_calibration(calibration)
        calibration.batch = int(getattr(args, "calibration_batch", 8) or 8)
    rec = build_engine(args.bundle, args.precision, workspace_mb=getattr(args, "workspace", None),
                       dla_core=getattr(args, "dla_core", None), batch=batch, timing_cache=timing,
                       calibration=calibration, hardware_compat=getattr(args, "hardware_compat", None),
                       version_compat=bool(getattr(args, "version_compatible", False)),
                       exclude_lean_runtime=bool(getattr(args, "exclude_lean_runtime", False)),
                       builder_optimization_level=getattr(args, "opt_level", None))
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(rec, indent=2) + "\n")
        return 0
    c = rec["compatibility"]
    where = f"DLA core {c['dla_core']} of {c['gpu_name']}" if c["dla_core"] is not None else c["gpu_name"]
    print(f"built {rec['file']} ({rec['bytes']:,} bytes, artifact {rec['id']}) from {rec['source_artifact']}: "
          f"{rec['precision']} on {where} (compute capability {c['compute_capability']}), TensorRT "
          f"{c['tensorrt_version']}, batch {','.join(map(str, rec['produced_by']['batch']))}")
    for w in rec["produced_by"]["build_plan"]["warnings"]:
        print(f"note: {w}")
    scope = ("TensorRT " + c["tensorrt_version"] + (" or newer (version-compatible)" if c["version_compatible"] else "")
             + f" on compute capability {c['compute_capability']}"
             + (f" ({c['hardware_compatibility']})" if c["hardware_compatibility"] != "none" else ""))
    print(f"the plan runs only with {scope}; validate it against FP32 before use")
    return 0


__all__ = ["build_engine", "rebuild_artifact", "device_info", "cli_build", "add_arguments", "CalibrationSet",
           "make_entropy_calibrator", "artifact_names", "default_timing_cache", "AUTO"]
