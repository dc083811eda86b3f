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

.PHONY: run test setup bench bench-gpu bench-annotation clean-venv package package-test

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

# The CUDA rows of every benchmark (needs an NVIDIA GPU): benchmarks/results/*_cuda.json.
bench-gpu: $(STAMP)
	PYTHON=$(BIN)/python bash benchmarks/bench_gpu.sh

bench-annotation: $(STAMP)
	$(BIN)/python benchmarks/bench_annotation.py --scenes 24 --tools manual,snap,superpixel,crfclick,click
	$(BIN)/python benchmarks/bench_annotation.py --loop --tools manual,snap,superpixel

clean-venv:
	rm -rf $(VENV)

# One-folder desktop bundle in dist/deeplab-gui/ (PyInstaller; torch as installed here: CPU or CUDA).
# Minutes on a 2-core machine; see README "Desktop bundle".
PACKAGE_STAMP := $(VENV)/.package-installed
$(PACKAGE_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[package]"
	touch $@

package: $(PACKAGE_STAMP)
	$(BIN)/pyinstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build/pyinstaller \
		packaging/deeplab_gui.spec
	@du -sh dist/deeplab-gui

# Build, then run the bundle's self-test from a temp folder with a scrubbed environment, and start
# its GUI under Xvfb (where installed) for a screenshot: build/package-test/screenshot.png.
package-test: package
	DEEPLAB_GUI_BUNDLE=dist/deeplab-gui QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:xdist \
		tests/test_selftest.py -k frozen_bundle -rs
