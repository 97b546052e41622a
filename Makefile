# Two commands a user needs: `make demo` and `make test`. Both build .venv from scratch if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench clean

# pip prints what it collects and downloads, so a first install (about 6 GB, mostly torch
# and its CUDA libraries, several minutes) is never minutes of silence.
$(BIN)/activecad: pyproject.toml
	@echo "==> [1/3] creating the virtual environment $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> [2/3] upgrading pip"
	$(BIN)/python -m pip install --upgrade pip
	@echo "==> [3/3] installing activecad and its dependencies (about 6 GB on disk; first time: several minutes)"
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(BIN)/activecad
	@echo "==> installed: run $(BIN)/activecad --help (or 'source $(BIN)/activate', then activecad --help)"

install: $(BIN)/activecad

demo: install
	$(BIN)/activecad demo --quick
	@echo "==> results in demo_out/; run more commands with $(BIN)/activecad (or 'source $(BIN)/activate')"

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/phantom.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
