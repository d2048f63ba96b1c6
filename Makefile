# One entry point for every task. `make demo` and `make test` are the two a newcomer needs.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Tools (buf, grpc_tools, ruff, mypy, pytest) come from the project's own venv.
export PATH := $(CURDIR)/$(BIN):$(PATH)
STAMP := $(VENV)/.installed
# Command-line tools the tests drive as a user would, installed from the Go module proxy.
TOOLS := .tools/bin
GRPCURL_VERSION := v1.9.4
BASELINE := proto/published/agentflux-v1.binpb
TYPED := services $(wildcard interceptors)

.PHONY: help venv tools gen gen-check publish-contract lint fmt typecheck stack-up stack-down stack-status demo test test-unit test-integration bench bench-hops bench-guard bench-consumers bench-runs clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP) ## Create .venv and install agentflux with its dev extras

$(TOOLS)/grpcurl:
	GOBIN=$(CURDIR)/$(TOOLS) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

tools: $(TOOLS)/grpcurl ## Install the CLI tools the tests use (grpcurl) into .tools/bin

gen: $(STAMP) ## Regenerate gen/python from proto/
	buf format -w
	scripts/gen-python gen/python

gen-check: $(STAMP) ## Fail when gen/ or proto formatting is stale, lint fails, or a change breaks the published contract
	buf lint
	buf format --diff --exit-code
	buf breaking --against $(BASELINE)
	scripts/gen-check

publish-contract: $(STAMP) ## Make the current contracts the baseline `buf breaking` compares against
	buf build -o $(BASELINE)

lint: $(STAMP) ## ruff (lint and format check), mypy, and the import layers (import-linter)
	ruff check .
	ruff format --check .
	mypy $(TYPED)
	lint-imports

fmt: $(STAMP) ## Format Python and proto files
	ruff format .
	ruff check --fix .
	buf format -w

typecheck: $(STAMP)
	mypy $(TYPED)

stack-up: $(STAMP) ## Install (if missing) and start Kafka, RabbitMQ, Redis and Memcached on loopback
	agentflux stack up

stack-down: $(STAMP) ## Stop what `stack up` started (data is kept; add ARGS=--wipe to delete it)
	agentflux stack down $(ARGS)

stack-status: $(STAMP) ## Show each local service and its port
	agentflux stack status

demo: stack-up ## Start the stack and the mesh, ask questions that use every tool, print a trace
	agentflux demo

test: stack-up tools gen-check lint ## Everything CI runs: stack, contract checks, lint, types, all tests
	@rc=0; pytest || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; fi; \
	exit $$rc

test-unit: $(STAMP) ## Unit tests only (no stack needed)
	pytest tests/unit

test-integration: stack-up ## Integration tests against the real brokers
	pytest tests/integration

bench: stack-up ## Every hop, the idempotency guard, the consumers and whole runs, each beside its raw baseline (ARGS=--quick)
	python -m bench.hops $(ARGS)
	python -m bench.guard $(ARGS)
	python -m bench.consumers $(ARGS)
	python -m bench.runs $(ARGS)

bench-hops: stack-up ## Each hop raw vs through agentflux, with ratios (ARGS=--quick | --hop NAME | --json PATH)
	python -m bench.hops $(ARGS)

bench-guard: stack-up ## The idempotency guard with and without a Bloom filter, and where a Bloom filter pays (ARGS=--quick | --json PATH)
	python -m bench.guard $(ARGS)

bench-consumers: stack-up ## Concurrent consumers beside one-at-a-time ones, Kafka and RabbitMQ (ARGS=--quick | --json PATH)
	python -m bench.consumers $(ARGS)

bench-runs: stack-up ## Whole runs through `agentflux serve` beside the same hops with bare clients (ARGS=--quick | --rate R | --json PATH)
	python -m bench.runs $(ARGS)

clean: ## Remove the venv and caches (not the stack's data: `agentflux stack down --wipe`)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
