# Two commands do everything on a fresh machine:  `make run`  and  `make test`.
# CPU machines: torch is pinned to the local CPU wheel; GPU machines keep the torch they have
# (`make install TORCH=` skips the pin).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
SUITE ?= suites/long_ctx.yaml

.PHONY: install run test lint bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH),$(PY) -m pip install -q $(TORCH))
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/harness run $(SUITE)

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(PY) -m pytest -m benchmark -p no:cacheprovider tests/benchmarks
