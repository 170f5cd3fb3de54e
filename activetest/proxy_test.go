package activetest_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/activekit/activekit/activetest"
)

// echoServer serves, on loopback, connections that send back what they
// read, half-closing once their client has; it stops in t.Cleanup.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					_ = c.Close()
				}()
				if _, err := io.Copy(c, c); err == nil {
					_ = c.(*net.TCPConn).CloseWrite()
					_, _ = io.Copy(io.Discard, c)
				}
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// echo sends payload to addr in pieces of random sizes while it reads the
// echo, then half-closes and reads to the end; it returns what came back.
// It returns early, with an error, when the connection fails, and ends its
// reader in every case.
func echo(addr string, payload []byte, rng *rand.Rand) ([]byte, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := conn.(*net.TCPConn)
	type result struct {
		b   []byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(c)
		got <- result{b, err}
	}()
	var werr error
	for rest := payload; len(rest) > 0 && werr == nil; {
		n := min(len(rest), 1+rng.IntN(64<<10))
		_, werr = c.Write(rest[:n])
		rest = rest[n:]
	}
	if werr == nil {
		werr = c.CloseWrite()
	}
	if werr != nil {
		_ = c.Close() // ends the reader
	}
	r := <-got
	_ = c.Close()
	if werr != nil {
		return r.b, fmt.Errorf("write: %w", werr)
	}
	return r.b, r.err
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(d)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%s: not within %v", what, d)
		}
	}
}

