# Tollgate — see README.md. `make run` serves; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FLASK := $(VENV)/bin/flask --app wsgi
export REDIS_URL_TEST := $(or $(REDIS_URL),redis://127.0.0.1:6379/15)

.PHONY: install install-test run serve test services seed-models bench lint clean

$(VENV)/.base: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.base
install-test: $(VENV)/.test

run: install
	$(FLASK) demo
	$(PY) -m service.server

serve: install
	$(PY) -m service.server

seed-models: install
	$(FLASK) seed-models $(if $(FILE),--file $(FILE))

services:
	@scripts/services.sh

test: install-test services
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install-test
	$(PY) -m bench.run

lint: install-test
	$(PY) -m pyflakes config service providers tests || true

clean:
	rm -rf $(VENV) data .pytest_cache
