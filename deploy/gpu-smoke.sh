#!/usr/bin/env bash
# The first-GPU-run check: one short script (well under 5 minutes) for a GPU host that may have no
# network and no TensorRT builder. Run it from the repository root:
#
#     deploy/gpu-smoke.sh [OUTDIR]          (default: gpu-smoke)
#
# It writes OUTDIR/probe.json (the runner's own device probe: cuda-python's device count, the
# TensorRT runtime it found, device_info), OUTDIR/gpu-tests.log and OUTDIR/gpu-tests.xml (the
# gpu-marked tests: the runner's CUDA plumbing on the real GPU - pinned buffers, async copies,
# streams, events, graph capture and replay, a failed capture - and the real lean runtime
# refusing plans it must not load; tests that need the TensorRT builder skip), and
# OUTDIR/summary.txt. Exit status: 0 only when the probe found a GPU and at least one GPU test
# passed with none failing.
#
# Offline hosts: put wheels in .whl/ (pydicom, and tensorrt-lean-cu13 / tensorrt-dispatch-cu13 with
# their -libs and -bindings wheels); they are installed into a private folder, never system-wide.
# The source tree itself is used in place (no install).
set -uo pipefail
out=${1:-gpu-smoke}
py=${PYTHON:-python3}
mkdir -p "$out"
site=$(mktemp -d /tmp/edgeinfer-smoke.XXXXXX)
trap 'rm -rf "$site"' EXIT

if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$site/wheels" .whl/*.whl \
    || { echo "could not install the wheels in .whl/" | tee "$out/summary.txt"; exit 1; }
fi
# the workstation packages install under the project's names (edgeinfer_export, edgeinfer_calibration)
mkdir -p "$site/src"
ln -s "$PWD/edgeinfer" "$site/src/edgeinfer"
ln -s "$PWD/export" "$site/src/edgeinfer_export"
ln -s "$PWD/calibration" "$site/src/edgeinfer_calibration"
export PYTHONPATH="$site/src:$site/wheels${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1

"$py" - "$out/probe.json" <<'PY'
import json, sys
from edgeinfer.backends import cuda
from edgeinfer.backends import tensorrt as trt_backend

report = {"cuda_python": cuda.cuda_python_version()}
try:
    report["gpu_count"] = cuda.gpu_count()
except Exception as exc:  # the probe's own words are the result
    report["gpu_count"], report["gpu_error"] = 0, str(exc)
try:
    mod, name = cuda.import_trt_runtime()
    report["runtime"] = {"module": name, "version": str(mod.__version__)}
    report["device_info"] = cuda.device_info(0, (mod, name))
except Exception as exc:
    report["runtime_error"] = str(exc)
report["tensorrt_distributions"] = sorted(n for n in cuda.installed_distributions() if n.lower().startswith("tensorrt"))
ok, why = trt_backend.probe()
report["tensorrt_backend_available"], report["tensorrt_backend_reason"] = ok, why
json.dump(report, open(sys.argv[1], "w"), indent=2)
print(json.dumps(report, indent=2))
PY
probe=$?

# only the files that hold gpu-marked tests: the others import what a GPU host need not have
mapfile -t files < <(grep -rl --include='test_*.py' '@pytest.mark.gpu' tests | sort)
EDGEINFER_REQUIRE_GPU=1 timeout 240 "$py" -m pytest -m gpu -p no:cacheprovider -o addopts="--strict-markers" -rA -q \
  --junitxml="$out/gpu-tests.xml" "${files[@]}" 2>&1 | tee "$out/gpu-tests.log"
tests=${PIPESTATUS[0]}

{
  echo "probe exit $probe; gpu tests exit $tests"
  grep -E "^(PASSED|FAILED|SKIPPED|ERROR) (tests/|\[)" "$out/gpu-tests.log" || true
  tail -1 "$out/gpu-tests.log"
} | tee "$out/summary.txt"
[ "$probe" = 0 ] && [ "$tests" = 0 ]
