package consulwatch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/retry"
	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// autoClock is a fake clock whose timers fire at once, moving its time
// forward by their duration and recording each wait: the loop runs without
// sleeping, and the test reads back every pause it took.
type autoClock struct {
	mu    sync.Mutex
	now   time.Time
	waits []time.Duration
}

func newAutoClock() *autoClock { return &autoClock{now: time.Unix(1_700_000_000, 0)} }

func (c *autoClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *autoClock) NewTimer(d time.Duration) retry.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.waits = append(c.waits, d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return firedTimer(ch)
}

func (c *autoClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *autoClock) Waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.waits...)
}

type firedTimer chan time.Time

func (t firedTimer) C() <-chan time.Time { return t }
func (t firedTimer) Stop() bool          { return false }

// step is one scripted answer of the fake server.
type step struct {
	val     string
	index   uint64
	err     error
	elapsed time.Duration // how long the query "blocked" on the fake clock
}

// call records what the loop asked for.
type call struct {
	waitIndex uint64
	waitTime  time.Duration
	at        time.Time
}

type delivery struct {
	val  string
	meta Meta
}

// runScript runs Run over steps with the auto clock and returns the calls
// made and the results delivered. When the script is exhausted the fake
// cancels the context, which ends Run.
func runScript(t *testing.T, cfg Config, steps []step) ([]call, []delivery, *autoClock) {
	t.Helper()
	clock := newAutoClock()
	cfg.Clock = clock
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var calls []call
	var got []delivery
	fetch := func(ctx context.Context, q *api.QueryOptions) (string, *api.QueryMeta, error) {
		if q.Context() != ctx {
			t.Errorf("query options do not carry the loop's context")
		}
		calls = append(calls, call{q.WaitIndex, q.WaitTime, clock.Now()})
		if len(calls) > len(steps) {
			cancel()
			return "", nil, ctx.Err()
		}
		s := steps[len(calls)-1]
		clock.advance(s.elapsed)
		if s.err != nil {
			return "", nil, s.err
		}
		return s.val, &api.QueryMeta{LastIndex: s.index, KnownLeader: true}, nil
	}
	err := Run(ctx, cfg, fetch, func(v string, m Meta) { got = append(got, delivery{v, m}) })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
	if len(calls) != len(steps)+1 {
		t.Fatalf("made %d queries, want %d", len(calls), len(steps)+1)
	}
	return calls, got, clock
}

func vals(ds []delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = fmt.Sprintf("%s@%d", d.val, d.meta.LastIndex)
	}
	return out
}

func wantIndexes(t *testing.T, calls []call, want ...uint64) {
	t.Helper()
	for i, w := range want {
		if calls[i].waitIndex != w {
			t.Errorf("query %d: WaitIndex %d, want %d (all: %v)", i, calls[i].waitIndex, w, calls)
		}
	}
}

func wantVals(t *testing.T, got []delivery, want ...string) {
	t.Helper()
	g := vals(got)
	if fmt.Sprint(g) != fmt.Sprint(want) {
		t.Errorf("delivered %v, want %v", g, want)
	}
}

func TestFirstResultDeliveredEvenEmpty(t *testing.T) {
	calls, got, _ := runScript(t, Config{}, []step{{val: "", index: 7}})
	wantVals(t, got, "@7")
	wantIndexes(t, calls, 0, 7)
	if calls[0].waitTime != DefaultWaitTime {
		t.Errorf("WaitTime %v, want %v", calls[0].waitTime, DefaultWaitTime)
	}
}

func TestEmptyResultAfterItemsIsDelivered(t *testing.T) {
	_, got, _ := runScript(t, Config{}, []step{{val: "a,b", index: 5, elapsed: time.Second}, {val: "", index: 9, elapsed: time.Second}})
	wantVals(t, got, "a,b@5", "@9")
}

