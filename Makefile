# Partner Ledger developer loop. `make test` and `make lint` are what CI runs (.ci/run); both install
# what they need on a fresh machine (cargo-nextest) and need no running server.
CARGO ?= cargo
NEXTEST_PROFILE ?= default
export CARGO_TERM_COLOR ?= never

.PHONY: build test lint bench tools fmt

build:
	$(CARGO) build --workspace --all-targets

# Tools the targets need; installed from crates.io when absent.
tools:
	@command -v cargo-nextest >/dev/null 2>&1 || $(CARGO) install cargo-nextest --locked

test: tools
	$(CARGO) nextest run --workspace --profile $(NEXTEST_PROFILE)
	$(CARGO) test --workspace --doc

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p pl-eventlog --all-targets --features eventstoredb -- -D warnings

fmt:
	$(CARGO) fmt --all

# Numbers for issue notes, never a pass/fail test. Prints one table per benchmark.
bench:
	$(CARGO) bench -p pl-eventlog --bench eventlog
