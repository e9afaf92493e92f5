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

demo: $(VENV)/.installed
	$(VENV)/bin/corral audit demo --data-dir .corral/demo
	$(VENV)/bin/corral broker demo --data-dir .corral/broker-demo

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
