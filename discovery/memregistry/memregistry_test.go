package memregistry_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/memregistry"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func inst(id string) discovery.Instance {
	return discovery.Instance{ID: id, Service: "orders", Address: "127.0.0.1", Port: 8080}
}

func TestWatchDeliversFullListsIncludingEmpty(t *testing.T) {
	r := memregistry.New(memregistry.Config{})
	updates := make(chan discovery.Update, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Watch(ctx, "orders", func(u discovery.Update) { updates <- u }) }()
	count := func(want int) {
		t.Helper()
		if u := <-updates; len(u.Instances) != want {
			t.Fatalf("update with %d instances, want %d", len(u.Instances), want)
		}
	}
	count(0) // the first list, empty
	a, err := r.Register(ctx, inst("a"))
	if err != nil {
		t.Fatal(err)
	}
	count(1)
	if _, err := r.Register(ctx, inst("a")); !errors.Is(err, memregistry.ErrDuplicate) {
		t.Fatalf("duplicate Register: %v", err)
	}
	b, _ := r.Register(ctx, inst("b"))
	count(2)
	r.SetHealthy("a", false)
	count(1)
	if err := b.(discovery.Drainer).Drain(ctx, "bye"); err != nil {
		t.Fatal(err)
	}
	count(0)
	r.SetHealthy("a", true)
	count(1)
	_ = a.Close(ctx)
	count(0)
	_ = b.Close(ctx)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Watch returned %v", err)
	}
	if len(updates) != 0 {
		t.Fatalf("%d extra updates (closing a drained instance changes nothing)", len(updates))
	}
}

func TestLeaderExclusiveWithGrowingTokens(t *testing.T) {
	r := memregistry.New(memregistry.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu      sync.Mutex
		holders int
		tokens  []uint64
		wg      sync.WaitGroup
	)
	for range 4 {
		l := r.Leader("relay")
		wg.Go(func() {
			for range 25 {
				err := l.Lead(ctx, func(ctx context.Context, token uint64) error {
					mu.Lock()
					holders++
					if holders != 1 {
						t.Errorf("%d leaders at once", holders)
					}
					tokens = append(tokens, token)
					holders--
					mu.Unlock()
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	for k := 1; k < len(tokens); k++ {
		if tokens[k] <= tokens[k-1] {
			t.Fatalf("token %d after %d", tokens[k], tokens[k-1])
		}
	}
	if len(tokens) != 100 {
		t.Fatalf("%d terms, want 100", len(tokens))
	}
}

func TestLeaderRevoke(t *testing.T) {
	r := memregistry.New(memregistry.Config{})
	leading := make(chan struct{})
	done := make(chan error)
	go func() {
		done <- r.Leader("k").Lead(context.Background(), func(ctx context.Context, _ uint64) error {
			close(leading)
			<-ctx.Done()
			if !errors.Is(context.Cause(ctx), discovery.ErrLeadershipLost) {
				t.Errorf("cause %v", context.Cause(ctx))
			}
			return ctx.Err()
		})
	}()
	<-leading
	if !r.Revoke("k") {
		t.Fatal("Revoke found no leader")
	}
	if err := <-done; !errors.Is(err, discovery.ErrLeadershipLost) {
		t.Fatalf("Lead returned %v, want ErrLeadershipLost", err)
	}
	if r.Revoke("k") {
		t.Fatal("Revoke found a leader after the term ended")
	}
}

// TestLeaderPanicReleases: a leader function that panics (recovered by the
// caller, as an HTTP server or a test harness does) must not hold the
// election for ever.
func TestLeaderPanicReleases(t *testing.T) {
	r := memregistry.New(memregistry.Config{})
	l := r.Leader("job")
	func() {
		defer func() { _ = recover() }()
		_ = l.Lead(context.Background(), func(context.Context, uint64) error { panic("boom") })
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var token uint64
	if err := l.Lead(ctx, func(_ context.Context, tok uint64) error { token = tok; return nil }); err != nil {
		t.Fatalf("Lead after a panicking term: %v", err)
	}
	if token != 2 {
		t.Fatalf("token %d, want 2", token)
	}
}
