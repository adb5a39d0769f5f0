# LLenergyMeasure — `make campaign` runs a campaign end to end; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
CAMPAIGN ?= configs/campaigns/default.yaml
PACKAGES := -e ./shared -e ./services/planner -e ./services/worker-pytorch -e ./services/telemetry \
            -e ./services/worker-vllm -e ./services/worker-trt
BIN := $(VENV)/bin
export VENV

.PHONY: setup services migrate up down status campaign test flower lint clean

# torch first, pinned: pip takes the CPU build of 2.13.0 from local disk; an unpinned torch pulls GBs of CUDA.
# --no-compile: byte-compiling all of torch at install costs more than compiling what is imported, on first use.
$(VENV)/.installed: shared/pyproject.toml services/*/pyproject.toml requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (log: $(VENV)/install.log)"
	@( $(BIN)/python -m pip install --no-compile torch==2.13.0 && \
	   $(BIN)/python -m pip install --no-compile $(PACKAGES) -r requirements-dev.txt ) > $(VENV)/install.log 2>&1 \
	  || { tail -n 40 $(VENV)/install.log; echo "install failed: see $(VENV)/install.log"; exit 1; }
	@touch $@

setup: $(VENV)/.installed  ## create .venv with every package

services: setup  ## make sure Redis and PostgreSQL answer (start them when installed but stopped)
	scripts/services.sh infra

migrate: services  ## alembic upgrade head (creates the database if needed)
	$(BIN)/lem db upgrade

up: migrate  ## start telemetry, the control worker and one pytorch worker in the background
	scripts/services.sh up

down:  ## stop the background services started by `make up`
	scripts/services.sh down

status:
	scripts/services.sh status

campaign: up  ## run CAMPAIGN (default: the embedded default campaign) and wait for its results
	$(BIN)/lem campaign run $(CAMPAIGN) --wait

test: services  ## the test suite (real Redis, PostgreSQL, Celery workers and CPU inference; Chromium renders the report)
	scripts/services.sh browser
	$(BIN)/python -m pytest

flower: setup  ## Flower on http://127.0.0.1:5555
	$(BIN)/celery -A lem_planner.control:app flower --address=127.0.0.1 --port=5555

lint: setup
	$(BIN)/ruff check .

clean: down
	rm -rf $(VENV) .run
