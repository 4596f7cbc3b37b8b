# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A CPU build of torch; a bare `torch` would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: demo test lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check streamtrk tests bench

test: $(STAMP) lint
	$(VENV)/bin/pytest

demo: $(STAMP)
	$(VENV)/bin/streamtrk demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