// Large random payloads, echoed both ways by many connections at once,
// come back whole and in order: on a healthy path, with latency, and while
// faults that hold bytes (a blackhole, latency) flip on and off under
// them.
func TestProxyNeverLosesOrReordersBytes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(p *activetest.Proxy)
		flip  func(p *activetest.Proxy, rng *rand.Rand) // called repeatedly during the transfers
	}{
		{name: "healthy"},
		{name: "latency", setup: func(p *activetest.Proxy) {
			p.SetLatency(activetest.Upstream, 3*time.Millisecond)
			p.SetLatency(activetest.Downstream, 5*time.Millisecond)
		}},
		{name: "flipping", flip: func(p *activetest.Proxy, rng *rand.Rand) {
			switch rng.IntN(5) {
			case 0:
				p.Blackhole()
			case 4:
				p.Blackhole(activetest.Direction(rng.IntN(2)))
			case 1:
				p.Heal()
			case 2:
				p.SetLatency(activetest.Direction(rng.IntN(2)), time.Duration(rng.IntN(5))*time.Millisecond)
			case 3:
				p.SetLatency(activetest.Direction(rng.IntN(2)), 0)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const (
				conns = 8
				size  = 1 << 20
			)
			p := activetest.NewProxy(t, echoServer(t))
			if tc.setup != nil {
				tc.setup(p)
			}
			payloads := make([][]byte, conns)
			for i := range payloads {
				var seed [32]byte
				seed[0] = byte(i)
				payloads[i] = make([]byte, size)
				_, _ = rand.NewChaCha8(seed).Read(payloads[i])
			}
			done := make(chan struct{})
			var flips atomic.Int64
			var flipper sync.WaitGroup
			if tc.flip != nil {
				// Three goroutines flip at once until every transfer
				// has ended; a blackhole held when the flips stop is
				// healed by one of them, as they heal one time in
				// five.
				for g := range uint64(3) {
					flipper.Go(func() {
						rng := rand.New(rand.NewPCG(1, g))
						for {
							select {
							case <-done:
								return
							case <-time.After(time.Duration(rng.IntN(2000)) * time.Microsecond):
								tc.flip(p, rng)
								flips.Add(1)
							}
						}
					})
				}
			}
			var wg sync.WaitGroup
			errs := make([]error, conns)
			for i := range conns {
				wg.Go(func() {
					got, err := echo(p.Addr(), payloads[i], rand.New(rand.NewPCG(uint64(i), 8)))
					switch {
					case err != nil:
						errs[i] = err
					case !bytes.Equal(got, payloads[i]):
						errs[i] = fmt.Errorf("%d bytes back of %d sent, first difference at %d", len(got), size, firstDiff(got, payloads[i]))
					}
				})
			}
			wg.Wait()
			close(done)
			flipper.Wait()
			if tc.flip != nil {
				t.Logf("%d flips during the transfers", flips.Load())
				if n := flips.Load(); n < 3 {
					t.Errorf("only %d flips during the transfers", n)
				}
			}
			for i, err := range errs {
				if err != nil {
					t.Errorf("connection %d: %v", i, err)
				}
			}
			st := p.Stats()
			if st.Up != conns*size || st.Down != conns*size {
				t.Errorf("forwarded %d bytes up, %d down; want %d each way", st.Up, st.Down, conns*size)
			}
			if st.Accepted != conns || st.Refused != 0 || st.Cut != 0 {
				t.Errorf("stats %+v: want %d accepted, none refused or cut", st, conns)
			}
			waitFor(t, 10*time.Second, "every connection closed", func() bool { return p.Stats().Open == 0 })
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// A blackhole holds a connection open and forwards nothing, so a client
// waits until its deadline; what it sent is delivered, in order, on Heal.
func TestProxyBlackholeHoldsThenDelivers(t *testing.T) {
	p := activetest.NewProxy(t, echoServer(t))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("before ")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("before "))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "before " {
		t.Fatalf("healthy echo: %q, %v", buf, err)
	}

	p.Blackhole()
	// A new connection is held too, before the target is dialed.
	held, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatalf("dial through a blackhole: %v (the kernel accepts it)", err)
	}
	defer held.Close()
	if _, err := held.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("during")); err != nil {
		t.Fatal(err)
	}
	const deadline = 200 * time.Millisecond
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(deadline))
	n, err := c.Read(buf)
	if !isTimeout(err) || n != 0 {
		t.Fatalf("read through a blackhole: %d bytes, %v; want a timeout", n, err)
	}
	if waited := time.Since(start); waited < deadline {
		t.Errorf("read gave up after %v, before its %v deadline", waited, deadline)
	}
	if st := p.Stats(); st.Up != int64(len("before ")) || st.Open != 2 {
		t.Errorf("during the blackhole: %+v; want only the first write forwarded, 2 connections open", st)
	}

	p.Heal()
	_ = c.SetReadDeadline(time.Time{})
	buf = make([]byte, len("during"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "during" {
		t.Errorf("after Heal: %q, %v; want the held bytes", buf, err)
	}
	buf = make([]byte, len("held"))
	if _, err := io.ReadFull(held, buf); err != nil || string(buf) != "held" {
		t.Errorf("connection opened during the blackhole, after Heal: %q, %v", buf, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// A blackhole of one direction holds it alone: bytes the other way flow.
func TestProxyBlackholeOneWay(t *testing.T) {
	p := activetest.NewProxy(t, echoServer(t))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, dir := range []activetest.Direction{activetest.Downstream, activetest.Upstream} {
		before := p.Stats()
		p.Blackhole(dir)
		if _, err := c.Write([]byte(dir.String())); err != nil {
			t.Fatal(err)
		}
		if dir == activetest.Downstream {
			// The bytes reach the target and come back to the proxy,
			// which holds them.
			waitFor(t, 10*time.Second, "the bytes upstream", func() bool { return p.Stats().Up == before.Up+int64(len(dir.String())) })
		}
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		buf := make([]byte, len(dir.String()))
		if n, err := c.Read(buf); !isTimeout(err) {
			t.Errorf("%v held: read %q, %v; want a timeout", dir, buf[:n], err)
		}
		st := p.Stats()
		if st.Down != before.Down || (dir == activetest.Upstream && st.Up != before.Up) {
			t.Errorf("%v held: %+v, before %+v", dir, st, before)
		}
		p.Heal()
		_ = c.SetReadDeadline(time.Time{})
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != dir.String() {
			t.Errorf("%v held, then healed: %q, %v", dir, buf, err)
		}
	}
}

// Cut resets the connections open, in the middle of their transfers and
// while latency holds their bytes, and each new one; Heal lets new ones
// through. No goroutine of the proxy outlives its test, whatever was in
// flight.
func TestProxyCutMidTransfer(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Run("cut", func(t *testing.T) {
		const conns = 4
		p := activetest.NewProxy(t, echoServer(t))
		p.SetLatency(activetest.Downstream, 20*time.Millisecond)
		var wg sync.WaitGroup
		errs := make([]error, conns)
		for i := range conns {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(i), 9))
				payload := make([]byte, 64<<20) // far more than can pass before the cut
				_, errs[i] = echo(p.Addr(), payload, rng)
			})
		}
		waitFor(t, 10*time.Second, "bytes flowing both ways on every connection", func() bool {
			st := p.Stats()
			return st.Accepted == conns && st.Down > 0
		})
		p.Cut()
		wg.Wait()
		for i, err := range errs {
			if err == nil {
				t.Errorf("connection %d: transfer ended without error across a cut", i)
			} else if isTimeout(err) {
				t.Errorf("connection %d: %v; want a reset, not a timeout", i, err)
			}
		}
		if st := p.Stats(); st.Cut != conns || st.Open != 0 {
			t.Errorf("after Cut: %+v; want %d cut, none open", st, conns)
		}

		// New connections are reset as they arrive.
		if _, err := echo(p.Addr(), []byte("x"), rand.New(rand.NewPCG(0, 0))); err == nil {
			t.Error("echo through a cut path succeeded")
		}
		if st := p.Stats(); st.Refused != 1 || st.Open != 0 {
			t.Errorf("connection through a cut path: %+v; want 1 refused", st)
		}

		p.Heal()
		if got, err := echo(p.Addr(), []byte("again"), rand.New(rand.NewPCG(0, 0))); err != nil || string(got) != "again" {
			t.Errorf("after Heal: %q, %v", got, err)
		}
	})
	t.Run("cleanup while held", func(t *testing.T) {
		p := activetest.NewProxy(t, echoServer(t))
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		if _, err := c.Write(make([]byte, 1<<20)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "bytes in flight", func() bool { return p.Stats().Up > 0 })
		p.Blackhole()
		// The test ends with the connection held and bytes in flight
		// both ways: the cleanup must still end every goroutine.
	})
	goleak.VerifyNone(t, ignore)
}

// The counts are up to date by the time the client sees what they count:
// a connection reset as it arrives, through a cut path or to a target
// that refuses it, is counted refused, and no longer open, when the
// client's read fails.
func TestProxyCountsBeforeTheClientSees(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	_ = ln.Close()
	cut := activetest.NewProxy(t, echoServer(t))
	cut.Cut()
	for _, p := range []*activetest.Proxy{cut, activetest.NewProxy(t, down)} {
		for i := range int64(200) {
			// The reset may reach the dial itself.
			if c, err := net.Dial("tcp", p.Addr()); err == nil {
				_, err = c.Read(make([]byte, 1))
				_ = c.Close()
				if err == nil {
					t.Fatalf("%s: read through a connection reset on arrival succeeded", p.Target())
				}
			}
			if st := p.Stats(); st.Refused != i+1 || st.Open != 0 {
				t.Fatalf("%s: after %d connections reset: %+v", p.Target(), i+1, st)
			}
		}
	}
}

// The target refusing connections resets the client's.
func TestProxyTargetDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	_ = ln.Close()
	p := activetest.NewProxy(t, down)
	if _, err := echo(p.Addr(), []byte("x"), rand.New(rand.NewPCG(0, 0))); err == nil {
		t.Error("echo through a proxy to a closed port succeeded")
	}
	waitFor(t, 10*time.Second, "the connection refused", func() bool { return p.Stats().Refused == 1 })
}

