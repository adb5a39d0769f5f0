# LLenergyMeasure — `make campaign` runs a campaign end to end; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
CAMPAIGN ?= configs/campaigns/default.yaml
PACKAGES := -e ./shared -e ./services/planner -e ./services/worker-pytorch -e ./services/telemetry \
            -e ./services/worker-vllm -e ./services/worker-trt
BIN := $(VENV)/bin
export VENV

.PHONY: setup services migrate up down status campaign test test-faults flower beat lint lint-containers clean

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

# The stack (README: "Servers or embedded"): LEM_BROKER_URL / LEM_DATABASE_URL name the broker and the database;
# each one unset is Redis / PostgreSQL on its default local port when one answers, else the embedded part (a broker
# folder, SQLite). `lem` says so on its first line. `make services` starts installed but stopped local servers.
migrate: setup  ## alembic upgrade head (creates the database if needed)
	@$(BIN)/lem db upgrade

# `make up` starts what a campaign needs, in one of two ways, chosen by LEM_UP (never guessed):
#   LEM_UP=local (default)  local processes through scripts/services.sh (Redis and PostgreSQL on this host;
#                           telemetry, the control worker, one pytorch worker and beat): works without Docker.
#   LEM_UP=docker           compose.yaml: docker compose --profile P ... up -d --build --wait, one --profile per
#                           entry of PROFILES (pytorch, vllm, trtllm); set COMPOSE_FILE=compose.gpus.yaml for the
#                           one-worker-per-GPU file of scripts/compose_gpus.py.
#                           Stop: docker compose --profile pytorch --profile vllm --profile trtllm down
# PROFILES (comma-separated, default pytorch) names the engines whose workers start. Local processes have the
# pytorch worker only: a campaign on vllm or trtllm needs LEM_UP=docker (or its worker started by hand).
LEM_UP ?= local
PROFILES ?= pytorch
COMPOSE ?= docker compose
comma := ,
UP_PROFILES := $(strip $(subst $(comma), ,$(PROFILES)))
ifneq ($(filter up campaign,$(MAKECMDGOALS)),)
ifeq ($(filter $(LEM_UP),local docker),)
$(error LEM_UP must be local or docker, not '$(LEM_UP)')
endif
ifneq ($(filter-out pytorch vllm trtllm,$(UP_PROFILES)),)
$(error PROFILES: unknown engine(s) '$(filter-out pytorch vllm trtllm,$(UP_PROFILES))'; use pytorch, vllm, trtllm)
endif
ifeq ($(LEM_UP),local)
ifneq ($(filter-out pytorch,$(UP_PROFILES)),)
$(error PROFILES=$(PROFILES): local processes run the pytorch worker only; for $(filter-out pytorch,$(UP_PROFILES)) use LEM_UP=docker (README: Docker))
endif
endif
endif

ifeq ($(LEM_UP),docker)
up:  ## start the services a campaign needs (LEM_UP=local|docker, PROFILES=pytorch,vllm,trtllm)
	@$(COMPOSE) version >/dev/null 2>&1 || { echo "LEM_UP=docker, but '$(COMPOSE)' does not run here; leave LEM_UP unset for local processes" >&2; exit 1; }
	@test -f .env || { echo "no .env: cp .env.example .env and set its passwords" >&2; exit 1; }
	$(COMPOSE) $(foreach p,$(UP_PROFILES),--profile $(p)) up -d --build --wait
else
up: migrate  ## start the services a campaign needs (LEM_UP=local|docker, PROFILES=pytorch,vllm,trtllm)
	scripts/services.sh up
endif

lint-containers: setup  ## compose.yaml against the Compose schema, hadolint on every Dockerfile, entry points
	$(BIN)/python -m pytest tests/unit/test_containers.py -q -p no:cacheprovider

down:  ## stop the background services started by `make up`
	scripts/services.sh down

status:
	scripts/services.sh status

campaign: up  ## run CAMPAIGN (default: the embedded default campaign) and wait for its results
	$(BIN)/lem campaign run $(CAMPAIGN) --wait

test: services  ## the test suite (real Redis, PostgreSQL, Celery workers and CPU inference; Chromium renders the report)
	scripts/services.sh browser
	$(BIN)/python -m pytest --ignore=tests/faults --ignore=tests/fleet

# Slower: faults injected on private stacks (killed workers and servers, hostile files, full disks) and several
# hosts in network namespaces (tests/fleet: needs root, iproute2 and a C compiler). .ci/run runs both targets.
test-faults: services  ## fault injection: private Redis/PostgreSQL killed and restarted, hosts lost and cut off
	$(BIN)/python -m pytest tests/faults tests/fleet

flower: setup  ## Flower on http://127.0.0.1:5555 in the background (log .run/flower.log; `make down` stops it)
	scripts/services.sh flower

beat: migrate  ## celery beat in the foreground: fires the schedules of `lem schedule` (exactly one may run)
	$(BIN)/lem-beat

lint: setup  ## ruff check, ruff format --check, then mypy (pydantic plugin) over every package ([tool.mypy] in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean: down
	rm -rf $(VENV) .run
