# One command runs every check a commit must pass: `make check`.
PYTHON ?= .venv/bin/python

.PHONY: check lint format typecheck contracts test test-fast venv

venv:
	python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]'

check: lint typecheck contracts test

lint:
	$(PYTHON) -m ruff check propagator tests bench sql
	$(PYTHON) -m ruff format --check propagator tests bench sql

format:
	$(PYTHON) -m ruff format propagator tests bench sql
	$(PYTHON) -m ruff check --fix propagator tests bench sql

typecheck:
	$(PYTHON) -m mypy propagator

contracts:
	.venv/bin/lint-imports

test:
	PROPAGATOR_SLOW_TESTS=1 $(PYTHON) -m pytest

test-fast:
	$(PYTHON) -m pytest
