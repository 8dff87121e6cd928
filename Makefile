# The two entry points (see README.md): `make demo` and `make test`.
# Each installs the Debian packages it needs when they are missing.

CARGO ?= cargo
# The machine's own Go (/usr/local/go) comes first; Debian's golang-go only
# where there is no Go at all.
export PATH := $(if $(wildcard /usr/local/go/bin/go),/usr/local/go/bin:)$(PATH)
PACKAGES := libseccomp-dev pkg-config gcc binutils runc crun busybox-static
ifeq ($(shell command -v go),)
PACKAGES += golang-go
endif
# Real programs the tests run under sigvisor (tests/tests/never_crash.rs).
PACKAGES += python3 openjdk-17-jdk-headless podman
# The engines the shim is registered with (tests/tests/engines.rs).
PACKAGES += docker.io containerd
BIN := target/debug
GO_DEMO := examples/gosignal/gosignal
# Go 1.19 or later, stdlib and cgo only: nothing is downloaded.
GO_ENV := CGO_ENABLED=1 GOTOOLCHAIN=local GOFLAGS=-mod=mod GOCACHE=$(CURDIR)/target/go-build

ARCH := $(shell uname -m)
MULTIARCH := $(shell gcc -print-multiarch 2>/dev/null)
# The tests run an i386 program too, to check the filter's compat ABI.
ifeq ($(ARCH),x86_64)
PACKAGES += gcc-multilib
endif

.PHONY: demo test build deps bench clean static-launcher static image cluster

deps:
	@scripts/need-packages $(PACKAGES)

build: deps
	$(CARGO) build --workspace

# sigvisor-launch linked statically (glibc and libseccomp), to run inside any
# image, e.g. a busybox-only one: target/debug/sigvisor-launch-static.
static-launcher: deps
	LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/$(MULTIARCH) \
	RUSTFLAGS="-C target-feature=+crt-static" \
	$(CARGO) build --release -p sigvisor-launch --target $(ARCH)-unknown-linux-gnu
	mkdir -p $(BIN)
	cp target/$(ARCH)-unknown-linux-gnu/release/sigvisor-launch $(BIN)/sigvisor-launch-static

# sigvisor linked statically too, and the agent's image from
# deploy/Containerfile (localhost/sigvisor:latest, offline; docs/kubernetes.md).
static: static-launcher
	LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/$(MULTIARCH) \
	RUSTFLAGS="-C target-feature=+crt-static" \
	$(CARGO) build --release -p sigvisor --target $(ARCH)-unknown-linux-gnu
	cp target/$(ARCH)-unknown-linux-gnu/release/sigvisor $(BIN)/sigvisor-static

image: static
	deploy/build-image

$(GO_DEMO): examples/gosignal/main.go examples/gosignal/go.mod | deps
	cd examples/gosignal && $(GO_ENV) go build -o gosignal .

# Who closes this file? Two goroutine dumps, then the Trace status.
demo: build $(GO_DEMO)
	$(BIN)/sigvisor run profiles/gosignal.yaml -- $(GO_DEMO)

# The Kubernetes control plane the tests run (tests/cluster/up), built once
# per machine from the Go module proxy; it needs Go 1.26 or later, without
# which the Kubernetes tests are skipped (and fail on CI).
cluster:
	@if go version 2>/dev/null | grep -qE 'go1\.(2[6-9]|[3-9][0-9])'; then tests/cluster/build >/dev/null; \
	else echo "no Go 1.26 or later: the Kubernetes tests are skipped"; fi

test: build static cluster
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

# µs per close under each supervision mode, side by side (docs/benchmarks.md).
bench: deps
	bench/run.sh

clean:
	$(CARGO) clean
	rm -f $(GO_DEMO)