// Latency is added per direction, from when the proxy reads the bytes.
// Only lower bounds are asserted: the machine may be slower than asked,
// never faster.
func TestProxyLatency(t *testing.T) {
	p := activetest.NewProxy(t, echoServer(t))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip := func() time.Duration {
		t.Helper()
		start := time.Now()
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	roundTrip()
	for _, tc := range []struct {
		up, down time.Duration
	}{
		{up: 80 * time.Millisecond},
		{down: 120 * time.Millisecond},
		{up: 80 * time.Millisecond, down: 120 * time.Millisecond},
	} {
		p.SetLatency(activetest.Upstream, tc.up)
		p.SetLatency(activetest.Downstream, tc.down)
		if got := roundTrip(); got < tc.up+tc.down {
			t.Errorf("up %v, down %v: round trip took %v", tc.up, tc.down, got)
		}
	}
}

// Bad arguments fail the test and change nothing.
func TestProxyRejects(t *testing.T) {
	target := echoServer(t)
	for _, tc := range []struct {
		dir activetest.Direction
		d   time.Duration
	}{{activetest.Upstream, -time.Second}, {activetest.Direction(7), time.Second}} {
		r := &recordingTB{TB: t}
		p := activetest.NewProxy(r, target)
		p.SetLatency(tc.dir, tc.d)
		if len(r.errs) != 1 {
			t.Errorf("SetLatency(%v, %v): errors %q, want one", tc.dir, tc.d, r.errs)
		}
	}
	r := &recordingTB{TB: t}
	p := activetest.NewProxy(r, target)
	p.Blackhole(activetest.Upstream, activetest.Direction(-1))
	if len(r.errs) != 1 {
		t.Errorf("Blackhole(Upstream, Direction(-1)): errors %q, want one", r.errs)
	}
	// Nothing changed: the path is healthy.
	if got, err := echo(p.Addr(), []byte("ok"), rand.New(rand.NewPCG(0, 0))); err != nil || string(got) != "ok" {
		t.Errorf("after a bad Blackhole: %q, %v", got, err)
	}
}