func TestUnchangedIndexNotRedelivered(t *testing.T) {
	calls, got, _ := runScript(t, Config{}, []step{
		{val: "a", index: 5},
		{val: "a", index: 5, elapsed: 5 * time.Minute}, // wait timed out
		{val: "a", index: 5, elapsed: 5 * time.Minute},
		{val: "b", index: 6, elapsed: time.Second},
	})
	wantVals(t, got, "a@5", "b@6")
	wantIndexes(t, calls, 0, 5, 5, 5, 6)
}

func TestIndexBackwardsResets(t *testing.T) {
	calls, got, _ := runScript(t, Config{}, []step{
		{val: "a", index: 100},
		{val: "b", index: 40, elapsed: time.Second}, // agent restarted: index went back
		{val: "b", index: 40},                       // the non-blocking resync: same index, not redelivered
		{val: "c", index: 41, elapsed: time.Second},
	})
	wantVals(t, got, "a@100", "b@40", "c@41")
	wantIndexes(t, calls, 0, 100, 0, 40, 41)
}

func TestIndexZeroTreatedAsOneWithBackoff(t *testing.T) {
	calls, got, clock := runScript(t, Config{MinInterval: time.Millisecond, Backoff: retry.Policy{InitialInterval: time.Second, MaxInterval: 8 * time.Second, Jitter: retry.NoJitter}}, []step{
		{val: "a", index: 0},
		{val: "a", index: 0},
		{val: "a", index: 0},
		{val: "b", index: 3},
		{val: "b", index: 3, elapsed: time.Minute},
	})
	wantVals(t, got, "a@0", "b@3")
	wantIndexes(t, calls, 0, 1, 1, 1, 3, 3)
	// Three backoffs (1s, 2s, 4s), then the index-3 query succeeds and resets;
	// the last query comes right after the blocking one, no wait needed.
	waits := clock.Waits()
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}
	if len(waits) < 3 || fmt.Sprint(waits[:3]) != fmt.Sprint(want) {
		t.Errorf("waits %v, want %v first", waits, want)
	}
}

func TestErrorsBackOffGrowingCappedAndKeepLastResult(t *testing.T) {
	boom := errors.New("connection refused")
	var errs []error
	var retryIns []time.Duration
	cfg := Config{
		MinInterval: time.Millisecond,
		Backoff:     retry.Policy{InitialInterval: time.Second, MaxInterval: 4 * time.Second, Jitter: retry.NoJitter},
		OnError:     func(err error, d time.Duration) { errs = append(errs, err); retryIns = append(retryIns, d) },
	}
	calls, got, clock := runScript(t, cfg, []step{
		{val: "a", index: 10},
		{err: boom}, {err: boom}, {err: boom}, {err: boom},
		{val: "a", index: 10}, // same index after recovery: not redelivered
		{err: boom},           // backoff was reset by the success
		{val: "b", index: 12},
	})
	wantVals(t, got, "a@10", "b@12")
	wantIndexes(t, calls, 0, 10, 0, 0, 0, 0, 10, 0)
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second, time.Second}
	if fmt.Sprint(retryIns) != fmt.Sprint(want) {
		t.Errorf("backoff delays %v, want %v", retryIns, want)
	}
	for _, e := range errs {
		if !errors.Is(e, boom) {
			t.Errorf("OnError got %v", e)
		}
	}
	// Every wait the loop took is on the clock: the backoffs are among them.
	var total time.Duration
	for _, w := range clock.Waits() {
		total += w
	}
	if total < 12*time.Second {
		t.Errorf("waited %v in all, want at least the 12s of backoff", total)
	}
}

// TestErrorsNeverSpin checks that with jitter (which may draw 0) the loop
// still never starts two queries closer than MinInterval.
func TestErrorsNeverSpin(t *testing.T) {
	steps := make([]step, 200)
	for i := range steps {
		steps[i] = step{err: errors.New("down")}
	}
	calls, _, _ := runScript(t, Config{MinInterval: 25 * time.Millisecond, Backoff: retry.Policy{InitialInterval: time.Millisecond, MaxInterval: 2 * time.Millisecond}}, steps)
	for i := 1; i < len(calls); i++ {
		if gap := calls[i].at.Sub(calls[i-1].at); gap < 25*time.Millisecond {
			t.Fatalf("queries %d and %d only %v apart", i-1, i, gap)
		}
	}
}

