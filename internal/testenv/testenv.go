// Package testenv finds the real servers that integration tests talk to.
//
// Every function resolves its server in the same order:
//
//  1. an address in the environment (ACTIVEKIT_REDIS_ADDR, ACTIVEKIT_MONGO_URI, ...),
//     which scripts/services writes for the servers it starts on loopback;
//  2. else a container started through testcontainers-go, when a Docker engine answers
//     (ACTIVEKIT_TESTCONTAINERS=0 turns this off, as 'make unit' does);
//  3. else the test is skipped with a message naming the variable, unless
//     ACTIVEKIT_REQUIRE_INTEGRATION=1, in which case the test fails with that message.
//
// An address that is set but malformed, or a server that does not answer,
// is reported with the variable's name and value. Each test gets its own
// isolation (a key prefix, a database, a topic, a KV prefix), removed by
// t.Cleanup.
//
// Capability probes (RequireMongo, RequireKafka) ask the server what it can
// do; when it cannot (FerretDB has no transactions, kfake no replication), the
// test is skipped with the reason even under ACTIVEKIT_REQUIRE_INTEGRATION=1,
// because no configuration of this machine could make it run.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// Environment variables read by this package.
const (
	EnvRequire         = "ACTIVEKIT_REQUIRE_INTEGRATION"
	EnvRedisAddr       = "ACTIVEKIT_REDIS_ADDR"
	EnvRedisSentinels  = "ACTIVEKIT_REDIS_SENTINELS"
	EnvRedisMaster     = "ACTIVEKIT_REDIS_MASTER"
	EnvRedisCluster    = "ACTIVEKIT_REDIS_CLUSTER"
	EnvMemcachedAddr   = "ACTIVEKIT_MEMCACHED_ADDR"
	EnvMongoURI        = "ACTIVEKIT_MONGO_URI"
	EnvKafkaBrokers    = "ACTIVEKIT_KAFKA_BROKERS"
	EnvConsulAddr      = "ACTIVEKIT_CONSUL_ADDR"
	EnvServicesControl = "ACTIVEKIT_SERVICES"
	EnvTestcontainers  = "ACTIVEKIT_TESTCONTAINERS"
)

// env is the lookup used by the package; tests of this package replace it
// through withEnv. It is read-only everywhere else.
type env func(string) string

// required reports whether a missing server must fail the test.
func (e env) required() bool { return e(EnvRequire) == "1" }

// unavailable skips or fails t, naming the variable that would have given the
// server, according to ACTIVEKIT_REQUIRE_INTEGRATION.
func (e env) unavailable(t testing.TB, variable, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf("%s: %s", variable, fmt.Sprintf(format, args...))
	if e.required() {
		t.Fatalf("%s (%s=1: a missing integration server fails the test; run 'make test' or set %s)", msg, EnvRequire, variable)
	}
	t.Skipf("%s (set %s, or run 'make test', to run this test)", msg, variable)
}

// Unavailable skips or fails t for a server this package does not resolve,
// under the same rule as every resolver here.
func Unavailable(t testing.TB, variable, format string, args ...any) {
	t.Helper()
	env(os.Getenv).unavailable(t, variable, format, args...)
}

// Name returns a name unique to this test and this run, made of lowercase
// letters, digits and '-', at most 48 characters: a key prefix, a topic, a
// database or a service name that no other test uses.
func Name(t testing.TB) string {
	t.Helper()
	base := strings.ToLower(nameCleaner.ReplaceAllString(t.Name(), "-"))
	base = strings.Trim(base, "-")
	if len(base) > 30 {
		base = base[len(base)-30:]
		base = strings.TrimLeft(base, "-")
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("testenv: random name: %v", err)
	}
	return "ak-" + base + "-" + hex.EncodeToString(b[:])
}

var nameCleaner = regexp.MustCompile(`[^A-Za-z0-9]+`)

// ParseAddr checks that value is a host:port address with a numeric port, and
// returns an error naming the variable and the value when it is not.
func ParseAddr(variable, value string) (string, error) {
	value = strings.TrimSpace(value)
	host, port, err := net.SplitHostPort(value)
	if err != nil {
		return "", fmt.Errorf("%s=%q is not a host:port address: %w", variable, value, err)
	}
	if host == "" {
		return "", fmt.Errorf("%s=%q has no host", variable, value)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p > 65535 {
		return "", fmt.Errorf("%s=%q has port %q, want a number from 1 to 65535", variable, value, port)
	}
	return net.JoinHostPort(host, port), nil
}

// ParseAddrList checks a comma-separated list of host:port addresses.
func ParseAddrList(variable, value string) ([]string, error) {
	var out []string
	for _, part := range strings.Split(value, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		a, err := ParseAddr(variable, part)
		if err != nil {
			return nil, fmt.Errorf("%s=%q: %w", variable, value, err)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s=%q holds no address", variable, value)
	}
	return out, nil
}

// lookupAddr resolves one address variable: it returns the parsed address and
// true when set; fails the test naming the variable when the value is
// malformed (a malformed setting is a mistake, never a reason to skip).
func (e env) lookupAddr(t testing.TB, variable string) (string, bool) {
	t.Helper()
	v := e(variable)
	if v == "" {
		return "", false
	}
	a, err := ParseAddr(variable, v)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return a, true
}

func (e env) lookupAddrList(t testing.TB, variable string) ([]string, bool) {
	t.Helper()
	v := e(variable)
	if v == "" {
		return nil, false
	}
	a, err := ParseAddrList(variable, v)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return a, true
}

// FreeAddr returns a loopback address ("127.0.0.1:port") that nothing
// listens on: a port the kernel just handed out, closed again. A client
// dialling it is refused at once (a server that is down); a test that
// starts a server of its own can listen there (the kernel may hand the
// port out again meanwhile, which is unlikely but possible).
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		tb.Fatal(err)
	}
	return addr
}
