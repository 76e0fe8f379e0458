# fitml: the one command surface. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV     ?= .venv
PY       := $(VENV)/bin/python
WORKDIR  ?= var
PORT     ?= 3000
# Extra `fitml pipeline run` options for `make demo`, e.g. DEMO_ARGS="--users 400 --events 6000".
DEMO_ARGS ?=
# pip here is configured with extra local indexes that may be absent; keep its output quiet.
PIP_QUIET := PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_WARN_SCRIPT_LOCATION=1

.PHONY: help setup lock demo test test-fast lint serve bench bench-scale drift-calibrate \
	benchmark-rtr clean audit images champion-image secrets

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -v w='$(WORKDIR)' -v p='$(PORT)' \
		'BEGIN {FS = ":.*?## "}; {gsub(/\$$\(WORKDIR\)/, w, $$2); gsub(/\$$\(PORT\)/, p, $$2); \
		printf "  make %-15s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(PY) || python3.11 -m venv $(VENV)
	@echo "installing the locked dependencies into $(VENV) ..."
	@$(PIP_QUIET) $(PY) -m pip install -q -r requirements.lock 2>&1 | grep -v "^WARNING: Location" || true
	@$(PIP_QUIET) $(PY) -m pip install -q --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import feast, mlflow, bentoml, evidently, optuna, lightgbm" 2>/dev/null \
		|| { echo "setup failed: the locked packages do not import"; exit 1; }
	@touch $@

setup: $(VENV)/.installed ## Create .venv from requirements.lock (only when missing or stale)

lock: ## Re-resolve requirements.in into requirements.lock (needs uv)
	uv pip compile requirements.in --python-version 3.11 -o requirements.lock
	uv pip compile requirements-runtime.in -c requirements.lock --python-version 3.11 \
		--no-emit-package mypy -o requirements-runtime.lock
	uv pip compile requirements-serving.in -c requirements.lock --python-version 3.11 \
		--no-emit-package mypy -o requirements-serving.lock

demo: setup ## Run the whole loop on the embedded default into $(WORKDIR)/
	$(VENV)/bin/fitml pipeline run --workdir $(WORKDIR) $(DEMO_ARGS)

test: setup ## Run the test suite with line coverage of the packages
	$(VENV)/bin/pytest -q --cov --cov-report=term:skip-covered -m "not benchmark" --durations=40

test-fast: setup ## Unit tests only
	$(VENV)/bin/pytest -q tests/unit -m "not benchmark"

lint: setup ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

serve: setup ## Serve the prediction service from $(WORKDIR) on 127.0.0.1:$(PORT)
	$(VENV)/bin/fitml serve --workdir $(WORKDIR) --port $(PORT)

bench: setup ## Benchmarks (needs `make demo` first); JSON results under $(WORKDIR)/bench/
	mkdir -p $(WORKDIR)/bench
	$(PY) -m tests.benchmarks.bench_features --out $(WORKDIR)/bench/features.json \
		--workdir $(WORKDIR)/bench/features-work
	FITML_BENCH_DIR=$(abspath $(WORKDIR))/bench FITML_BENCH_WORKDIR=$(abspath $(WORKDIR)) \
		$(VENV)/bin/pytest -q -m benchmark tests/benchmarks -s -p no:cacheprovider

bench-scale: setup ## Cost curves 0.25M..16M events, local vs Dask (hours; data cached)
	mkdir -p $(WORKDIR)/bench
	nice -n 10 $(PY) -m tests.benchmarks.bench_scale --out $(WORKDIR)/bench/scale.json \
		--cache $(WORKDIR)/bench/scale-data
	nice -n 10 $(PY) -m tests.benchmarks.bench_tuning_workers \
		--out $(WORKDIR)/bench/tuning_workers.json --cache $(WORKDIR)/bench/scale-data

drift-calibrate: setup ## Drift false-alarm and detection rates over many seeds (~20 min)
	$(PY) -m evaluation.calibrate_drift --out $(WORKDIR)/bench/drift_calibration.json

benchmark-rtr: setup ## The public RentTheRunway benchmark (paper and time split) through the product path
	$(VENV)/bin/fitml benchmark renttherunway --train ../shared/data/renttherunway/rtr_dev.jsonl.gz \
		--json $(WORKDIR)/bench/renttherunway.json --workdir $(WORKDIR)
	$(VENV)/bin/fitml benchmark renttherunway --train ../shared/data/renttherunway/rtr_dev.jsonl.gz \
		--protocol time --json $(WORKDIR)/bench/renttherunway_time.json --workdir $(WORKDIR)

audit: setup ## Static analysis (bandit, against the triaged baseline) and dependency audit of both locks
	$(VENV)/bin/bandit -q -r ml_pipeline features training serving evaluation \
		-b deploy/security/bandit-baseline.json
	$(PY) deploy/security/audit_locks.py requirements.lock requirements-runtime.lock $(AUDIT_IGNORE)

IMAGE_TAG  ?= latest
BASE_IMAGE ?= python:3.11-slim-bookworm
images: ## Build fitml-{prediction,session,job} images with docker, else podman (IMAGE_TAG=, BASE_IMAGE=)
	@engine=$$(command -v docker || command -v podman); \
	for target in prediction session job; do \
		BUILDAH_FORMAT=docker $$engine build --target $$target --build-arg BASE_IMAGE=$(BASE_IMAGE) \
			-t fitml-$$target:$(IMAGE_TAG) . || exit 1; \
	done

# The champion image: the prediction image FROM fitml-prediction:$(IMAGE_TAG) with the models
# that hold the champion (and challenger) alias in PROFILE's registry baked in.
PROFILE      ?= prod
CHAMPION_DIR ?= $(WORKDIR)/champion
champion-image: ## Export the registry's champions to $(WORKDIR)/champion, build fitml-prediction-champion (PROFILE=, IMAGE_TAG=)
	rm -rf $(CHAMPION_DIR)
	$(VENV)/bin/fitml bento export --profile $(PROFILE) --workdir $(WORKDIR) --out $(CHAMPION_DIR) >/dev/null
	@engine=$$(command -v docker || command -v podman); \
	version() { $(PY) -c 'import json, sys; print(json.load(open(sys.argv[1]))["models"][sys.argv[2]]["version"])' \
		$(CHAMPION_DIR)/fitml-models.json $$1; }; \
	fit=$$(version fit_champion) && size=$$(version size_champion) && \
	BUILDAH_FORMAT=docker $$engine build -f deploy/champion.Dockerfile \
		--build-arg PREDICTION_IMAGE=fitml-prediction:$(IMAGE_TAG) \
		--build-arg FIT_VERSION=$$fit --build-arg SIZE_VERSION=$$size \
		-t fitml-prediction-champion:$(IMAGE_TAG) -t fitml-prediction-champion:$(IMAGE_TAG)-fit$$fit-size$$size \
		$(CHAMPION_DIR) && echo "fitml-prediction-champion:$(IMAGE_TAG)-fit$$fit-size$$size"

SECRETS_DIR ?= .secrets
secrets: ## Random pseudonym key, service token, API key under .secrets/ (SECRETS_DIR=; git-ignored; kept if present)
	@mkdir -p $(SECRETS_DIR) && chmod 700 $(SECRETS_DIR)
	@test -s $(SECRETS_DIR)/pseudonym_key || python3 -c 'import secrets; print(f"k1:{secrets.token_hex(32)}")' > $(SECRETS_DIR)/pseudonym_key
	@test -s $(SECRETS_DIR)/service_token || python3 -c 'import secrets; print(secrets.token_hex(24))' > $(SECRETS_DIR)/service_token
	@test -s $(SECRETS_DIR)/api_keys || python3 -c 'import secrets; print(secrets.token_hex(24))' > $(SECRETS_DIR)/api_keys
	@test -s $(SECRETS_DIR)/metrics_key || { python3 -c 'import secrets; print(secrets.token_hex(24))' > $(SECRETS_DIR)/metrics_key \
		&& cat $(SECRETS_DIR)/metrics_key >> $(SECRETS_DIR)/api_keys; }  # Prometheus's key is a session API key too
	@test -s $(SECRETS_DIR)/grafana_admin_password || python3 -c 'import secrets; print(secrets.token_urlsafe(18))' > $(SECRETS_DIR)/grafana_admin_password
	@chmod 644 $(SECRETS_DIR)/pseudonym_key $(SECRETS_DIR)/service_token $(SECRETS_DIR)/api_keys $(SECRETS_DIR)/metrics_key $(SECRETS_DIR)/grafana_admin_password  # read by the images' users
	@echo "secrets in $(SECRETS_DIR)/: pseudonym_key service_token api_keys metrics_key grafana_admin_password"

clean: ## Remove the work directory (keeps .venv)
	rm -rf $(WORKDIR)
