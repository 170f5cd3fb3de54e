package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/health"
	"github.com/activekit/activekit/internal/testenv"
)

// runInstance runs an instance through run, as main does, and returns once
// it listens; it is stopped at the end of the test if the test did not.
func runInstance(t *testing.T, env map[string]string) *instance {
	t.Helper()
	sink := newSink()
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{log: sink, cancel: cancel, done: make(chan error, 1)}
	go func() { in.done <- run(ctx, nil, func(k string) string { return env[k] }, sink) }()
	t.Cleanup(func() {
		if err := in.stop(); err != nil {
			t.Errorf("instance %s stopped with %v", env["ACTIVEKIT_INSTANCE_ID"], err)
		}
		if t.Failed() {
			for _, l := range sink.errors() {
				t.Logf("%s logged: %v", env["ACTIVEKIT_INSTANCE_ID"], l)
			}
		}
	})
	select {
	case addr := <-sink.addr:
		in.base = "http://" + addr
	case err := <-in.done:
		in.done <- err
		t.Fatalf("run returned before listening: %v", err)
	case <-time.After(wait):
		t.Fatal("instance did not listen")
	}
	return in
}

// waitReady waits until the instance's /readyz answers 200.
func waitReady(t *testing.T, in *instance) health.Response {
	t.Helper()
	var r health.Response
	eventually(t, 10*time.Second, in.base+" ready", func() bool {
		var code int
		code, r = healthOf(t, in.base+"/readyz")
		return code == http.StatusOK
	})
	return r
}

// Two instances run by run share the group: every order is counted once
// per customer, an event published twice (a publisher's retry after an
// uncertain outcome) and events of other types count nothing, every order
// has one follow-up, and both instances report the same configuration and
// durable topics.
func TestCountsEveryOrderOnce(t *testing.T) {
	f := newFixture(t)
	a, b := runInstance(t, f.env(t, "worker-a")), runInstance(t, f.env(t, "worker-b"))
	ra, rb := waitReady(t, a), waitReady(t, b)
	if ra.ConfigHash == "" || ra.ConfigHash != rb.ConfigHash {
		t.Errorf("config hashes %q and %q, want equal", ra.ConfigHash, rb.ConfigHash)
	}
	for _, r := range []health.Response{ra, rb} {
		if st := r.Checks["kafka:topics"][0].Status; st != health.StatusPass {
			t.Errorf("kafka:topics %s, want pass:%s", st, fmtChecks(r))
		}
	}

	es, want := orders(300, 20)
	other := events.New("/shop", "com.example.order.shipped", []byte(`{"order":"o-1","customer":"c-1"}`))
	other.Subject = "c-1"
	// es[7] twice (the same ID) and an event of another type, before
	// orders of the same customers on the same partitions: once those are
	// counted, these two were handled, in order.
	f.publish(t, es[7], other)
	f.publish(t, es...)
	f.waitCounted(t, want)
	if records := f.checkFollowUps(t, es); records != len(es) {
		// Allowed (their consumers dedupe them), though nothing failed.
		t.Logf("%d follow-up records for %d orders", records, len(es))
	}
	for _, in := range []*instance{a, b} {
		if err := in.stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	}
	if got := f.counters(t, want); !equalCounts(got, want) {
		t.Errorf("after the stop: counters %v, want %v", got, want)
	}
	if rs := f.readAll(t, f.dlq()); len(rs) != 0 {
		t.Errorf("%d dead letters, want none", len(rs))
	}
	if a.log.count("consuming") != 1 || b.log.count("consuming") != 1 {
		t.Errorf("each instance should log that it consumes once")
	}
}

