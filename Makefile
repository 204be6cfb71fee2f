# Two commands for a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
SMNAS := $(VENV)/bin/smnas

.PHONY: demo test lint clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)

# Stamp files so a second `make` does not reinstall.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,ray]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(SMNAS) demo

test: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check smnas_trt tests bench
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check smnas_trt tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy smnas_trt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
