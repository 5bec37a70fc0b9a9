# banger — see README.md. `make demo` and `make test` each do all set-up.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/banger/banger/internal/version.Version=$(VERSION)
INIT_FLAGS := -trimpath -buildvcs=false
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Fuzz targets run briefly in every test run, bounded by a number of
# executions rather than a time: a time-bounded run can fail with "context
# deadline exceeded" when the deadline lands on a busy worker.
FUZZN ?= 1

.PHONY: all deps build test unit e2e fuzz lint bench demo clean

all: build

deps:
	@scripts/deps.sh

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/banger ./cmd/banger
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/bangerd ./cmd/bangerd
	# The Kubernetes node (virtual-kubelet): its own binary, so banger and
	# bangerd carry no client-go.
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/banger-vk ./cmd/banger-vk
	# Reproducible: the image recipe key hashes this binary, so the same
	# source must give the same bytes whatever the checkout path or version.
	CGO_ENABLED=0 $(GO) build $(INIT_FLAGS) -o bin/banger-init ./cmd/banger-init

# The whole suite: unit and integration tests, fuzz smoke, and the
# end-to-end tests that boot real guests under QEMU inside test network
# namespaces.
test: deps build
	# The end-to-end package first: it is the longest by far and leaves a
	# core idle much of the time (a booting guest runs on one vCPU), so the
	# other packages run beside it instead of before it.
	BANGER_E2E=1 $(GO) test -count=1 -timeout 60m ./test/e2e/ ./...
	$(MAKE) --no-print-directory fuzz

unit: build
	$(GO) test -count=1 ./...

e2e: deps build
	BANGER_E2E=1 $(GO) test -count=1 -timeout 60m -v ./test/...

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzValidateName$$' -fuzztime $$((200000 * $(FUZZN)))x ./internal/model
	$(GO) test -run '^$$' -fuzz '^FuzzParseSize$$' -fuzztime $$((200000 * $(FUZZN)))x ./internal/model
	$(GO) test -run '^$$' -fuzz '^FuzzQuote$$' -fuzztime $$((2000 * $(FUZZN)))x ./internal/shell
	$(GO) test -run '^$$' -fuzz '^FuzzValidEnvKey$$' -fuzztime $$((20000 * $(FUZZN)))x ./internal/shell
	$(GO) test -run '^$$' -fuzz '^FuzzRunnerHostile$$' -fuzztime $$((20 * $(FUZZN)))x ./internal/session

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	shellcheck scripts/*.sh .ci/run

# Every benchmark reports ratios against a baseline measured in the same
# run: create time 20 GiB vs 1 GiB image, vm run vs a bare QEMU boot, session
# send vs a bare ssh, workspace prepare vs tar over ssh, pooled vs fresh SSH,
# vm cp vs tar over vm ssh, a published port vs a direct connection, a
# Kubernetes pod to Running vs vm run.
bench: deps build
	$(GO) test -run '^$$' -bench . -benchtime 3x ./internal/...
	BANGER_E2E=1 BANGER_BENCH=1 $(GO) test -count=1 -timeout 60m -v -run 'Bench' -bench . -benchtime 1x ./test/e2e/

# The main job: boot a VM and run a command in it (default: uname -a).
demo: deps build
	scripts/demo.sh $(CMD)

clean:
	rm -rf bin
