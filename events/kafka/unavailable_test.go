package kafka_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

// outageStore is a dedupe.BatchStore whose every call fails while down is
// set, as when its server is unreachable; fails counts the calls that
// failed, that way or in the store it wraps.
type outageStore struct {
	s     dedupe.BatchStore
	down  atomic.Bool
	fails atomic.Int64
}

var errOutage = errors.New("dedupe store unreachable")

func (o *outageStore) err() error {
	if o.down.Load() {
		return o.note(errOutage)
	}
	return nil
}

// note counts err when it is a failure (not ErrLeaseLost, an answer).
func (o *outageStore) note(err error) error {
	if err != nil && !errors.Is(err, dedupe.ErrLeaseLost) {
		o.fails.Add(1)
	}
	return err
}

func (o *outageStore) Claim(ctx context.Context, g, id string, l time.Duration) (dedupe.Claim, error) {
	if err := o.err(); err != nil {
		return dedupe.Claim{}, err
	}
	c, err := o.s.Claim(ctx, g, id, l)
	return c, o.note(err)
}

func (o *outageStore) Done(ctx context.Context, c dedupe.Claim) error {
	if err := o.err(); err != nil {
		return err
	}
	return o.note(o.s.Done(ctx, c))
}

func (o *outageStore) Release(ctx context.Context, c dedupe.Claim) error {
	if err := o.err(); err != nil {
		return err
	}
	return o.note(o.s.Release(ctx, c))
}

func (o *outageStore) ClaimBatch(ctx context.Context, g string, ids []string, l time.Duration) ([]dedupe.Claim, error) {
	if err := o.err(); err != nil {
		return nil, err
	}
	cs, err := o.s.ClaimBatch(ctx, g, ids, l)
	return cs, o.note(err)
}

func (o *outageStore) DoneBatch(ctx context.Context, cs []dedupe.Claim) ([]error, error) {
	if err := o.err(); err != nil {
		return nil, err
	}
	res, err := o.s.DoneBatch(ctx, cs)
	return res, o.note(err)
}

func (o *outageStore) ReleaseBatch(ctx context.Context, cs []dedupe.Claim) error {
	if err := o.err(); err != nil {
		return err
	}
	return o.note(o.s.ReleaseBatch(ctx, cs))
}

var _ dedupe.BatchStore = (*outageStore)(nil)

// logCapture is a slog.Handler that keeps the messages logged.
type logCapture struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCapture) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logCapture) WithGroup(string) slog.Handler            { return l }
func (l *logCapture) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, r.Message)
	return nil
}

// count returns how many messages contained s.
func (l *logCapture) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, s) {
			n++
		}
	}
	return n
}

const (
	logOutage = "a dependency is unavailable"
	logBack   = "unavailable dependency is back"
)

// committed returns the sum of group's committed offsets on topic.
func (c *cluster) committed(t *testing.T, group, topic string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	offs, err := c.adm.FetchOffsets(ctx, group)
	if errors.Is(err, kerr.GroupIDNotFound) {
		return 0 // the subscriber has not joined yet: nothing committed
	}
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, o := range offs.Offsets()[topic] {
		if o.At > 0 {
			n += o.At
		}
	}
	return n
}

// deadLetters returns how many records topic's dead-letter topic holds.
func (c *cluster) deadLetters(t *testing.T, topic string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ends, err := c.adm.ListEndOffsets(ctx, topic+kafka.DefaultDeadLetterSuffix)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n
}

// noMoreDeadLetters wraps cond so that it fails t as soon as topic's
// dead-letter topic holds more than max records.
func (c *cluster) noMoreDeadLetters(t *testing.T, topic string, max int64, cond func() bool) func() bool {
	return func() bool {
		if n := c.deadLetters(t, topic); n > max {
			var reasons []string
			for _, r := range c.readAll(t, topic+kafka.DefaultDeadLetterSuffix) {
				reasons = append(reasons, header(r, "ce_deadletterattempts")+" attempts: "+header(r, "ce_deadletterreason"))
			}
			t.Fatalf("%d records dead-lettered, want at most %d: %q", n, max, reasons)
		}
		return cond()
	}
}

// eventually polls cond every 10ms until it holds, failing t after wait.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(wait); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition with no signal
	}
}

