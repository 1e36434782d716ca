# Two entry points for a new user (see README.md):
#   make compare  set up .venv when missing, then run the main job (normlab compare)
#   make test     set up .venv when missing, then lint, format-check and test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
# The main job needs normlab alone; the tests add the dev extra (pytest, ruff, Triton, Ray).
BASE := $(VENV)/.normlab-base
DEV := $(VENV)/.normlab-dev

.PHONY: setup setup-dev compare full check test lint clean

setup: $(BASE)
setup-dev: $(DEV)

$(BASE): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $(BASE)

$(DEV): $(BASE)
	$(PIP) -e '.[dev]'
	touch $(DEV)

compare: setup
	$(BIN)/normlab compare

# Every experiment at the published sizes (3 seeds or more) and the placement study:
# about 84 minutes on 2 cores; the batch-size study reads Fashion-MNIST from Debian's
# dataset-fashion-mnist (installed here, as root).
full: setup
	test -d /usr/share/datasets/fashion-mnist || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist)
	$(BIN)/normlab compare --full --out normlab-full
	$(BIN)/normlab run placement --out normlab-full/results
	$(BIN)/normlab report normlab-full --out docs/article

check: setup
	$(BIN)/normlab list
	$(BIN)/normlab check

lint: setup-dev
	$(BIN)/ruff check normlab tests benchmarks
	$(BIN)/ruff format --check normlab tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis normlab-report normlab-full
