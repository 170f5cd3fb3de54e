package dedupe_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
)

// recordingStore is a Redis store that records the IDs each ClaimBatch is
// asked for and the claims each DoneBatch is given, and, like a careless
// store, writes past the end of the claims it is given when their slice
// has room for it.
type recordingStore struct {
	*dedupe.RedisStore

	mu      sync.Mutex
	claimed [][]string
	done    [][]dedupe.Claim
}

func (s *recordingStore) ClaimBatch(ctx context.Context, group string, ids []string, lease time.Duration) ([]dedupe.Claim, error) {
	s.mu.Lock()
	s.claimed = append(s.claimed, slices.Clone(ids))
	s.mu.Unlock()
	return s.RedisStore.ClaimBatch(ctx, group, ids, lease)
}

func (s *recordingStore) DoneBatch(ctx context.Context, cs []dedupe.Claim) ([]error, error) {
	s.mu.Lock()
	s.done = append(s.done, slices.Clone(cs))
	s.mu.Unlock()
	if len(cs) < cap(cs) {
		cs[:len(cs)+1][len(cs)] = dedupe.Claim{Group: "scribbled", ID: "scribbled", Status: dedupe.Claimed}
	}
	return s.RedisStore.DoneBatch(ctx, cs)
}

func newRecordingStore(t *testing.T) *recordingStore {
	s, _ := redisStore(t, testenv.Redis(t))
	return &recordingStore{RedisStore: s}
}

func ids(cs []dedupe.Claim) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.ID
	}
	return out
}

