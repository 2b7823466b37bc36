# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
PROTO := protos/dispatcher/gateway/v1/gateway.proto
GEN := server/dispatcher/gateway/v1

.PHONY: run test test-fast check lint fmt types proto proto-check buf-lint pytest fuzz bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/dispatcher-gateway serve --sandbox

test: check pytest

# The inner loop: unit and contract tests on the fast backends, nothing marked slow (what starts
# processes or servers, or needs NATS: tests/conftest.py says which). `make test` runs them all.
test-fast: $(STAMP)
	$(BIN)/pytest tests/unit tests/contract -m "not slow"

check: lint types proto-check buf-lint

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

types: $(STAMP)
	$(BIN)/mypy

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

pytest: $(STAMP)
	$(BIN)/pytest

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
