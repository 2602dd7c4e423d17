# Two set-up commands that work on a fresh machine (see README):
#   make demo   create .venv, install the runtime, triage fresh phantom studies with the embedded model
#   make test   create .venv, install runtime + export + openvino + dev extras, run the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := demo-out

.PHONY: demo test test-gpu bench train train-ct clean peers .venv-triton

# the real DICOM peers the node tests talk to: DCMTK (storescu, echoscu, dsrdump) as the modality,
# Orthanc as the PACS, dicom3tools (dciodvfy, dcentvfy) as the independent validator of what we write,
# Chromium (chromium, chromium-driver) as the browser that loads the node's console page.
# Installed from Debian when missing (CI runs as root); never mocked.
PEERS := /usr/bin/storescu /usr/bin/echoscu /usr/bin/dsrdump /usr/sbin/Orthanc /usr/bin/dciodvfy /usr/bin/dcentvfy \
         /usr/bin/chromium /usr/bin/chromedriver
peers:
	@missing=0; for b in $(PEERS); do [ -x $$b ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing DCMTK, Orthanc, dicom3tools and Chromium (the node tests' modality, PACS, DICOM validator and browser)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dcmtk orthanc dicom3tools chromium chromium-driver >/dev/null; \
	  else echo "DCMTK, Orthanc, dicom3tools or Chromium are missing: run 'apt-get install dcmtk orthanc dicom3tools chromium chromium-driver' as root (the node tests need them)"; fi; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# runtime only: what goes on the device (no torch)
# the editable install runs from the source tree: compile it once, so that no start has to
# (where Python may not write bytecode, PYTHONDONTWRITEBYTECODE=1, every start would compile it again)
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/python -m compileall -q edgeinfer
	touch $@

# everything the test suite uses: runtime + export (torch CPU wheel, onnx tooling) + the Triton client + dev tools
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[export,openvino,triton,dev]'
	$(BIN)/python -m compileall -q edgeinfer export calibration
	touch $@ $(VENV)/.runtime

# edgeinfer triton-host: PyTriton's tritonserver links against the libpython of the interpreter it runs in, so
# its venv is made from Debian's /usr/bin/python3 (another build of 3.11 fails inside Triton's Python backend)
TRITON_VENV := .venv-triton
$(TRITON_VENV)/.host: pyproject.toml
	@if ! /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing python3-venv (the Triton host's venv is made from Debian's /usr/bin/python3)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; \
	  else echo "Debian's /usr/bin/python3 with venv is needed: run 'apt-get install python3-venv' as root"; exit 1; fi; \
	fi
	/usr/bin/python3 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install -q --upgrade pip
	$(TRITON_VENV)/bin/pip install -q -e '.[triton-host]'
	touch $@

.venv-triton: $(TRITON_VENV)/.host

demo: $(VENV)/.runtime
	rm -rf $(DEMO)
	$(BIN)/edgeinfer phantom $(DEMO)/studies --n 120 --seed 2026 --no-progress
	$(BIN)/edgeinfer triage $(DEMO)/studies --labels $(DEMO)/studies/labels.csv --output $(DEMO)/worklist.json --no-progress
	$(BIN)/edgeinfer preview $$(ls $(DEMO)/studies/study0001/series01/*.dcm | head -1) --out $(DEMO)/preview.png
	$(BIN)/edgeinfer preview $$($(BIN)/python -c "import json; print(json.load(open('$(DEMO)/worklist.json'))['studies'][0]['images'][0]['path'])") \
	    --heatmap --out $(DEMO)/heatmap.png

# the Triton tests start a real tritonserver from the PyTriton venv: under make test they fail, not skip, without it
test: $(VENV)/.dev peers $(TRITON_VENV)/.host
	EDGEINFER_REQUIRE_TRITON=1 $(BIN)/python -m pytest

# on a Jetson or x86 GPU host: only the GPU-marked tests, with what is installed there (nothing is
# downloaded: GPU hosts are often offline). It fails when the runner's own probe finds no usable CUDA
# GPU and when no GPU test passed; tests that need the TensorRT builder skip without it.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
test-gpu:
	EDGEINFER_REQUIRE_GPU=1 $(GPU_PYTHON) -m pytest -m gpu -p no:cacheprovider $(PYTEST_ARGS)

# the comparison table of docs/benchmarks.md (run it on an idle machine: timings are meaningless under load)
bench: $(VENV)/.dev
	rm -rf .cache/bench-studies
	$(BIN)/edgeinfer phantom .cache/bench-studies --n 40 --seed 2026 --no-progress
	$(BIN)/edgeinfer bench --backend all --precision all --batch 1,4 --threads 2 --warmup-s 1 --duration-s 5 \
	    --data .cache/bench-studies --e2e all --json benchmarks/results/phantom-cxr.json \
	    --report benchmarks/results/phantom-cxr.md --plot benchmarks/results/phantom-cxr.png

# the recipe that produced the committed weights (docs/models.md, "The phantom model"); then calibrate + validate
train: $(VENV)/.dev
	$(BIN)/python -m edgeinfer_export.train_phantom --n-train 1200 --n-val 400 --max-size 512 --epochs 12 --difficulty 1 --threads 1
	$(BIN)/python -m edgeinfer_export.train_phantom --n-train 1200 --n-val 400 --max-size 512 --epochs 6 --lr 1.5e-3 \
	    --difficulty 1 0.5 --resume --threads 1
	$(BIN)/python -m edgeinfer_export.train_phantom --n-train 1200 --n-val 400 --max-size 512 --epochs 4 --lr 5e-4 \
	    --difficulty 1 0.5 --resume --cam-weight 1 --threads 2

# the head-CT segmentation bundle (docs/models.md, "The head-CT model"): train (about 40 min on 2 cores), export,
# FP16 + INT8 from 16 calibration studies, validate every precision on 40 unseen ones (the segmentation gate)
CT := .cache/ct
train-ct: $(VENV)/.dev
	$(BIN)/python -m edgeinfer_export.train_ct --threads 2
	rm -rf $(CT)/calib $(CT)/val
	$(BIN)/edgeinfer phantom $(CT)/calib --kind ct-head --n 16 --seed 3100 --no-progress
	$(BIN)/edgeinfer calibrate edgeinfer/models/phantom-ct-head --data $(CT)/calib --samples 160 --no-progress
	$(BIN)/edgeinfer phantom $(CT)/val --kind ct-head --n 40 --seed 3200 --no-progress
	$(BIN)/edgeinfer validate edgeinfer/models/phantom-ct-head --data $(CT)/val --labels $(CT)/val/labels.csv \
	    --runtime-precision openvino:bf16 --no-progress

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(DEMO) .cache .pytest_cache
