# Quick start: `make demo` (train + test the tiny model on generated data, offline) and
# `make test` (the test suite). Each creates the virtual environment it needs in .venv.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint venv clean

# the hook is copied into site-packages (not linked) by the editable install: a change reinstalls
$(BIN)/anomalib-genau: pyproject.toml src/anomalib_genau_hook.py
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the release this project is tested with (served locally here)
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e ".[dev]"
	touch $@

venv: $(BIN)/anomalib-genau

demo: venv
	$(BIN)/anomalib-genau demo

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check src tests benchmarks notebooks
	$(BIN)/ruff format --check src tests benchmarks notebooks

clean:
	rm -rf $(VENV) results backbones datasets
