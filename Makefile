# make demo: the whole job on the embedded default (local Ray, local folder, synthetic ECGs, tiny model).
# make test: the test suite. Both create .venv and install on first use.
# GPU users: make demo TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/ecgvlm demo --workdir ./demo-run

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf demo-run data .pytest_cache
