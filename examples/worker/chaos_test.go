package main

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestExactlyOnceWhileInstancesDie is the proof to copy: three instances
// share the group and consume 2,000 orders while, every 100 to 400ms (up to
// 20 times), one of them is stopped and replaced. Half the stops are SIGTERMs (the batch
// in hand finishes, is committed, the instance leaves the group); the other
// half are crashes: from the instant of death the instance's Redis client
// is closed, so every claim, count and done mark it still tries fails and
// its claims stay held until their lease ends, and its last offset commit
// is lost, so what it handled since the one before is delivered again to
// the partitions' next owners. At the end every customer's counter is
// exactly its number of orders, every order has its follow-up, and the
// records fetched again are logged: the duplicates the fleet absorbed.
func TestExactlyOnceWhileInstancesDie(t *testing.T) { exactlyOnceWhileInstancesDie(t, false) }

// TestExactlyOnceWhileInstancesDieCluster is the same on a Redis Cluster
// (ACTIVEKIT_REDIS_CLUSTER), where the count is idempotent per event
// (countOnce) instead of recorded with the done mark.
func TestExactlyOnceWhileInstancesDieCluster(t *testing.T) { exactlyOnceWhileInstancesDie(t, true) }

func exactlyOnceWhileInstancesDie(t *testing.T, cluster bool) {
	// maxStops bounds the test's time: the fleet finishes the orders left
	// after that many stops without more.
	const n, customers, maxStops = 2000, 50, 20
	f := newFixtureOn(t, cluster)
	es, want := orders(n, customers)
	fetched := &fetchCounter{}

	type member struct {
		w      *worker
		cancel context.CancelFunc
		done   chan error
	}
	seq := 0
	start := func() *member {
		seq++
		env := f.env(t, "worker-"+strconv.Itoa(seq))
		env["ACTIVEKIT_DEDUPE_LEASE"] = "1s" // a crashed instance's claims are taken over after it
		env["ACTIVEKIT_MAX_POLL_RECORDS"] = "100"
		env["ACTIVEKIT_LOG_LEVEL"] = "error"
		ctx, cancel := context.WithCancel(context.Background())
		w, err := newWorker(ctx, nil, func(k string) string { return env[k] }, newSink(),
			kgo.WithHooks(fetched), kgo.FetchMaxWait(200*time.Millisecond))
		if err != nil {
			cancel()
			t.Fatalf("newWorker: %v", err)
		}
		m := &member{w: w, cancel: cancel, done: make(chan error, 1)}
		go func() { m.done <- w.serve(ctx) }()
		return m
	}
	var crashes, sigterms int
	stop := func(m *member, crash bool) {
		if crash {
			_ = m.w.rdb.Close()
			f.kf.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.OffsetCommit}, Group: f.group, Err: kerr.UnknownServerError, Count: 1})
			crashes++
		} else {
			sigterms++
		}
		m.cancel()
		err := <-m.done
		m.done <- err // for the cleanup
		if crash && errors.Is(err, redis.ErrClosed) {
			err = nil // its closer found the client closed by the crash
		}
		if err != nil {
			t.Errorf("instance stopped with %v", err)
		}
	}

	fleet := []*member{start(), start(), start()}
	t.Cleanup(func() { // after a failure; else they are stopped already
		for _, m := range fleet {
			m.cancel()
			<-m.done
		}
	})
	published := make(chan error, 1)
	go func() { published <- f.publishErr(es...) }()
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	deadline := time.Now().Add(40 * time.Second)
	for done := false; !done; {
		time.Sleep(time.Duration(100+rnd.IntN(300)) * time.Millisecond) // the time between two deaths
		got := f.counters(t, want)
		done = equalCounts(got, want)
		for c, k := range want {
			if got[c] > k {
				t.Fatalf("customer %s counted %d orders, want %d: an order was counted twice", c, got[c], k)
			}
		}
		if !done && time.Now().After(deadline) {
			t.Fatalf("counters not reached after 40s: got %v, want %v", got, want)
		}
		if !done && crashes+sigterms < maxStops {
			i := rnd.IntN(len(fleet))
			stop(fleet[i], rnd.IntN(2) == 0)
			fleet[i] = start()
		}
	}
	if err := <-published; err != nil {
		t.Fatalf("publishing orders: %v", err)
	}
	for _, m := range fleet {
		stop(m, false)
	}

	if got := f.counters(t, want); !equalCounts(got, want) {
		t.Fatalf("after the fleet stopped: counters %v, want %v", got, want)
	}
	records := f.checkFollowUps(t, es)
	if rs := f.readAll(t, f.dlq()); len(rs) != 0 {
		t.Errorf("%d dead letters, want none", len(rs))
	}
	if fetched.n.Load() <= n {
		t.Error("no record was delivered twice: the test proved nothing about repeats")
	}
	if crashes == 0 {
		t.Error("no instance crashed: the test proved nothing about crashes")
	}
	t.Logf("%d orders of %d customers: %d records fetched (%d fetched again, absorbed), %d follow-up records (%d published again, same ID); %d crashes, %d SIGTERMs",
		n, customers, fetched.n.Load(), fetched.n.Load()-int64(n), records, records-n, crashes, sigterms)
}
