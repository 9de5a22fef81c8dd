# aigw — developer entry points. `make dev` runs the whole system; `make test` runs the suite.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON ?= python3
PYTEST_ARGS ?= -n 2

UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := .tools/bin/uv
endif

.PHONY: dev test install browser lint proto openapi configuration bench soak clean

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv

install: $(if $(filter .tools/bin/uv,$(UV)),.tools/bin/uv)
	$(UV) sync --frozen --all-packages

dev: install
	.venv/bin/aigw dev

# The console's browser tests drive Debian's Chromium through Playwright (the `browser` group; never a
# downloaded browser). Installed here when missing and we are root; without it those tests skip, saying why.
test: browser
	.venv/bin/pytest $(PYTEST_ARGS)

browser: install
	$(UV) sync --frozen --all-packages --group browser
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
	      || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)) \
	      || echo "make: could not install chromium; the console's browser tests will skip"; \
	  else echo "make: chromium is missing and this is not root with apt-get; the console's browser tests will skip"; fi; \
	fi

# ruff everywhere; mypy --strict over libs/ and services/*/aigw_* (configuration in pyproject.toml)
lint: install
	.venv/bin/ruff check libs services tests
	.venv/bin/mypy

proto: install
	.venv/bin/aigw proto

# Rewrite docs/openapi/<service>.json from the route tables (a test fails when they are stale).
openapi: install
	.venv/bin/aigw openapi --out docs/openapi

# Rewrite the variable tables of docs/configuration.md from aigw_common/settings.py (a test fails when stale).
configuration: install
	.venv/bin/aigw config-doc --out docs/configuration.md

bench: install
	.venv/bin/python -m bench.run

# Long runs (10-minute load, 30 s outages) plus every measured scenario; rewrites docs/reliability.md.
# SOAK_ARGS=--soak-seconds=60 for a short run.
soak: install
	.venv/bin/pytest -m "soak or reliability" -p no:xdist --reliability-report=docs/reliability.md $(SOAK_ARGS)

clean:
	rm -rf .venv .tools .pytest_cache
