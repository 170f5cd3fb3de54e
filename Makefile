# activekit's two commands: 'make test' (everything, against real servers) and 'make unit'
# (no server needed). See README.md and docs/testing.md.

GO            ?= go
STATICCHECK   := honnef.co/go/tools/cmd/staticcheck@v0.8.2
GOTESTFLAGS   ?= -race -count=1 -timeout 20m
PKGS          ?= ./...
SERVICES      := scripts/services
# The variables that point tests at servers; 'make unit' clears them.
SERVER_VARS   := ACTIVEKIT_REDIS_ADDR ACTIVEKIT_REDIS_SENTINELS ACTIVEKIT_REDIS_MASTER \
                 ACTIVEKIT_REDIS_CLUSTER ACTIVEKIT_MEMCACHED_ADDR ACTIVEKIT_MONGO_URI \
                 ACTIVEKIT_KAFKA_BROKERS ACTIVEKIT_CONSUL_ADDR ACTIVEKIT_SERVICES

.PHONY: test unit lint bench fuzz services-up services-down

## test: start the real servers, run every test with the race detector (a missing server fails), stop them;
## then the bench/ module's tests (TestLostUpdates: activekit must lose no update; the rivals' counts)
test:
	$(GO) mod download
	if [ -f bench/go.mod ]; then cd bench && $(GO) mod download; fi
	$(SERVICES) run -- env ACTIVEKIT_REQUIRE_INTEGRATION=1 sh -c '$(GO) test $(GOTESTFLAGS) $(PKGS) && if [ -f bench/go.mod ]; then cd bench && $(GO) test $(GOTESTFLAGS) ./...; fi'

## unit: the tests that need no server (integration tests skip, no containers are started)
unit:
	env $(addprefix -u ,$(SERVER_VARS)) ACTIVEKIT_TESTCONTAINERS=0 $(GO) test $(GOTESTFLAGS) -short $(PKGS)

## lint: gofmt, go vet and staticcheck (pinned)
lint:
	@out=$$(gofmt -l . | grep -v '^bench/vendor/' || true); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) run $(STATICCHECK) $(PKGS)
	if [ -f bench/go.mod ]; then cd bench && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...; fi

## bench: benchmarks against the real servers, ours and the alternatives side by side (bench/ module)
bench:
	$(SERVICES) run -- sh -c '$(GO) test -run=^$$ -bench=. -benchmem $(PKGS) && if [ -f bench/go.mod ]; then cd bench && $(GO) test -run=^$$ -bench=. -benchmem ./...; fi'

## fuzz: run every fuzz target for FUZZTIME each (default 20s)
FUZZTIME ?= 20s
fuzz:
	@for pkg in $$($(GO) list $(PKGS)); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

services-up:
	$(SERVICES) up

services-down:
	$(SERVICES) down
