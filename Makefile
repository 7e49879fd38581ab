# Two commands on a fresh machine: `make demo` and `make test`. Both install into .venv first
# (a no-op when pyproject.toml and constraints.txt have not changed since the last install).
# `make lint` (ruff, ruff format, mypy) is what CI runs before the tests; see CONTRIBUTING.md.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install demo test lint shell clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=64"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/geokit demo --output runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

# configuration in pyproject.toml ([tool.ruff], [tool.mypy])
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# an interactive shell with the venv active (geokit on PATH); `exit` leaves it
shell: $(STAMP)
	@echo "geokit is on PATH in this shell ($(VENV)/bin); type exit to leave"
	@VIRTUAL_ENV="$(CURDIR)/$(VENV)" PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $${SHELL:-/bin/sh} -i

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
