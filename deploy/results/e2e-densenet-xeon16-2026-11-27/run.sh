#!/usr/bin/env bash
# DenseNet-121 end to end on the GPU host's CPUs: does the intake hide behind inference when cores are free?
set -u
out=$1; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/src && ln -sfn "$PWD/edgeinfer" /tmp/src/edgeinfer && ln -sfn "$PWD/export" /tmp/src/edgeinfer_export && ln -sfn "$PWD/calibration" /tmp/src/edgeinfer_calibration
export PYTHONPATH=/tmp/src:/tmp/site
{ nproc; lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|NUMA node0"; grep -o -w -E "avx2|avx512f|avx512_vnni|amx_tile" /proc/cpuinfo | sort | uniq -c; uptime; } > "$out/cpu.txt" 2>&1
t0=$(date +%s)
python3 -m edgeinfer_export.realmodels /tmp/b --models densenet121 > "$out/export.log" 2>&1 || { tail -20 "$out/export.log"; exit 1; }
python3 -m edgeinfer phantom /tmp/bs --n 40 --seed 2026 --no-progress > "$out/phantom.log" 2>&1 || { tail "$out/phantom.log"; exit 1; }
echo "setup $(( $(date +%s) - t0 )) s" | tee -a "$out/cpu.txt"
runs=/tmp/runs; mkdir -p $runs
run() { name=$1; shift; timeout 100 python3 -m edgeinfer bench "$@" --backend ort --precision fp32 --batch 1 --data /tmp/bs --e2e all --no-progress --json "$runs/$name.json" > "$runs/$name.txt" 2>&1; echo "$name rc $?"; grep -E "^end to end|busy" "$runs/$name.txt"; }
for r in 1 2 3; do
  run dn-t2-w2-r$r /tmp/b/densenet121-random --threads 2 --e2e-workers 2
  run dn-t2-w4-r$r /tmp/b/densenet121-random --threads 2 --e2e-workers 4
done
run dn-t1-w1 /tmp/b/densenet121-random --threads 1 --e2e-workers 1
python3 - "$runs" "$out/summary.json" <<'PY'
import json, sys, glob, os
summary = {}
for f in sorted(glob.glob(sys.argv[1] + "/dn-*.json")):
    d = json.load(open(f)); e = d["e2e"][0]
    print(os.path.basename(f), "inf p50 spread", round(d["rows"][0]["spread"]["rel"], 3), "inference only", round(e["inference_only_images_per_s"], 1), "e2e", round(e["overlapped"]["images_per_s"], 1),
          "share", e["e2e_vs_inference_only"], "per image ms", {k: round(v, 1) for k, v in e["serial"]["per_image_ms"].items()})
    summary[os.path.basename(f)[:-5]] = {"command": d.get("command"), "machine": d.get("machine"), "settings": d.get("settings"),
                                         "inference_only": {k: d["rows"][0][k] for k in ("p50_ms", "throughput", "spread", "threads")},
                                         "e2e": e}
json.dump(summary, open(sys.argv[2], "w"), indent=1)
PY
