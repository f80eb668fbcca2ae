# CertNode pipeline. Quick start: `make run`, `make test` (see README.md).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
GO ?= go
LOCAL ?= $(CURDIR)/.local
export CERTNODE_LOCAL := $(LOCAL)
# Integration tests find SoftHSM2 through these (written by deploy/local/softhsm.sh).
WITH_HSM = set -a; . $(LOCAL)/softhsm/env; set +a;

.PHONY: build run up down test test-unit fuzz services services-down lint bench clean

# certnode version reports these (the toolchain's own VCS stamp is missing
# in git worktrees and with -buildvcs=false).
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo devel)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)

build:
	$(GO) build -ldflags "-X main.version=$(VERSION) -X main.commit=$(COMMIT)" -o bin/certnode ./cmd/certnode

# The whole pipeline in one process on an embedded Kafka; state in .local/dev.
run: build
	./bin/certnode dev --data $(LOCAL)/dev

# The full system as separate processes on real Kafka, ClickHouse and SoftHSM2.
up: build
	bash deploy/local/up.sh up

down:
	bash deploy/local/up.sh down

services:
	bash deploy/local/services.sh up

services-down:
	bash deploy/local/services.sh down

# Everything: installs and starts the real services, the fuzz targets
# briefly, then unit and integration tests with the race detector.
test: services lint fuzz
	$(WITH_HSM) $(GO) test -race -tags integration -count=1 -timeout 20m ./...

# Unit tests only; no services needed.
test-unit:
	$(GO) test -race -count=1 ./...

# Every Go fuzz target in FUZZPKGS, each for FUZZTIME: go test -list finds
# them (new ones are picked up), and go test -fuzz takes one package and one
# target per run. A failing input is saved in the package's testdata/fuzz/,
# where every later go test runs it: commit it with the fix. FUZZTIME is a
# count of runs, not a duration: Go 1.26's fuzzing coordinator can report a
# spurious "context deadline exceeded" when a duration ends while a worker
# is busy on a loaded machine (golang/go#75804, fixed in Go 1.27).
FUZZTIME ?= 30000x
FUZZPKGS ?= ./...
fuzz:
	$(GO) test -list '^Fuzz' $(FUZZPKGS) \
	| awk '/^Fuzz/ { t = t " " $$1 } /^ok / { if (t != "") print $$2 t; t = "" }' \
	| while read -r pkg targets; do \
		for t in $$targets; do \
			echo "fuzz: $$pkg $$t for $(FUZZTIME)"; \
			$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) $$pkg </dev/null; \
		done; \
	done

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags integration ./...

# The HTTP load runs once per receipt algorithm: certnode dev signs with a
# fresh software key ring of that algorithm ($CERTNODE_KEYRING).
BENCH_ALGS ?= ES256 EdDSA
bench: build
	bash deploy/local/softhsm.sh init
	$(WITH_HSM) $(GO) test -run '^$$' -bench . -benchtime 2s -count 1 ./bench/ | tee $(LOCAL)/bench.txt
	for alg in $(BENCH_ALGS); do \
	  ring=$(LOCAL)/bench-keyring-$$alg; rm -rf $$ring; \
	  ./bin/certnode keys generate --keyring $$ring --alg $$alg >/dev/null; \
	  CERTNODE_KEYRING=$$ring bash deploy/local/bench.sh; \
	done | tee -a $(LOCAL)/bench.txt

clean:
	rm -rf bin
