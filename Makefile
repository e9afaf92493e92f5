# The two commands of the README: `make demo` and `make test`. Everything else supports them.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.9.30
export UV_PYTHON_DOWNLOADS := never

.PHONY: demo test lint typecheck pytest bench install clean

$(VENV)/.installed: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	uv sync --frozen --python python3
	@touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

install: $(VENV)/.installed node_modules/.installed

# The clinic's day through the whole chain (docs/demo.md); `corral audit demo` and
# `corral broker demo` still show one component each.
demo: $(VENV)/.installed
	$(VENV)/bin/corral demo --data-dir .corral/demo-day

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

pytest: install
	$(PY) -m pytest -q --doctest-modules src tests

test: lint typecheck pytest

bench: install
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) node_modules .corral
