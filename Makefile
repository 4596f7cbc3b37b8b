# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch pinned: the CPU build where pip's configuration offers it (README); plain PyPI
# serves CUDA builds of several GB.
TORCH  ?= torch==2.13.0

.PHONY: demo test lint setup system-programs clean

setup: $(STAMP) system-programs

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The service tests start a real Prometheus server (Debian's package); the kernel tests build
# the CUDA kernels for the host with g++. Looked for at every `make setup` and `make test`
# (nothing to do once there), so that an install that failed is tried again; under
# STREAMTRK_STRICT_SKIPS (CI), where the tests would fail without them, a failure stops here.
system-programs:
	@need=""; for p in prometheus g++; do command -v $$p >/dev/null 2>&1 || need="$$need $$p"; done; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$need; } \
	    || { echo "warning: could not install$$need; the tests that need it will skip"; \
	         [ "$$STREAMTRK_STRICT_SKIPS" != 1 ] || exit 1; }; \
	  else \
	    echo "note:$$need not on PATH and installing needs root;" \
	      "the tests that need it will be skipped (apt-get install$$need)"; \
	    [ "$$STREAMTRK_STRICT_SKIPS" != 1 ] || exit 1; \
	  fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check streamtrk tests bench
	$(VENV)/bin/ruff format --check streamtrk tests bench
	@# Type check of streamtrk/, bench/ and tests/ ([tool.mypy] in pyproject.toml): ~16 s cold,
	@# under 1 s warm; then each conftest.py of tests' subfolders on its own (all are module
	@# `conftest`; tests/ on the search path for its helpers, as pytest has it): ~1 s.
	$(VENV)/bin/mypy
	for f in tests/*/conftest.py; do MYPYPATH=tests $(VENV)/bin/mypy "$$f" || exit 1; done

test: $(STAMP) system-programs lint
	@# The slowest tests listed at the end: what sizes pytest's per-test timeout (pyproject.toml).
	$(VENV)/bin/pytest --durations=20

demo: $(STAMP)
	$(VENV)/bin/streamtrk demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