// outageHandler counts each event's runs and successes, and keeps each
// key's successes in order. The poison event always fails on its own; the
// trigger event, the first time it runs, takes the store down and fails.
type outageHandler struct {
	mu      sync.Mutex
	runs    map[string]int
	ok      map[string]int
	order   map[string][]string
	poison  string
	trigger string
	store   *outageStore
}

func (h *outageHandler) handle(_ context.Context, e events.Event) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.runs[e.ID]++
	switch {
	case e.ID == h.poison:
		return errors.New("poison: refused by the handler")
	case e.ID == h.trigger && h.runs[e.ID] == 1:
		h.store.down.Store(true)
		return errors.New("trigger: fails once, as the store goes down")
	}
	h.ok[e.ID]++
	h.order[e.Subject] = append(h.order[e.Subject], e.ID)
	return nil
}

func (h *outageHandler) succeeded() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ok)
}

// TestStoreOutageNeverDeadLetters: the dedupe store is down, first while the
// consumer is idle and events are published (the claims fail), then from
// inside a handler that fails mid-batch (its release fails, and what
// follows: the done marks, the claims of the per-event path). With a
// Retrier of 3 attempts, and the store refusing more calls in each outage
// than that, every event is still handled exactly once once the store is
// back, in order per key. Only the poison event, which fails on its own, is
// dead-lettered, after exactly its own 3 attempts: it is the first event of
// the first outage, so on the per-event path its tries during the outage
// would show in ce_deadletterattempts if they were counted. Each outage logs
// one warning and one recovery. For the per-event Middleware and the batch
// path.
func TestStoreOutageNeverDeadLetters(t *testing.T) {
	for _, mode := range dedupeModes {
		t.Run(mode, func(t *testing.T) { testStoreOutageNeverDeadLetters(t, mode) })
	}
}

