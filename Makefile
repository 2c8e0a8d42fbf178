# Run `make` (or `make help`) for the list of targets.
SHELL := /usr/bin/env bash
.DEFAULT_GOAL := help

CARGO ?= cargo
DEV_DIR ?= .dev
ADMIN_MOBILE ?= 18800000000
ADMIN_PASSWORD ?= admin-password

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build every crate (debug)
	$(CARGO) build --workspace

.PHONY: dev
dev: build ## Run Consul (real if installed, else the double), seed demo users, 2 x user-srv; Ctrl-C stops all
	DEV_DIR=$(DEV_DIR) ADMIN_MOBILE=$(ADMIN_MOBILE) ADMIN_PASSWORD=$(ADMIN_PASSWORD) scripts/dev.sh

.PHONY: test
test: fmt-check lint ## Everything CI runs: format check, clippy, all tests on SQLite and PostgreSQL
	scripts/with-postgres.sh $(CARGO) test --workspace

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
