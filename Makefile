# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   install into .venv and start the whole system on the embedded default
#   make test   install the development tools and run the full test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck schema check-migrations check-schema install install-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	DEMO_MODE=1 $(BIN)/python manage.py run_demo

test: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-dev
	DEMO_MODE=1 $(BIN)/mypy .

check-migrations: install-dev
	DEMO_MODE=1 $(BIN)/python manage.py makemigrations --check --dry-run

schema: install-dev
	DEMO_MODE=1 $(BIN)/python manage.py spectacular --validate --fail-on-warn --file docs/openapi.yaml

check-schema: install-dev
	DEMO_MODE=1 $(BIN)/python manage.py spectacular --validate --fail-on-warn --file $(VENV)/openapi.check.yaml
	diff -u docs/openapi.yaml $(VENV)/openapi.check.yaml || (echo "OpenAPI schema drifted: run 'make schema' and commit docs/openapi.yaml" && exit 1)