func testStoreOutageNeverDeadLetters(t *testing.T, mode string) {
	c, _, topic, group, rs := dedupeFixture(t)
	store := &outageStore{s: rs}
	d, err := dedupe.New(store, dedupe.Config{Group: group, Lease: time.Second, MaxWait: 100 * time.Millisecond,
		Retry: fastRetrier(t, 3).Policy()})
	if err != nil {
		t.Fatal(err)
	}
	p := c.publisher(t, topic)
	warm := batch(1, "warm-up")
	outageA := batch(12, "key-a") // published while the store is down
	outageB := batch(12, "key-b") // the store goes down at outageB[5]
	h := &outageHandler{runs: map[string]int{}, ok: map[string]int{}, order: map[string][]string{},
		poison: outageA[0].ID, trigger: outageB[5].ID, store: store}
	handler, bm := withDedupe(mode, d, h.handle)
	logs := &logCapture{}
	s, err := kafka.NewSubscriber(kafka.SubscriberConfig{Brokers: c.brokers, Group: group, Retrier: fastRetrier(t, 3),
		Batch: bm, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Subscribe(ctx, topic, handler) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Subscribe: %v", err)
		}
	}()

	// outage waits until the store, down, has refused more calls than
	// the Retrier's 3 attempts, and brings it back.
	var refused int64
	outage := func(name string) {
		t.Helper()
		eventually(t, name+": the store refusing calls", func() bool { return store.fails.Load() >= 5 })
		store.down.Store(false)
		refused += store.fails.Swap(0)
	}

	if err := p.Publish(context.Background(), warm...); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the warm-up event committed", func() bool { return c.committed(t, group, topic) == 1 })

	// Outage A: events arrive while the store is down.
	store.down.Store(true)
	if err := p.Publish(context.Background(), outageA...); err != nil {
		t.Fatal(err)
	}
	outage("outage A")
	eventually(t, "outage A's events handled", c.noMoreDeadLetters(t, topic, 1, func() bool { return h.succeeded() == 1+len(outageA)-1 }))
	eventually(t, "outage A's events committed", func() bool { return c.committed(t, group, topic) == int64(1+len(outageA)) })

	// Outage B: the store goes down while a batch is being handled.
	if err := p.Publish(context.Background(), outageB...); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the trigger event taking the store down", func() bool { return store.down.Load() })
	outage("outage B")
	all := 1 + len(outageA) - 1 + len(outageB)
	eventually(t, "outage B's events handled", c.noMoreDeadLetters(t, topic, 1, func() bool { return h.succeeded() == all }))
	eventually(t, "outage B's events committed", func() bool {
		return c.committed(t, group, topic) == int64(1+len(outageA)+len(outageB))
	})

	h.mu.Lock()
	defer h.mu.Unlock()
	for _, es := range [][]events.Event{warm, outageA, outageB} {
		var want []string
		for _, e := range es {
			if e.ID == h.poison {
				continue
			}
			if h.ok[e.ID] != 1 {
				t.Errorf("event %s (%s) succeeded %d times, want 1", e.ID, e.Subject, h.ok[e.ID])
			}
			want = append(want, e.ID)
		}
		if got := h.order[es[0].Subject]; strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("key %s handled in the order %v, want %v", es[0].Subject, got, want)
		}
	}
	if n := h.runs[h.poison]; n != 3 {
		t.Errorf("the poison event ran %d times, want its 3 attempts", n)
	}
	dead := c.readAll(t, topic+kafka.DefaultDeadLetterSuffix)
	if len(dead) != 1 {
		var reasons []string
		for _, r := range dead {
			reasons = append(reasons, header(r, "ce_deadletterreason"))
		}
		t.Fatalf("%d dead letters, want only the poison event's: %q", len(dead), reasons)
	}
	if id, a, r := header(dead[0], kafka.HeaderID), header(dead[0], "ce_deadletterattempts"), header(dead[0], "ce_deadletterreason"); id != h.poison || a != "3" || !strings.Contains(r, "poison") {
		t.Fatalf("dead letter %s after %s attempts (%q), want the poison event after 3, for its own error", id, a, r)
	}
	for _, es := range [][]events.Event{outageA, outageB} {
		for _, e := range es {
			want := dedupe.Done
			if e.ID == h.poison {
				want = dedupe.Claimed // dead-lettered, not done: its claim was released
			}
			if cl, err := rs.Claim(context.Background(), group, dedupe.Key(e), time.Minute); err != nil || cl.Status != want {
				t.Errorf("event %s in the store: %v, %v; want %v", e.ID, cl.Status, err, want)
			}
		}
	}
	if w, b := logs.count(logOutage), logs.count(logBack); w != 2 || b != 2 {
		t.Errorf("logged %d outage warnings and %d recoveries for 2 outages and %d refused calls, want 2 and 2",
			w, b, refused)
	}
	t.Logf("%s: the store refused %d calls during the two outages", mode, refused)
}

// redisServer is a redis-server process of the test's own, on a free
// loopback port, that the test can kill and start again on that port.
type redisServer struct {
	t    *testing.T
	bin  string
	addr string
	cmd  *exec.Cmd
}

// startRedisServer starts a private redis-server, skipping the test when
// there is no redis-server binary (failing under
// ACTIVEKIT_REQUIRE_INTEGRATION=1). It is killed at the end of the test.
func startRedisServer(t *testing.T) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		testenv.Unavailable(t, "PATH", "no redis-server binary to run a private Redis: %v", err)
	}
	s := &redisServer{t: t, bin: bin, addr: testenv.FreeAddr(t)}
	s.start()
	t.Cleanup(s.kill)
	return s
}

func (s *redisServer) start() {
	s.t.Helper()
	_, port, _ := net.SplitHostPort(s.addr)
	s.cmd = exec.Command(s.bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", s.t.TempDir(), "--loglevel", "warning")
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("starting redis-server: %v", err)
	}
	c := redis.NewClient(&redis.Options{Addr: s.addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on %s does not answer", s.addr)
		}
		time.Sleep(10 * time.Millisecond) // polling a starting server
	}
}

// kill kills the server, as a crash would, and waits for it to exit.
func (s *redisServer) kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// TestRedisOutageNeverDeadLetters: the dedupe store is a real RedisStore on
// a private redis-server, which is killed twice: while the consumer is idle
// and events are published (their claims fail with connection errors), and
// from inside a handler, which then fails once (its release, and what
// follows, fail). Once the server is started again (empty: it keeps
// nothing), each event is handled exactly once, in order, and none is
// dead-lettered, with a Retrier of 3 attempts. For the per-event Middleware
// and the batch path.
func TestRedisOutageNeverDeadLetters(t *testing.T) {
	for _, mode := range dedupeModes {
		t.Run(mode, func(t *testing.T) { testRedisOutageNeverDeadLetters(t, mode) })
	}
}

