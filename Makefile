# The two entry points (see README.md): `make demo` and `make test`.
# Each installs the Debian packages it needs when they are missing.

CARGO ?= cargo
BUILD_PACKAGES := libseccomp-dev pkg-config gcc
BIN := target/debug

.PHONY: demo test build deps bench clean

deps:
	@scripts/need-packages $(BUILD_PACKAGES)

build: deps
	$(CARGO) build --workspace

# The bundled C target: 2 threads, 3 closes each, with a SIGILL handler.
$(BIN)/closer: tests/fixtures/closer.c | build
	cc -O2 -Wall -pthread -o $@ $<

demo: build $(BIN)/closer
	$(BIN)/sigvisor run profiles/signal.yaml -- $(BIN)/closer --threads 2 --closes 3

test: build
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

# µs per close under each supervision mode, side by side (docs/benchmarks.md).
bench: deps
	bench/run.sh

clean:
	$(CARGO) clean
