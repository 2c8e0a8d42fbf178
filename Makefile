# Run `make` (or `make help`) for the list of targets.
SHELL := /usr/bin/env bash
.DEFAULT_GOAL := help

CARGO ?= cargo
DEV_DIR ?= .dev
ADMIN_MOBILE ?= 18800000000
ADMIN_PASSWORD ?= admin-password
WEB_PORT ?= 8021
NAME ?=
WEB ?= 0
DB ?= sqlite
LOG ?= info

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build every crate (debug)
	@echo "building the workspace (the first build takes a few minutes)..."
	$(CARGO) build --workspace

.PHONY: dev
dev: build ## Consul (real if installed, else the double), demo users, 2 x user-srv, user-web on :8021 (WEB_PORT=...); Ctrl-C stops all
	DEV_DIR=$(DEV_DIR) WEB_PORT=$(WEB_PORT) ADMIN_MOBILE=$(ADMIN_MOBILE) ADMIN_PASSWORD=$(ADMIN_PASSWORD) scripts/dev.sh

.PHONY: test
test: fmt-check lint ## Everything CI runs: format check, clippy, all tests on SQLite and PostgreSQL (each test with its own Consul double, then all sharing one), the generator's test, the API fuzzer (30 examples per operation)
	scripts/with-postgres.sh bash -c '$(CARGO) test --workspace && { [ -n "$${CONSUL_HTTP_ADDR:-}" ] || scripts/test-shared-agent.sh; } && scripts/test-new-service.sh'
	FUZZ_EXAMPLES=30 scripts/fuzz-api.sh

.PHONY: test-shared-agent
test-shared-agent: ## The whole suite against one Consul agent every test shares (CONSUL_HTTP_ADDR's, else one double)
	scripts/test-shared-agent.sh

.PHONY: fuzz-api
fuzz-api: ## user-web against its own OpenAPI document: schemathesis --checks all, as an admin and as a user; FUZZ_EXAMPLES=n (default 100)
	scripts/fuzz-api.sh

.PHONY: new-service
new-service: ## A new service: NAME=goods (gRPC, Consul, make dev, deploy/, tests); WEB=1 adds its gateway
	NAME=$(NAME) WEB=$(WEB) scripts/new-service.sh

.PHONY: bench
bench: ## List endpoint and /health ceiling under wrk (release build); DB=postgres, LOG=warn, RUNS=n, TRACES=on
	DB=$(DB) LOG=$(LOG) TRACES=$(TRACES) scripts/bench.sh

.PHONY: bench-login
bench-login: ## Login timing: unknown mobile vs wrong password, side by side (release build); N=300
	N=$(N) scripts/bench-login.sh

.PHONY: bench-peer
bench-peer: ## This stack and the Go peer (PEER_DIR) alternating, at LOG=info and warn; prints ratios
	scripts/bench-peer.sh

.PHONY: bench-watch
bench-watch: ## What one membership change costs user-web among N instances (release build; the double, or CONSUL_HTTP_ADDR); N=1000, CHANGES=60
	N=$(or $(N),1000) CHANGES=$(or $(CHANGES),60) scripts/bench-watch.sh

.PHONY: bench-instructions
bench-instructions: ## user-web's instructions per list request under callgrind (repeatable on a noisy machine); BIN, N=2000
	scripts/bench-instructions.sh

.PHONY: chaos
chaos: ## Failures under load (frozen, kill -9, SIGTERM, rolling restart, Consul away, database away); prints each
	scripts/chaos.sh

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: fmt-check
fmt-check: ## Fail if the code is not formatted
	$(CARGO) fmt --all -- --check

.PHONY: lint
lint: ## clippy on every target, warnings are errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: clean
clean: ## Remove build output and dev data
	$(CARGO) clean
	rm -rf $(DEV_DIR)
