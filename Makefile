# Quantix-OS update agent. `make demo` to try it, `make test` to check it.
GO       ?= go
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.7.0
FUZZTIME ?= 20s

.PHONY: all build test test-short lint vet staticcheck demo bench fuzz soak clean

all: build

build:
	@mkdir -p bin
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/agent ./cmd/agent
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/vdc-sim ./cmd/vdc-sim

# The whole suite, race detector on. Integration tests build and drive the real binaries.
test: vet
	$(GO) test -race -count=1 -timeout 14m ./...

vet:
	$(GO) vet ./...

staticcheck:
	$(GO) run $(STATICCHECK) ./...

lint: vet staticcheck

demo: build
	./scripts/demo.sh

# One line per figure (value, baseline, ratio, target, PASS/FAIL); exits 1 on a FAIL. See docs/performance.md.
bench: build
	$(GO) run ./cmd/qx-bench --agent bin/agent

# Each fuzz target for FUZZTIME; what the fuzzer finds lands in the package's testdata/fuzz.
fuzz:
	FUZZTIME=$(FUZZTIME) GO=$(GO) ./scripts/fuzz.sh

# The long versions: every crash point several times, status load at 1,000 req/s for 30 s.
soak:
	QX_SOAK=1 $(GO) test -race -count=1 -timeout 30m -run 'TestCrash|TestLoad|TestHostile' ./cmd/agent ./internal/hostile

clean:
	rm -rf bin
