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
# The code generators behind buf.gen.yaml, pinned: each generated tree in gen/ names them.
GO_PROTOBUF_VERSION := v1.36.12
GO_GRPC_PLUGIN_VERSION := v1.6.2
PROTOC_VERSION := 4.36.2
GRPC_JAVA_PLUGIN_VERSION := 1.83.1
GENERATORS := $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc $(TOOLS)/protoc \
  $(TOOLS)/protoc-gen-grpc-java gen/ts/node_modules/.package-lock.json
TYPED := services $(wildcard interceptors)

SDK_LANGS := go ts java

.PHONY: help venv tools sdk $(addprefix sdk-,$(SDK_LANGS)) gen gen-check publish-contract lint fmt typecheck stack-up stack-down stack-status demo test test-unit test-integration bench bench-hops bench-guard bench-consumers bench-runs clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP) ## Create .venv and install agentflux with its dev extras

# Each tool is rebuilt when its pinned version changes (the stamp names the version).
$(TOOLS)/grpcurl: $(TOOLS)/.grpcurl-$(GRPCURL_VERSION)
$(TOOLS)/.grpcurl-$(GRPCURL_VERSION):
	GOBIN=$(CURDIR)/$(TOOLS) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)
	@touch $@

$(TOOLS)/protoc-gen-go: $(TOOLS)/.protoc-gen-go-$(GO_PROTOBUF_VERSION)
$(TOOLS)/.protoc-gen-go-$(GO_PROTOBUF_VERSION):
	GOBIN=$(CURDIR)/$(TOOLS) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(GO_PROTOBUF_VERSION)
	@touch $@

$(TOOLS)/protoc-gen-go-grpc: $(TOOLS)/.protoc-gen-go-grpc-$(GO_GRPC_PLUGIN_VERSION)
$(TOOLS)/.protoc-gen-go-grpc-$(GO_GRPC_PLUGIN_VERSION):
	GOBIN=$(CURDIR)/$(TOOLS) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(GO_GRPC_PLUGIN_VERSION)
	@touch $@

$(TOOLS)/protoc: $(TOOLS)/.protoc-$(PROTOC_VERSION)
$(TOOLS)/.protoc-$(PROTOC_VERSION):
	scripts/fetch-maven-exe com.google.protobuf:protoc:$(PROTOC_VERSION) $(TOOLS)/protoc
	@touch $@

$(TOOLS)/protoc-gen-grpc-java: $(TOOLS)/.protoc-gen-grpc-java-$(GRPC_JAVA_PLUGIN_VERSION)
$(TOOLS)/.protoc-gen-grpc-java-$(GRPC_JAVA_PLUGIN_VERSION):
	scripts/fetch-maven-exe io.grpc:protoc-gen-grpc-java:$(GRPC_JAVA_PLUGIN_VERSION) $(TOOLS)/protoc-gen-grpc-java
	@touch $@

# protoc-gen-es is a devDependency of the TypeScript package, pinned by its lock file.
gen/ts/node_modules/.package-lock.json: gen/ts/package-lock.json
	npm ci --prefix gen/ts --no-audit --no-fund

tools: $(TOOLS)/grpcurl $(GENERATORS) ## Install grpcurl and the pinned code generators (Go, npm, Maven) into .tools/bin

gen: $(STAMP) $(GENERATORS) ## Regenerate gen/ (Python, Go, TypeScript, Java) from proto/
	buf format -w
	scripts/gen

gen-check: $(STAMP) $(GENERATORS) ## Fail when gen/ or proto formatting is stale, lint fails, or a change breaks a released contract
	buf lint
	buf format --diff --exit-code
	scripts/contract-check
	scripts/gen-check

sdk: $(addprefix sdk-,$(SDK_LANGS)) ## Build the Go, TypeScript and Java packages of gen/ and their clients in sdk/

# Phony targets get no pattern rules: one rule per language.
sdk-go sdk-ts sdk-java: $(GENERATORS)
	scripts/build-$@

publish-contract: $(STAMP) ## Release the contracts as VERSION (make publish-contract VERSION=1.2): the new baseline of `buf breaking`, and its golden records
	@test -n "$(VERSION)" || { echo "name the release: make publish-contract VERSION=1.2" >&2; exit 1; }
	@test ! -e proto/published/agentflux-v$(VERSION).binpb || { echo "release v$(VERSION) is already published" >&2; exit 1; }
	buf build -o proto/published/agentflux-v$(VERSION).binpb
	python -m tests.golden v$(VERSION)

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

test: stack-up tools gen-check lint sdk ## Everything CI runs: stack, contract checks, lint, types, the SDKs' builds, all tests
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

bench-hops: stack-up ## Each hop raw, with the stock OpenTelemetry instrumentation and through agentflux, with ratios (ARGS=--quick | --hop NAME | --json PATH)
	python -m bench.hops $(ARGS)

bench-guard: stack-up ## The idempotency guard with and without a Bloom filter, and where a Bloom filter pays (ARGS=--quick | --json PATH)
	python -m bench.guard $(ARGS)

bench-consumers: stack-up ## Concurrent consumers beside one-at-a-time ones, Kafka and RabbitMQ (ARGS=--quick | --json PATH)
	python -m bench.consumers $(ARGS)

bench-runs: stack-up ## Whole runs through `agentflux serve` (traced and sampled out) beside the same hops with bare clients, and the knee of sustained runs/s (ARGS=--quick | --rate R | --json PATH)
	python -m bench.runs $(ARGS)

clean: ## Remove the venv and caches (not the stack's data: `agentflux stack down --wipe`)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
