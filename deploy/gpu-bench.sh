#!/usr/bin/env bash
# The GPU numbers in one prepared run (under 5 minutes on a lent H100/H200): every bundle and precision on
# ONNX Runtime's CUDA provider, what each provider setting buys, PyTorch on the same GPU, the same
# priorities as on the CPU, DICOM-to-priority end to end. From the repository root:
#
#     deploy/gpu-bench.sh [--cpu] OUTDIR [gpu_bench.py run options...]
#
# --cpu    the dry run: the same steps on the CPU provider, small (make test runs it)
#
# On the GPU host (offline, Python 3.12, PyTorch and CUDA 13 libraries in the image):
#   .gpuwheel/part-*   onnxruntime-gpu 1.31.1 (cp312, manylinux_2_28) split in pieces; joined, checked
#                      against the sha256 below and unpacked into a private folder that shadows the
#                      image's CPU-only onnxruntime
#   .whl/*.whl         what the image lacks (pydicom, jsonschema and its parts, monai, pylibjpeg...)
#   .gpubundles/       further bundles (densenet121-random/, unet-random/) with fp32, fp16 and int8 graphs
# Nothing is installed system-wide; the source tree is used in place. Results: OUTDIR/summary.md and the
# raw JSON beside it (deploy/gpu_bench.py says what each file holds); --pack FILE.tgz keeps one archive
# of OUTDIR up to date after every step. Exit status: 0 when every step ran, 1 otherwise.
set -uo pipefail
cpu=0
if [ "${1:-}" = "--cpu" ]; then cpu=1; shift; fi
out=${1:?usage: deploy/gpu-bench.sh [--cpu] OUTDIR [options]}; shift
py=${PYTHON:-python3}
ORT_WHEEL=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
ORT_SHA256=05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7
mkdir -p "$out"
site=$(mktemp -d /tmp/edgeinfer-gpubench.XXXXXX)
trap 'rm -rf "$site"' EXIT

mkdir -p "$site/src"
ln -s "$PWD/edgeinfer" "$site/src/edgeinfer"
ln -s "$PWD/export" "$site/src/edgeinfer_export"
ln -s "$PWD/calibration" "$site/src/edgeinfer_calibration"
export PYTHONPATH="$site/src:$site/wheels${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1

if [ $cpu = 0 ]; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$site/wheels" .whl/*.whl \
      || { echo "gpu-bench: could not install the wheels in .whl/" >&2; exit 1; }
  fi
  if compgen -G ".gpuwheel/part-*" >/dev/null; then
    cat .gpuwheel/part-* > "$site/$ORT_WHEEL"
    got=$(sha256sum "$site/$ORT_WHEEL" | cut -d' ' -f1)
    if [ "$got" != "$ORT_SHA256" ]; then
      echo "gpu-bench: the joined .gpuwheel/part-* is not $ORT_WHEEL (sha256 $got, expected $ORT_SHA256): a piece is missing or damaged" >&2
      exit 1
    fi
    # a wheel is a zip archive: unpacked into the private folder, it shadows the image's onnxruntime
    "$py" -m zipfile -e "$site/$ORT_WHEEL" "$site/wheels" && rm -f "$site/$ORT_WHEEL"
  fi
  "$py" - <<'PY' || exit 1
import sys
import onnxruntime as ort
providers = ort.get_available_providers()
print(f"onnxruntime {ort.__version__} from {ort.__file__}: {', '.join(providers)}")
if "CUDAExecutionProvider" not in providers:
    sys.exit("gpu-bench: this onnxruntime has no CUDA provider; put onnxruntime-gpu's pieces in .gpuwheel/ "
             "(deploy/gpu-bench.sh says how) or run with --cpu")
PY
  "$py" deploy/gpu_bench.py run "$out" --bundles .gpubundles "$@"
  exit $?
fi
"$py" deploy/gpu_bench.py run "$out" --cpu "$@"