// TestMinIntervalBetweenFastChanges checks the rate limit on a server that
// answers every blocking query at once with a new index, and that a query
// which blocked longer than MinInterval is followed at once.
func TestMinIntervalBetweenFastChanges(t *testing.T) {
	calls, got, _ := runScript(t, Config{MinInterval: 50 * time.Millisecond}, []step{
		{val: "a", index: 1}, {val: "b", index: 2}, {val: "c", index: 3},
		{val: "d", index: 4, elapsed: time.Second},
	})
	wantVals(t, got, "a@1", "b@2", "c@3", "d@4")
	for i := 1; i < 4; i++ {
		if gap := calls[i].at.Sub(calls[i-1].at); gap != 50*time.Millisecond {
			t.Errorf("gap before query %d = %v, want 50ms", i, gap)
		}
	}
	if gap := calls[4].at.Sub(calls[3].at); gap != time.Second {
		t.Errorf("after a query that blocked 1s the next started %v later, want at once (1s)", gap)
	}
}

func TestMetaCarriesContactTime(t *testing.T) {
	_, got, _ := runScript(t, Config{}, []step{{val: "a", index: 3, elapsed: 2 * time.Second}})
	want := time.Unix(1_700_000_000, 0).Add(2 * time.Second)
	if !got[0].meta.LastContact.Equal(want) || !got[0].meta.KnownLeader {
		t.Errorf("meta %+v, want LastContact %v and a known leader", got[0].meta, want)
	}
}

// TestMetaStaleness: a stale read says how long its server had been out
// of contact with the leader, and a cache hit how old it is; Meta carries
// their sum, so that a caller can date the result.
func TestMetaStaleness(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got Meta
	err := Run(ctx, Config{Clock: newAutoClock()}, func(ctx context.Context, q *api.QueryOptions) (int, *api.QueryMeta, error) {
		return 1, &api.QueryMeta{LastIndex: 5, LastContact: 40 * time.Second, CacheHit: true, CacheAge: 2 * time.Second}, nil
	}, func(_ int, m Meta) {
		got = m
		cancel()
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	if got.Staleness != 42*time.Second {
		t.Errorf("Staleness %v, want 42s (last contact 40s, cache age 2s)", got.Staleness)
	}
}

func TestQueryTemplateKept(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var seen *api.QueryOptions
	err := Run(ctx, Config{Query: api.QueryOptions{Datacenter: "dc9", AllowStale: true}, WaitTime: time.Minute},
		func(ctx context.Context, q *api.QueryOptions) (int, *api.QueryMeta, error) {
			seen = q
			cancel()
			return 0, nil, ctx.Err()
		}, func(int, Meta) {})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	if seen.Datacenter != "dc9" || !seen.AllowStale || seen.WaitTime != time.Minute {
		t.Errorf("query options %+v lost the template", seen)
	}
}

func TestInvalidConfig(t *testing.T) {
	for _, c := range []Config{
		{WaitTime: -1},
		{WaitTime: 11 * time.Minute},
		{MinInterval: -1},
		{Backoff: retry.Policy{InitialInterval: time.Second, MaxInterval: time.Millisecond}},
	} {
		err := Run(context.Background(), c, func(context.Context, *api.QueryOptions) (int, *api.QueryMeta, error) {
			t.Fatal("fetch called with an invalid config")
			return 0, nil, nil
		}, func(int, Meta) {})
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Run(%+v) = %v, want ErrInvalidConfig", c, err)
		}
	}
}

// TestCancelReturnsPromptly cancels Run, on the real clock, while a query
// blocks and while it backs off for an hour.
// TestHungQueryFails: a query the agent accepts and never answers (a wedged
// agent keeps its connections open) fails once it is well past Consul's
// own bound, is reported through OnError and is made again; the watch
// neither stops nor keeps its last result silently.
func TestHungQueryFails(t *testing.T) {
	defer func(g time.Duration) { queryGrace = g }(queryGrace)
	queryGrace = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var calls atomic.Int32
	errs := make(chan error, 10)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			WaitTime: 10 * time.Millisecond,
			Backoff:  retry.Policy{InitialInterval: time.Millisecond, MaxInterval: time.Millisecond, Jitter: retry.NoJitter},
			OnError: func(err error, _ time.Duration) {
				select {
				case errs <- err:
				default:
				}
			},
		}, func(ctx context.Context, q *api.QueryOptions) (int, *api.QueryMeta, error) {
			calls.Add(1)
			<-ctx.Done() // hangs until the watch gives the query up
			return 0, nil, ctx.Err()
		}, func(int, Meta) {})
	}()
	for range 2 {
		select {
		case err := <-errs:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("OnError(%v), want the query's deadline", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no error reported for a hung query (%d queries made)", calls.Load())
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
}

func TestCancelReturnsPromptly(t *testing.T) {
	t.Run("blocked in fetch", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		started := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- Run(ctx, Config{}, func(ctx context.Context, q *api.QueryOptions) (int, *api.QueryMeta, error) {
				close(started)
				<-ctx.Done()
				return 0, nil, ctx.Err()
			}, func(int, Meta) {})
		}()
		<-started
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run = %v", err)
			}
		case <-time.After(time.Second):
			t.Fatal("Run did not return within 1s of cancel")
		}
	})
	t.Run("backing off", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		failed := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- Run(ctx, Config{
				Backoff: retry.Policy{InitialInterval: time.Hour, MaxInterval: time.Hour, Jitter: retry.NoJitter},
				OnError: func(error, time.Duration) { close(failed) },
			}, func(ctx context.Context, q *api.QueryOptions) (int, *api.QueryMeta, error) {
				return 0, nil, errors.New("down")
			}, func(int, Meta) {})
		}()
		<-failed
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run = %v", err)
			}
		case <-time.After(time.Second):
			t.Fatal("Run did not return within 1s of cancel")
		}
	})
}

