# huayu: the two set-up commands are `make run` and `make test`; each works on a fresh machine.
PY ?= python3
VENV := .venv
SERVING_VENV := .venv-serving
BIN := $(VENV)/bin

.PHONY: run test lint types pytest venv serving-venv system-deps bench loadtest clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

$(SERVING_VENV)/.installed: serving/install.sh serving/requirements-cpu.txt
	bash serving/install.sh $(SERVING_VENV)
	touch $@

serving-venv: $(SERVING_VENV)/.installed

# Debian packages the tests run for real: nginx, Prometheus (deploy/ checks), Chromium (the review page)
system-deps:
	bash scripts/install-debs.sh

run: venv serving-venv
	$(BIN)/huayu run

lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

types: venv
	$(BIN)/mypy

pytest: venv serving-venv system-deps
	bash scripts/services.sh
	$(BIN)/pytest

test: lint types pytest

bench: venv serving-venv
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/huayu bench

# the load test against the gateway `make run` serves, or URL=...; ARGS adds options (huayu loadtest --help)
URL ?= http://127.0.0.1:8080
loadtest: venv
	$(BIN)/huayu loadtest --url $(URL) $(ARGS)

clean:
	rm -rf $(VENV) $(SERVING_VENV) .data .pytest_cache .mypy_cache .ruff_cache
