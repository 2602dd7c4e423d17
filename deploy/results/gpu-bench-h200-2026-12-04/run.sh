#!/usr/bin/env bash
# What ran on the lent NVIDIA H200 on 2026-12-04, call by call (device tool; each call carries at most
# 64 MiB with the working tree). Prepared on the build box first:
#   pip download onnxruntime-gpu==1.31.1 --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_28_x86_64 -d .gpuwheel/full
#   split -b 55M -d .gpuwheel/full/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl .gpuwheel/part-
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       pydicom==3.0.2 jsonschema jsonschema-specifications referencing rpds-py monai pylibjpeg pylibjpeg-rle
#   .venv/bin/python -m edgeinfer_export.realmodels .gpubundles
#   .venv/bin/edgeinfer phantom /tmp/calib --n 48 --seed 3001 --max-size 1024
#   .venv/bin/edgeinfer calibrate .gpubundles/densenet121-random --data /tmp/calib --samples 48 --no-fallback
#   .venv/bin/edgeinfer calibrate .gpubundles/unet-random --data /tmp/calib --samples 48 --no-fallback
# (.gpuwheel/, .whl/ and .gpubundles/ are in .git/info/exclude.)
#
# A carried path is replaced at every call, so each piece is copied out of the tree on arrival:
#   call 1-4, carry .gpuwheel/part-0N:        mkdir -p /tmp/p && cp .gpuwheel/part-* /tmp/p/
#   call 5, carry .gpuwheel/part-04 .whl .gpubundles/densenet121-random/model.onnx:
#       cp .gpuwheel/part-* /tmp/p/ && mkdir -p /tmp/keep/b && cp -r .whl /tmp/keep/ && cp -r .gpubundles/* /tmp/keep/b/
#   call 6, carry the rest of .gpubundles (densenet's manifest, fp16 and int8 graphs; unet-random/), then:
set -o pipefail
mkdir -p .gpuwheel .whl .gpubundles/densenet121-random
cp /tmp/p/part-* .gpuwheel/ && cp /tmp/keep/.whl/*.whl .whl/ && cp /tmp/keep/b/densenet121-random/model.onnx .gpubundles/densenet121-random/
if [ "${1:-run1}" = run1 ]; then
  # run 1, at 13e222b: every step
  EDGEINFER_COMMIT=13e222b PYTHON=python3 timeout 520 bash deploy/gpu-bench.sh /tmp/gb --budget-s 340 --pack "$OUT/results.tgz"
else
  # run 2, at df6c00a (a second lease, the pieces sent again): PyTorch in CUDA graphs beside the same matrix,
  # the convolution search twice, torch.compile while the budget lasted
  EDGEINFER_COMMIT=df6c00a PYTHON=python3 timeout 370 bash deploy/gpu-bench.sh /tmp/gb --budget-s 300 \
    --steps machine,data,bench,"torch eager",ablation,"torch compile" --precisions fp32,fp16 \
    --variants "default (all on),conv search HEURISTIC" --ablation-repeats 2 --val-parts 1 --val-n 10 \
    --torch-modes eager-fp32,eager-fp16,graph-fp32,graph-fp16 --compile-budget-s 60 --pack "$OUT/results.tgz"
fi
