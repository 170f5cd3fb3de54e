package kafka_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/internal/testenv"
)

// TestHandlerTimeoutIsRetried: a handler whose own call timed out (its
// error wraps context.DeadlineExceeded from a timeout of its own, as an
// HTTP client's does) failed, like any other transient failure, while the
// subscriber goes on: the record is retried in place, not dead-lettered at
// its first attempt as if the subscriber had given up.
func TestHandlerTimeoutIsRetried(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	p := c.publisher(t, topic)
	e := events.New("/t", "t", nil)
	if err := p.Publish(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	s := c.subscriber(t, topic+"-g")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	tries := make(chan int, 10)
	n := 0
	go func() {
		done <- s.Subscribe(ctx, topic, func(ctx context.Context, e events.Event) error {
			n++
			tries <- n
			if n == 1 {
				cctx, ccancel := context.WithTimeout(ctx, time.Millisecond)
				defer ccancel()
				<-cctx.Done()
				return fmt.Errorf("calling the downstream service: %w", cctx.Err())
			}
			return nil
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Subscribe: %v", err)
		}
	}()
	for want := 1; want <= 2; want++ {
		select {
		case got := <-tries:
			if got != want {
				t.Fatalf("try %d, want %d", got, want)
			}
		case <-time.After(wait / 6):
			if dead := c.readAll(t, topic+".dlq"); len(dead) > 0 {
				t.Fatalf("the handler's own timeout was not retried: dead-lettered after %d tries (attempts %s)", want-1, header(dead[0], "ce_deadletterattempts"))
			}
			t.Fatalf("try %d never came", want)
		}
	}
}
