# Partner Ledger developer loop. `make test` and `make lint` are what CI runs (.ci/run); they
# install what they need on a fresh machine (cargo-nextest, nats-server) and need no running
# server: tests start their own nats-server on a free port.
CARGO ?= cargo
NEXTEST_PROFILE ?= default
export CARGO_TERM_COLOR ?= never

DATA_DIR ?= ./data
LISTEN ?= 127.0.0.1:50051

.PHONY: build run test lint bench bench-e2e demo tools fmt deploy-check

build:
	$(CARGO) build --workspace --all-targets

# Tools the targets need, installed when absent: cargo-nextest from crates.io, and nats-server
# (tests start their own on a free port) from Debian's packages.
tools:
	@command -v cargo-nextest >/dev/null 2>&1 || $(CARGO) install cargo-nextest --locked
	@command -v nats-server >/dev/null 2>&1 || test -x /usr/sbin/nats-server || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server; }

# All four services in one process on the embedded log and the in-process bus.
run:
	$(CARGO) run --release -p partner-ledger -- up --data-dir $(DATA_DIR) --listen $(LISTEN)

test: tools
	$(CARGO) nextest run --workspace --profile $(NEXTEST_PROFILE)
	$(CARGO) test --workspace --doc

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	$(MAKE) deploy-check

# The Kubernetes manifests, offline: render deploy/'s overlays (kubectl kustomize), validate them
# against the Kubernetes schemas, check their secure defaults and references, and run the
# binary's --check-config with each container's arguments and environment. Installs kubectl
# and kubernetes-validate from PyPI into a virtualenv under ~/.cache when absent.
deploy-check:
	CARGO=$(CARGO) bash .ci/deploy-check

fmt:
	$(CARGO) fmt --all

# A twelve-month partner program driven over gRPC against `up` on the embedded log, with each
# partner's balances checked against the plan terms (README "End to end").
demo:
	$(CARGO) run --release -p pl-e2e --bin demo

# Conversions/s and latency through gRPC, embedded and over NATS (needs nats-server: tools).
bench-e2e: tools
	$(CARGO) build --release -p partner-ledger
	$(CARGO) bench -p pl-e2e --bench e2e

# Numbers for issue notes, never a pass/fail test. Prints one table per benchmark.
bench:
	$(CARGO) bench -p pl-eventlog --bench eventlog
	$(CARGO) bench -p pl-commissions --bench commissions
	$(CARGO) bench -p pl-attribution --bench attribution