func testRedisOutageNeverDeadLetters(t *testing.T, mode string) {
	srv := startRedisServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.addr, MaxRetries: -1, DialerRetries: 1, DialTimeout: time.Second})
	t.Cleanup(func() { _ = rdb.Close() })
	rs, err := dedupe.NewRedisStore(rdb, dedupe.RedisConfig{})
	if err != nil {
		t.Fatal(err)
	}
	store := &outageStore{s: rs} // counts the connection errors
	c := newCluster(t)
	topic := testenv.Name(t)
	group := topic + "-g"
	c.topics(t, topic)
	d, err := dedupe.New(store, dedupe.Config{Group: group, Lease: time.Second, Retry: fastRetrier(t, 3).Policy()})
	if err != nil {
		t.Fatal(err)
	}
	warm := batch(1, "k")
	idle := batch(10, "k")   // published while the server is down
	inside := batch(10, "k") // the server is killed by inside[3]'s handler
	trigger := inside[3].ID
	kill := make(chan chan struct{})
	var mu sync.Mutex
	ok := map[string]int{}
	var order []string
	triggered := false
	h := func(ctx context.Context, e events.Event) error {
		mu.Lock()
		defer mu.Unlock()
		if e.ID == trigger && !triggered {
			triggered = true
			killed := make(chan struct{})
			select {
			case kill <- killed:
			case <-ctx.Done():
				return ctx.Err()
			}
			<-killed
			return errors.New("trigger: fails once, as the store goes down")
		}
		ok[e.ID]++
		order = append(order, e.ID)
		return nil
	}
	handler, bm := withDedupe(mode, d, h)
	s, err := kafka.NewSubscriber(kafka.SubscriberConfig{Brokers: c.brokers, Group: group, Retrier: fastRetrier(t, 3), Batch: bm})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Subscribe(ctx, topic, handler) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Subscribe: %v", err)
		}
	}()
	p := c.publisher(t, topic)
	if err := p.Publish(context.Background(), warm...); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the warm-up event committed", func() bool { return c.committed(t, group, topic) == 1 })

	// While idle.
	srv.kill()
	before := store.fails.Load()
	if err := p.Publish(context.Background(), idle...); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the store failing while killed", func() bool { return store.fails.Load()-before >= 5 })
	srv.start()
	eventually(t, "the idle outage's events committed", c.noMoreDeadLetters(t, topic, 0, func() bool {
		return c.committed(t, group, topic) == int64(1+len(idle))
	}))

	// From inside a handler.
	if err := p.Publish(context.Background(), inside...); err != nil {
		t.Fatal(err)
	}
	select {
	case killed := <-kill:
		srv.kill()
		before = store.fails.Load()
		close(killed)
	case <-time.After(wait):
		t.Fatal("the trigger event was never handled")
	}
	eventually(t, "the store failing while killed", func() bool { return store.fails.Load()-before >= 5 })
	srv.start()
	eventually(t, "every event committed", c.noMoreDeadLetters(t, topic, 0, func() bool {
		return c.committed(t, group, topic) == int64(1+len(idle)+len(inside))
	}))

	mu.Lock()
	defer mu.Unlock()
	var want []string
	for _, es := range [][]events.Event{warm, idle, inside} {
		for _, e := range es {
			want = append(want, e.ID)
		}
	}
	if strings.Join(order, ",") != strings.Join(want, ",") {
		t.Fatalf("handled %v\nwant    %v", order, want)
	}
	for _, id := range want {
		if ok[id] != 1 {
			t.Errorf("event %s handled %d times, want 1", id, ok[id])
		}
	}
	if dead := c.readAll(t, topic+kafka.DefaultDeadLetterSuffix); len(dead) != 0 {
		t.Fatalf("%d events dead-lettered during the outages (%q), want none", len(dead), header(dead[0], "ce_deadletterreason"))
	}
	t.Logf("%s: %d store calls failed during the outages", mode, store.fails.Load())
}
