# Two entry points for a new user (see README.md):
#   make compare  set up .venv when missing, then run the main job (normlab compare)
#   make test     set up .venv when missing, then lint, format-check and test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.normlab-installed

.PHONY: setup compare check test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

compare: setup
	$(BIN)/normlab compare

check: setup
	$(BIN)/normlab list
	$(BIN)/normlab check

lint: setup
	$(BIN)/ruff check normlab tests benchmarks
	$(BIN)/ruff format --check normlab tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis normlab-report