// TestBatchManyRepeatedIDs: a big batch where most events are copies of
// earlier ones. The batch claims each ID once, at its first event, in
// order; each effect runs once; every ID ends done.
func TestBatchManyRepeatedIDs(t *testing.T) {
	s := newRecordingStore(t)
	ctx := context.Background()
	d, err := dedupe.New(s, dedupe.Config{Group: "g", Lease: 10 * time.Second, MaxWait: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	distinct := make([]events.Event, 250)
	for i := range distinct {
		distinct[i] = events.New("/t", "t", nil)
	}
	var es []events.Event
	var first []string // the IDs in the order of their first event
	seen := map[string]bool{}
	for i := range 600 {
		e := distinct[(i*7)%len(distinct)] // far repeats
		if i%5 == 4 {
			e = es[i-1] // near ones
		}
		if !seen[e.ID] {
			seen[e.ID] = true
			first = append(first, dedupe.Key(e))
		}
		es = append(es, e)
	}
	b, err := d.Begin(ctx, es)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.claimed) != 1 || !slices.Equal(s.claimed[0], first) {
		t.Fatalf("Begin claimed %d IDs in %d calls, want the %d distinct IDs, in order of first event", len(slices.Concat(s.claimed...)), len(s.claimed), len(first))
	}
	runs := map[string]int{}
	h := func(ctx context.Context, e events.Event) error {
		if c, ok := dedupe.FromContext(ctx); !ok || c.ID != dedupe.Key(e) {
			t.Errorf("event %s ran with claim %+v, %v", e.ID, c, ok)
		}
		runs[dedupe.Key(e)]++
		return nil
	}
	for i := range es {
		if err := b.Handle(ctx, i, h); err != nil {
			t.Fatalf("Handle(%d): %v", i, err)
		}
	}
	if err := b.End(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range first {
		if runs[id] != 1 {
			t.Errorf("event %s ran %d times", id, runs[id])
		}
		if c, err := s.Claim(ctx, "g", id, time.Minute); err != nil || c.Status != dedupe.Done {
			t.Errorf("event %s after End: %v, %v; want done", id, c.Status, err)
		}
	}
}

// TestBatchDoneBatchGetsTheSucceeded: DoneBatch is given the claims of the
// events that succeeded under the batch's claims, in order, whether they
// are consecutive or not, and a store that writes past the end of what it
// is given changes none of the batch's other claims: End still releases
// the claim of the event never handled.
func TestBatchDoneBatchGetsTheSucceeded(t *testing.T) {
	for _, tt := range []struct {
		name    string
		preDone []int // events done before the batch begins
		handled int   // the events handled, from the first: the others never are
		want    []int // the events DoneBatch should get
	}{
		{"consecutive", nil, 4, []int{0, 1, 2, 3}},
		{"with gaps", []int{2, 5}, 7, []int{0, 1, 3, 4, 6}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newRecordingStore(t)
			ctx := context.Background()
			d, err := dedupe.New(s, dedupe.Config{Group: "g", Lease: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			es := make([]events.Event, tt.handled+1)
			for i := range es {
				es[i] = events.New("/t", "t", nil)
			}
			for _, i := range tt.preDone {
				c, err := s.Claim(ctx, "g", dedupe.Key(es[i]), time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				if err := s.Done(ctx, c); err != nil {
					t.Fatal(err)
				}
			}
			b, err := d.Begin(ctx, es)
			if err != nil {
				t.Fatal(err)
			}
			var ran []dedupe.Claim
			h := func(ctx context.Context, e events.Event) error {
				c, _ := dedupe.FromContext(ctx)
				ran = append(ran, c)
				return nil
			}
			for i := range tt.handled {
				if err := b.Handle(ctx, i, h); err != nil {
					t.Fatalf("Handle(%d): %v", i, err)
				}
			}
			if err := b.End(ctx); err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, i := range tt.want {
				want = append(want, dedupe.Key(es[i]))
			}
			if len(s.done) != 1 || !slices.Equal(ids(s.done[0]), want) {
				t.Fatalf("DoneBatch calls %v, want one for %v", s.done, want)
			}
			for k, c := range s.done[0] {
				if c != ran[k] {
					t.Errorf("DoneBatch claim %d: %+v, want the one its handler ran under, %+v", k, c, ran[k])
				}
			}
			last := es[len(es)-1].ID
			if c, err := s.Claim(ctx, "g", last, time.Minute); err != nil || c.Status != dedupe.Claimed {
				t.Fatalf("the event never handled, after End: %v, %v; want its claim released", c.Status, err)
			}
		})
	}
}

type ctxKey struct{}

// TestBatchHandlerContext: the handler's ctx carries the event's claim
// (through ctx derived from it as well), the parent's values and a deadline
// a tenth of the lease before the claim's; a ctx a failed handler kept
// still holds its own claim once the event is claimed again by a renewal
// and run under the new claim.
func TestBatchHandlerContext(t *testing.T) {
	s := newRecordingStore(t)
	clk := &clock{now: time.Now()}
	d, err := dedupe.New(s, dedupe.Config{Group: "g", Lease: 10 * time.Second, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	es := []events.Event{events.New("/t", "t", nil), events.New("/t", "t", nil), events.New("/t", "t", nil)}
	parent := context.WithValue(context.Background(), ctxKey{}, "parent's")
	b, err := d.Begin(parent, es)
	if err != nil {
		t.Fatal(err)
	}
	var kept []context.Context
	h := func(ctx context.Context, e events.Event) error {
		kept = append(kept, ctx)
		sub, cancel := context.WithTimeout(context.WithValue(ctx, ctxKey{}, "mine"), time.Hour)
		defer cancel()
		for _, ctx := range []context.Context{ctx, sub} {
			if c, ok := dedupe.FromContext(ctx); !ok || c.ID != dedupe.Key(e) || c.Status != dedupe.Claimed {
				t.Errorf("event %s: claim in ctx %+v, %v", e.ID, c, ok)
			}
		}
		if v := ctx.Value(ctxKey{}); v != "parent's" {
			t.Errorf("a value of the parent ctx: %v", v)
		}
		if dl, ok := sub.Deadline(); !ok || time.Until(dl) > 9*time.Second {
			t.Errorf("handler deadline %v, %v; want at most 9s (0.9 of the lease) from the claim", dl, ok)
		}
		if e.ID == es[1].ID && len(kept) == 2 {
			return errors.New("fails the first time")
		}
		return nil
	}
	for i := range 2 {
		if err := b.Handle(parent, i, h); (err != nil) != (i == 1) {
			t.Fatalf("Handle(%d): %v", i, err)
		}
	}
	clk.Add(6 * time.Second) // past half the lease: the retry renews the claims
	if err := b.Handle(parent, 1, h); err != nil {
		t.Fatalf("Handle(1) again: %v", err)
	}
	if len(kept) != 3 {
		t.Fatalf("%d handler runs, want 3: es[1] twice", len(kept))
	}
	if kept[1] == kept[2] {
		t.Fatal("es[1]'s second run had its first run's ctx")
	}
	c1, _ := dedupe.FromContext(kept[1])
	c2, _ := dedupe.FromContext(kept[2])
	if c1.ID != dedupe.Key(es[1]) || c2.ID != dedupe.Key(es[1]) || c1.Token == c2.Token {
		t.Fatalf("es[1]'s first ctx holds %+v, its second %+v: want its claim, then the renewal's", c1, c2)
	}
	if err := b.Handle(parent, 2, h); err != nil {
		t.Fatal(err)
	}
	if err := b.End(parent); err != nil {
		t.Fatal(err)
	}
	if c, _ := dedupe.FromContext(kept[1]); c != c1 {
		t.Fatalf("es[1]'s first ctx after End holds %+v, want %+v", c, c1)
	}
	for i, e := range es {
		if c, err := s.Claim(parent, "g", dedupe.Key(e), time.Minute); err != nil || c.Status != dedupe.Done {
			t.Errorf("es[%d] after End: %v, %v; want done", i, c.Status, err)
		}
	}
}

// nopStore claims everything and records nothing: with it, BenchmarkBatchPath
// measures what the batch path costs without a store.
type nopStore struct{}

func (nopStore) Claim(ctx context.Context, group, id string, lease time.Duration) (dedupe.Claim, error) {
	return dedupe.Claim{Group: group, ID: id, Status: dedupe.Claimed, Token: "t"}, nil
}
func (nopStore) Done(ctx context.Context, c dedupe.Claim) error    { return nil }
func (nopStore) Release(ctx context.Context, c dedupe.Claim) error { return nil }
func (nopStore) ClaimBatch(ctx context.Context, group string, ids []string, lease time.Duration) ([]dedupe.Claim, error) {
	cs := make([]dedupe.Claim, len(ids))
	for i, id := range ids {
		cs[i] = dedupe.Claim{Group: group, ID: id, Status: dedupe.Claimed, Token: "t"}
	}
	return cs, nil
}
func (nopStore) DoneBatch(ctx context.Context, cs []dedupe.Claim) ([]error, error) {
	return make([]error, len(cs)), nil
}
func (nopStore) ReleaseBatch(ctx context.Context, cs []dedupe.Claim) error { return nil }

// BenchmarkBatchPath runs batches of 500 events through Begin, Handle and
// End on a store that does nothing, as the Kafka subscriber does with one
// partition's records of a poll; each op is one event.
func BenchmarkBatchPath(b *testing.B) {
	d, err := dedupe.New(nopStore{}, dedupe.Config{Group: "g"})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	es := make([]events.Event, 500)
	for i := range es {
		es[i] = events.New("/bench", "t", nil)
	}
	h := func(context.Context, events.Event) error { return nil }
	b.ReportAllocs()
	for n := 0; b.Loop(); {
		if n%len(es) == 0 {
			bt, err := d.Begin(ctx, es)
			if err != nil {
				b.Fatal(err)
			}
			for i := range es {
				if err := bt.Handle(ctx, i, h); err != nil {
					b.Fatal(err)
				}
			}
			if err := bt.End(ctx); err != nil {
				b.Fatal(err)
			}
		}
		n++
	}
}
