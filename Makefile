# Two commands do everything on a fresh machine:  `make run`  and  `make test`.
# CPU machines: torch is pinned to the local CPU wheel; GPU machines keep the torch they have
# (`make install TORCH=` skips the pin). The pinned xformers wheel (3 MB, a CUDA build) lets the
# tests check the adapter against xformers' real API; --no-deps so it can never pull another torch
# (`make install XFORMERS=` skips it).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
XFORMERS ?= xformers==0.0.35
SUITE ?= suites/long_ctx.yaml

.PHONY: install run test test-min lint bench browser

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH),$(PY) -m pip install -q $(TORCH))
	$(PY) -m pip install -q -e '.[test,ring-peers]'
	$(if $(XFORMERS),$(PY) -m pip install -q --no-deps $(XFORMERS))
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/harness run $(SUITE)

# Headless Chromium for the report's browser tests: the Debian package (browser downloads by test
# tools do not work on these machines). Installed only when missing, and only by root with apt-get;
# elsewhere the browser tests skip with the command to run (under CI=true they fail instead).
browser:
	@if [ ! -x /usr/bin/chromium ] && ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else \
	    echo "chromium not installed: browser tests will skip (sudo apt-get install chromium)"; \
	  fi; \
	fi

test: install browser
	$(PY) -m pytest

# pyproject.toml's lower bounds, proven: a throwaway venv with every dependency at exactly its
# `>=` bound (torch: the local CPU wheel) runs the tests that exercise them (~2 minutes).
test-min:
	bash scripts/check_min_versions.sh

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(PY) -m pytest -m benchmark -p no:cacheprovider tests/benchmarks
