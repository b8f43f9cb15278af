# Two commands do everything, each with its own set-up on a fresh Debian 12 machine:
#   make test   the whole test suite (installs host packages, starts Docker, makes the venv)
#   make demo   deploys the demo stack (server + nginx) with a blue-green deploy
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# `make test` runs test files in parallel, one file per worker (a file's module fixtures stay
# shared). Integration tests spend most of their time waiting on containers and servers, so more
# workers than the 2 cores here still pays; TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 3

.PHONY: help venv host test typecheck unit integration demo bench clean

help:
	@echo "make test | make demo | make unit | make typecheck | make integration | make bench | make clean"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[server,test]'
	touch $@

venv: $(VENV)/.installed

host:
	scripts/setup-host.sh

# mypy, configured in pyproject.toml ([tool.mypy]): holds the typed engine boundary
# (flashfit_ops/engine/protocol.py). tests/unit/ops/test_types.py runs it too.
typecheck: venv
	$(PY) -m mypy

test: venv host typecheck
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest tests -m "not integration" $(PYTEST_ARGS)

integration: venv host
	$(PY) -m pytest tests -m integration $(PYTEST_ARGS)

demo: venv host
	scripts/demo.sh

bench: venv host
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist
