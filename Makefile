# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
PROTO := protos/dispatcher/gateway/v1/gateway.proto
GEN := server/dispatcher/gateway/v1

.PHONY: run test test-fast check lint fmt types arch proto proto-check buf-lint deploy-check image image-test pytest browser screenshots fuzz bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# The console on http://127.0.0.1:8090/ (no login in the sandbox; GATEWAY_CONSOLE_ADDR= for none).
run: $(STAMP)
	GATEWAY_CONSOLE_ADDR=$${GATEWAY_CONSOLE_ADDR-127.0.0.1:8090} $(BIN)/dispatcher-gateway serve --sandbox

test: check pytest

# The inner loop: unit and contract tests on the fast backends, nothing marked slow (what starts
# processes or servers, or needs NATS: tests/conftest.py says which). `make test` runs them all.
test-fast: $(STAMP)
	$(BIN)/pytest tests/unit tests/contract -m "not slow"

check: lint types arch proto-check buf-lint deploy-check

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

types: $(STAMP)
	$(BIN)/mypy

# The arrows between the rooms of server/ (pyproject.toml's import-linter contracts).
arch: $(STAMP)
	$(BIN)/lint-imports

proto: $(STAMP)
	scripts/gen-proto $(GEN)

# The committed stubs must be what the .proto generates today.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && scripts/gen-proto $$tmp/v1 && \
	if diff -r -x __pycache__ $$tmp/v1 $(GEN) >/dev/null; then echo "proto stubs: up to date"; rm -rf $$tmp; \
	else diff -r -x __pycache__ $$tmp/v1 $(GEN) | head -20; rm -rf $$tmp; \
	echo "proto stubs drifted from $(PROTO): run 'make proto' and commit"; exit 1; fi

buf-lint: $(STAMP)
	cd protos && ../$(BIN)/buf lint

# deploy/: each overlay rendered as kubectl applies it, validated strictly against the oldest
# Kubernetes it supports and the newest schema kubernetes-validate ships; the Dockerfile linted;
# tests/deploy checks what schemas cannot see (selectors, references, ports, grace, policies).
K8S_OLDEST := 1.30.0
# promtool checks deploy/monitoring's alert rules and runs their unit tests: taken from Debian's
# prometheus package unpacked aside (not installed: no server, no service), promtool kept.
PROMTOOL := $(BIN)/promtool
$(PROMTOOL): $(STAMP)
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && cd $$tmp && \
	{ apt-get download prometheus >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get download prometheus; }; } && \
	dpkg -x prometheus_*.deb unpacked && cp unpacked/usr/bin/promtool $(CURDIR)/$(PROMTOOL)
	@$(PROMTOOL) --version | head -1

deploy-check: $(STAMP) $(PROMTOOL)
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	newest=$$($(BIN)/python -c 'from kubernetes_validate.utils import latest_version as v; print(v())') && \
	for overlay in single ha; do \
	  $(BIN)/kubectl kustomize deploy/k8s/overlays/$$overlay > $$tmp/$$overlay.yaml || exit 1; \
	  for version in $(K8S_OLDEST) $$newest; do \
	    $(BIN)/kubernetes-validate --strict --quiet -k $$version $$tmp/$$overlay.yaml || exit 1; \
	  done; \
	  echo "deploy/k8s/overlays/$$overlay: valid for Kubernetes $(K8S_OLDEST) and $$newest (strict)"; \
	done
	$(BIN)/hadolint deploy/Dockerfile
	$(PROMTOOL) check rules deploy/monitoring/alerts.yaml
	cd deploy/monitoring && $(CURDIR)/$(PROMTOOL) test rules alerts.test.yaml
	$(BIN)/pytest -q tests/deploy

pytest: $(STAMP) browser
	$(BIN)/pytest

# tests/browser drives Debian's chromium with Selenium through chromium-driver.
browser:
	@scripts/install-browser

# The console's screenshots in docs/console/ (the README shows them), taken by tests/browser.
screenshots: $(STAMP) browser
	CONSOLE_SCREENSHOTS=docs/console $(BIN)/pytest -q tests/browser

# deploy/Dockerfile built with docker or buildah (offline: a wheelhouse made here, and a Debian
# base where python:3.11-slim cannot be pulled); image-test also runs it: ready, one dispatch
# through its sandbox, SIGTERM drained with exit 0.
image: $(STAMP)
	deploy/image/build

image-test: $(STAMP)
	deploy/image/test

# tests/fuzz for longer than `make test` gives it: FUZZ_BUDGET seconds (10 minutes) of fuzzing
# shared by the edges, no cap on examples; the figures print at the end.
FUZZ_BUDGET ?= 600
fuzz: $(STAMP)
	FUZZ_BUDGET=$(FUZZ_BUDGET) $(BIN)/pytest tests/fuzz

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $(BENCH_STAMP)

# Figures under bench-results/ (table, results.json, latency.png); about 5 minutes.
bench: $(BENCH_STAMP)
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
