# deeplab-gui: `make run` sets up .venv and opens the app on the bundled demo folder;
# `make test` sets up .venv and runs the test suite.  Nothing else is needed on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install only when the project's requirements change.
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# Where no NVIDIA GPU is present, install the CPU build of torch first: a bare `torch` requirement would
# pull several GB of CUDA packages.  The project's range admits it, so pip keeps it.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_CPU ?= torch==2.13.0
DEMO   ?= resources/demo
PYTEST_ARGS ?= -n auto

.PHONY: run test setup bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
ifneq ($(HAS_GPU),yes)
	$(BIN)/python -m pip install --quiet "$(TORCH_CPU)"
endif
	$(BIN)/python -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/deeplab-gui $(DEMO)

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/bench_crf.py

clean-venv:
	rm -rf $(VENV)
