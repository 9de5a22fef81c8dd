# aigw — developer entry points. `make dev` runs the whole system; `make test` runs the suite.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON ?= python3
PYTEST_ARGS ?= -n 2

UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := .tools/bin/uv
endif

.PHONY: dev test install lint proto bench soak clean

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv

install: $(if $(filter .tools/bin/uv,$(UV)),.tools/bin/uv)
	$(UV) sync --frozen --all-packages

dev: install
	.venv/bin/aigw dev

test: install
	.venv/bin/pytest $(PYTEST_ARGS)

lint: install
	.venv/bin/ruff check libs services tests

proto: install
	.venv/bin/aigw proto

bench: install
	.venv/bin/python -m bench.run

# Long runs (10-minute load, 30 s outages) plus every measured scenario; rewrites docs/reliability.md.
# SOAK_ARGS=--soak-seconds=60 for a short run.
soak: install
	.venv/bin/pytest -m "soak or reliability" -p no:xdist --reliability-report=docs/reliability.md $(SOAK_ARGS)

clean:
	rm -rf .venv .tools .pytest_cache