func equalCounts(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// Poison events go to the dead-letter topic at once, with the reason, and
// the orders after them on the same partition are counted: a record that is
// not a CloudEvent, and an order whose data is not an order.
func TestPoisonToDeadLetter(t *testing.T) {
	f := newFixture(t)
	in := runInstance(t, f.env(t, "worker-dlq"))

	es, want := orders(3, 1) // all of customer c-0: one partition
	bad := events.New("/shop", TypeOrderPlaced, []byte(`{"order":`))
	bad.Subject = "c-0"
	f.publish(t, es[0])
	cl, err := kgo.NewClient(kgo.SeedBrokers(f.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	raw := &kgo.Record{Topic: f.topic, Key: []byte("c-0"), Value: []byte("not a CloudEvent")}
	if err := cl.ProduceSync(ctx, raw).FirstErr(); err != nil {
		t.Fatal(err)
	}
	f.publish(t, bad, es[1], es[2])

	f.waitCounted(t, want)
	eventually(t, wait, "two dead letters", func() bool { return len(f.readAll(t, f.dlq())) >= 2 })
	dl := f.readAll(t, f.dlq())
	if len(dl) != 2 {
		t.Fatalf("%d dead letters, want 2", len(dl))
	}
	reasons := map[string]string{}
	for _, r := range dl {
		reasons[string(r.Value)] = header(r, kafka.HeaderPrefix+events.ExtDeadLetterReason)
		if header(r, kafka.HeaderDLQGroup) != f.group || header(r, kafka.HeaderDLQTopic) != f.topic {
			t.Errorf("dead letter without its origin: %v", r.Headers)
		}
	}
	if r := reasons["not a CloudEvent"]; !strings.Contains(r, "malformed") {
		t.Errorf("the record that is no CloudEvent: reason %q", r)
	}
	if r := reasons[`{"order":`]; !strings.Contains(r, "data") {
		t.Errorf("the order with bad data: reason %q", r)
	}
	f.checkFollowUps(t, es)
	if err := in.stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// A Redis outage at run time fails readiness, not liveness; the orders that
// arrive meanwhile wait in place (Unavailable: never dead-lettered) and are
// counted once Redis is back.
func TestRedisDown(t *testing.T) {
	f := newFixture(t)
	p := newCutProxy(t, testenv.RedisAddr(t))
	env := f.env(t, "worker-redis")
	env["ACTIVEKIT_REDIS_ADDR"] = p.addr()
	in := runInstance(t, env)
	waitReady(t, in)

	first, want := orders(10, 3)
	f.publish(t, first...)
	f.waitCounted(t, want)

	p.cut(true)
	eventually(t, 10*time.Second, "not ready with Redis down", func() bool {
		code, r := healthOf(t, in.base+"/readyz")
		return code == http.StatusServiceUnavailable && r.Checks["redis:ping"][0].Status == health.StatusFail
	})
	if code, r := healthOf(t, in.base+"/livez"); code != http.StatusOK {
		t.Errorf("/livez with Redis down: %d %s", code, r.Status)
	}
	more, _ := orders(30, 3) // new IDs, the same customers
	f.publish(t, more...)
	for c := range want {
		want[c] += 10
	}
	eventually(t, wait, "orders waiting for Redis", func() bool {
		return in.log.count("kafka: a dependency is unavailable; retrying in place until it is back") > 0
	})
	p.cut(false)
	waitReady(t, in)
	f.waitCounted(t, want)
	if rs := f.readAll(t, f.dlq()); len(rs) != 0 {
		t.Errorf("%d dead letters after a Redis outage, want none", len(rs))
	}
	if err := in.stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
}

// cutProxy forwards TCP connections to a server until it is cut: then it
// closes every connection and refuses new ones, as a server that is down.
type cutProxy struct {
	ln    net.Listener
	to    string
	mu    sync.Mutex
	down  bool
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func newCutProxy(t *testing.T, to string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, to: to, conns: map[net.Conn]bool{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		_ = ln.Close()
		p.cut(true)
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.to)
		if err != nil {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.conns[c], p.conns[s] = true, true
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
		}
		p.wg.Go(func() { pipe(s, c) })
		p.wg.Go(func() { pipe(c, s) })
	}
}

// cut takes the server down (closing every connection) or back up.
func (p *cutProxy) cut(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			_ = c.Close()
		}
		clear(p.conns)
	}
}

// newWorker fails with the cause and leaves nothing open (no goroutine, no
// client) when the configuration is invalid or Redis cannot be reached.
func TestNewWorkerFailsClean(t *testing.T) {
	base := func() map[string]string {
		return map[string]string{
			"ACTIVEKIT_LISTEN":        "127.0.0.1:0",
			"ACTIVEKIT_REDIS_ADDR":    testenv.RedisAddr(t),
			"ACTIVEKIT_KAFKA_BROKERS": testenv.FreeAddr(t), // never reached
		}
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{name: "redis unreachable", env: map[string]string{"ACTIVEKIT_REDIS_ADDR": testenv.FreeAddr(t)}, want: "redis "},
		{name: "empty topic", args: []string{"-topic", ""}, want: "topic is empty"},
		{name: "redis cluster unreachable", env: map[string]string{"ACTIVEKIT_REDIS_ADDR": testenv.FreeAddr(t) + "," + testenv.FreeAddr(t)}, want: "redis "},
		{name: "partitions", args: []string{"-partitions", "1e10"}, want: "partitions"},
		{name: "short lease", env: map[string]string{"ACTIVEKIT_DEDUPE_LEASE": "10ms"}, want: "dedupe_lease"},
		{name: "bad duration", env: map[string]string{"ACTIVEKIT_DEDUPE_LEASE": "soon"}, want: "dedupe_lease"},
		{name: "unknown flag", args: []string{"-nope"}, want: "not defined"},
		{name: "sasl plain without tls", env: map[string]string{"ACTIVEKIT_KAFKA_SASL": "plain", "ACTIVEKIT_KAFKA_USERNAME": "u"}, want: "kafka_sasl plain needs kafka_tls"},
		{name: "unknown sasl", env: map[string]string{"ACTIVEKIT_KAFKA_SASL": "gssapi", "ACTIVEKIT_KAFKA_USERNAME": "u"}, want: `kafka_sasl "gssapi" is not one of`},
		{name: "sasl without user", env: map[string]string{"ACTIVEKIT_KAFKA_SASL": "scram-sha-512"}, want: "needs kafka_username"},
		{name: "kafka password without sasl", env: map[string]string{"ACTIVEKIT_KAFKA_PASSWORD": "secret"}, want: "without kafka_sasl"},
		{name: "redis timeout", env: map[string]string{"ACTIVEKIT_REDIS_TIMEOUT": "-1s"}, want: "redis_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := base()
			for k, v := range tc.env {
				env[k] = v
			}
			w, err := newWorker(context.Background(), tc.args, func(k string) string { return env[k] }, io.Discard)
			if err == nil {
				_ = w.Close()
				t.Fatal("newWorker succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("newWorker: %v, want an error containing %q", err, tc.want)
			}
			goleak.VerifyNone(t)
		})
	}
	if err := run(context.Background(), []string{"-h"}, func(string) string { return "" }, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("run -h: %v, want flag.ErrHelp", err)
	}
}

// A worker built and closed without serving leaves nothing open; serve
// after Close refuses.
func TestCloseThenServe(t *testing.T) {
	f := newFixture(t)
	env := f.env(t, "worker-close")
	w, err := newWorker(context.Background(), nil, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := w.serve(context.Background()); !errors.Is(err, errDone) {
		t.Fatalf("serve after Close: %v, want errDone", err)
	}
}

// fetchCounter is a kgo hook that counts the records a consumer fetched:
// every delivery, first or repeated.
type fetchCounter struct{ n atomic.Int64 }

func (c *fetchCounter) OnFetchRecordBuffered(*kgo.Record) { c.n.Add(1) }

var _ kgo.HookFetchRecordBuffered = (*fetchCounter)(nil)

// A subscriber that stops on its own (here at once: its client would
// acknowledge dead letters on the leader only) stops the instance, and
// serve returns why, for the orchestrator to restart it.
func TestSubscriberFailureStopsInstance(t *testing.T) {
	f := newFixture(t)
	env := f.env(t, "worker-weak")
	w, err := newWorker(context.Background(), nil, func(k string) string { return env[k] }, io.Discard,
		kgo.RequiredAcks(kgo.LeaderAck()), kgo.DisableIdempotentWrite())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.serve(context.Background()) }()
	select {
	case err := <-done:
		if !errors.Is(err, kafka.ErrWeakDurability) || !strings.Contains(err.Error(), "consuming "+f.topic) {
			t.Fatalf("serve: %v, want the subscriber's ErrWeakDurability", err)
		}
	case <-time.After(wait):
		t.Fatal("the instance kept running without its subscriber")
	}
}

// On a Redis Cluster, the count's own error (a customer's counter key that
// holds a hash: WRONGTYPE) is the event's failure as on standalone: retried,
// then dead-lettered, while the orders of other customers are counted; it
// is not taken for Redis being down, which would block the partition.
func TestClusterCountErrorDeadLettered(t *testing.T) {
	f := newFixtureOn(t, true)
	ctx := context.Background()
	if err := f.rdb.HSet(ctx, counterKey(f.prefix, "c-0"), "not", "a counter").Err(); err != nil {
		t.Fatal(err)
	}
	in := runInstance(t, f.env(t, "worker-cluster-wrongtype"))
	es, want := orders(4, 2) // c-0, c-1, c-0, c-1
	f.publish(t, es...)
	delete(want, "c-0")
	f.waitCounted(t, want)
	eventually(t, wait, "two dead letters", func() bool { return len(f.readAll(t, f.dlq())) >= 2 })
	dl := f.readAll(t, f.dlq())
	if len(dl) != 2 {
		t.Fatalf("%d dead letters, want 2", len(dl))
	}
	for _, r := range dl {
		if reason := header(r, kafka.HeaderPrefix+events.ExtDeadLetterReason); !strings.Contains(reason, "WRONGTYPE") {
			t.Errorf("dead letter reason %q, want the WRONGTYPE reply", reason)
		}
	}
	if err := in.stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
}
