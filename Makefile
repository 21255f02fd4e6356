# kiln — per-node FaaS agent. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
TOOLS := $(CURDIR)/bin/tools
export PATH := $(TOOLS):$(PATH)
DATA_DIR ?= /var/lib/kiln
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
STATICCHECK_VERSION := v0.8.2
BUF_VERSION := v1.75.0
GOTEST_FLAGS ?= -race -timeout 30m

.PHONY: help setup build run test unit soak proto check bench bench-quick clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

setup: ## install what kiln needs (containerd, runc, crun, gcc, mmdebstrap, python3, node, npm, ruby, g++, a JDK and mono for the runtime tests, buf and the Go tools) when missing
	@need=""; \
	for c in containerd:containerd ctr:containerd runc:runc crun:crun gcc:gcc prlimit:util-linux mmdebstrap:mmdebstrap python3:python3 node:nodejs npm:npm ruby:ruby g++:g++ javac:openjdk-17-jdk-headless mcs:mono-mcs mono:mono-runtime; do \
	  command -v $${c%%:*} >/dev/null 2>&1 || need="$$need $${c##*:}"; \
	done; \
	if [ -n "$$need" ]; then \
	  echo "installing:$$need"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$need; \
	fi
	@mkdir -p $(TOOLS)
	@test -x $(TOOLS)/protoc-gen-go || GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@test -x $(TOOLS)/protoc-gen-go-grpc || GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	@test -x $(TOOLS)/staticcheck || GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@test -x $(TOOLS)/buf || GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)

build: ## build kilnd, kiln-executor (static) and kiln into ./bin
	$(GO) build -o bin/kilnd ./cmd/kilnd
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/kiln-executor ./cmd/kiln-executor
	$(GO) build -o bin/kiln ./cmd/kiln

run: setup build ## start the agent with its defaults (managed containerd, SQLite in $(DATA_DIR)); installs the kiln CLI in /usr/local/bin
	install -m 0755 bin/kiln /usr/local/bin/kiln
	./bin/kilnd --data-dir $(DATA_DIR)

test: setup ## run every test: unit tests and the integration tests on a real containerd (started by the tests)
	$(GO) test $(GOTEST_FLAGS) ./...

unit: ## run only the tests that need nothing installed
	KILN_UNIT_ONLY=1 $(GO) test $(GOTEST_FLAGS) -short ./...

soak: setup ## long fault runs, the tests named Soak (30 s of 10x overload on the gRPC edge); CI does not run them
	KILN_SOAK=1 $(GO) test -race -count=1 -run 'Soak' -timeout 30m ./cmd/kilnd/

proto: setup ## regenerate the Go code of proto/*.proto (checked in) with the pinned buf and plugins
	buf generate

check: setup ## gofmt, go vet, staticcheck, generated-code drift, go mod tidy drift, layering
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	staticcheck ./...
	./scripts/check-proto.sh
	./scripts/check-tidy.sh
	./scripts/check-layering.sh

bench: build ## every benchmark scenario (about 16 min; root, containerd): rewrites docs/BENCHMARKS.md and docs/bench/*.png
	$(GO) run ./bench/cmd/kiln-bench -make "make bench" -out bench/results -report docs/BENCHMARKS.md

bench-quick: build ## a look at the benchmarks in under a minute: bench/results/quick.md, docs untouched
	$(GO) run ./bench/cmd/kiln-bench -quick -make "make bench-quick" -out bench/results -report bench/results/quick.md

clean: ## remove build output
	rm -rf bin
