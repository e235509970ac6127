# The two commands of the README:
#   make test   set up .venv (pinned, skipped when nothing changed), lint, and run the test suite
#   make run    set up .venv and run the main job: the full pipeline on the demo profile
VENV ?= .venv
export HF_HUB_OFFLINE = 1
export MLFLOW_DISABLE_TELEMETRY = true
export GX_ANALYTICS_ENABLED = false
export DS_ACCELERATOR = cpu
export DO_NOT_TRACK = 1

.PHONY: setup test test-fast run lint bench

setup:
	bash infra/setup.sh

test: setup
	$(VENV)/bin/ruff check .  # a second or two; CI is this target, so style breaks land nowhere
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder  # both cores; a file's tests share one worker; longest files first (tests/conftest.py)

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow and not integration"

lint: setup
	$(VENV)/bin/ruff check .

run: setup
	$(VENV)/bin/cft run --config $(or $(CONFIG),configs/demo.yaml)

bench: setup
	$(VENV)/bin/python -m benchmarks.train_step