// TestConsulKV watches a real Consul KV prefix: the first (empty) result,
// a put, a change, and the deletion of every key (an empty list again).
func TestConsulKV(t *testing.T) {
	client := testenv.Consul(t)
	prefix := testenv.Name(t) + "/"
	testenv.CleanupConsulKV(t, client, prefix)

	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		keys string
		meta Meta
	}
	results := make(chan result, 16)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{WaitTime: 10 * time.Second}, func(ctx context.Context, q *api.QueryOptions) (api.KVPairs, *api.QueryMeta, error) {
			return client.KV().List(prefix, q)
		}, func(kv api.KVPairs, m Meta) {
			s := ""
			for _, p := range kv {
				s += p.Key[len(prefix):] + "=" + string(p.Value) + ";"
			}
			results <- result{s, m}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v", err)
		}
	})
	next := func(want string) Meta {
		t.Helper()
		select {
		case r := <-results:
			if r.keys != want {
				t.Fatalf("delivered %q, want %q", r.keys, want)
			}
			return r.meta
		case <-time.After(5 * time.Second):
			t.Fatalf("nothing delivered within 5s, want %q", want)
		}
		return Meta{}
	}
	first := next("")
	if first.LastIndex == 0 {
		t.Errorf("first result has index 0")
	}
	put := func(k, v string) {
		t.Helper()
		if _, err := client.KV().Put(&api.KVPair{Key: prefix + k, Value: []byte(v)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	put("a", "1")
	m1 := next("a=1;")
	put("a", "2")
	m2 := next("a=2;")
	if m2.LastIndex <= m1.LastIndex {
		t.Errorf("index did not grow: %d then %d", m1.LastIndex, m2.LastIndex)
	}
	if _, err := client.KV().DeleteTree(prefix, nil); err != nil {
		t.Fatal(err)
	}
	next("")
	select {
	case r := <-results:
		t.Fatalf("unexpected delivery %+v", r)
	default:
	}
}
