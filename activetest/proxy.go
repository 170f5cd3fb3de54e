package activetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Direction is one way through a Proxy, named as toxiproxy names its
// streams.
type Direction int

const (
	// Upstream is from the client to the target: commands, queries,
	// produced records.
	Upstream Direction = iota
	// Downstream is from the target to the client: replies.
	Downstream
)

func (d Direction) String() string {
	switch d {
	case Upstream:
		return "upstream"
	case Downstream:
		return "downstream"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

// ProxyStats counts what a Proxy did, for a test's assertions.
type ProxyStats struct {
	// Accepted is how many connections the proxy accepted, reset ones
	// included.
	Accepted int64
	// Open is how many connections are open now: forwarding, held by a
	// blackhole, or dialing the target.
	Open int
	// Refused is how many connections were reset as they arrived, because
	// the path was cut or the target could not be reached.
	Refused int64
	// Cut is how many open connections Cut closed.
	Cut int64
	// Up and Down are the bytes delivered to the target and to the
	// client: by the time a side has read some, they are counted.
	Up, Down int64
}

// Proxy is a TCP proxy that injects faults between one instance and one of
// its backends (Redis, Memcached, MongoDB, Consul, a Kafka broker): point
// the instance's client at Addr instead of the backend's address, then
// Cut, Blackhole, SetLatency and Heal the path while traffic flows. Its
// methods are safe for concurrent use, with each other and with traffic.
//
// # Why
//
// Losing an instance is half of what an active-active service must
// survive; the other half is an instance losing its backends while the
// rest of the fleet keeps them. A network partition between one node and
// Redis does not kill the instance there: it goes on taking requests, and
// each one waits on a client that hangs until its timeouts, while the
// balancer, which sees an instance that answers, keeps sending it users.
// The service must then do what it promises (fail readiness so that the
// balancer drains it, answer 503 with Retry-After, never hand a user a
// fresh session because their old one could not be read), and come back
// on its own once the path heals. Stopping the backend cannot test that,
// since it fails every instance at once; a proxy per instance fails one.
//
// # Faults
//
// The path is healthy, cut or blackholed, with latency added in each
// direction on top:
//
//   - [Proxy.Cut] is a backend that went away or a firewall that resets:
//     every open connection is reset (TCP RST) on both sides at once, and
//     each new one is reset as soon as it is accepted, until Heal or
//     Blackhole. The client's dial fails with the reset, or succeeds (the
//     kernel accepts for the proxy) and its first read or write fails:
//     commands in flight and new ones fail fast, with a connection
//     error.
//   - [Proxy.Blackhole] is a network partition: connections open and new
//     ones are held, and nothing is forwarded either way, so a client
//     hangs until its own timeouts (a read timeout, not a dial timeout:
//     the kernel completes the handshake). What was sent is held, not
//     dropped, and is delivered in order once the path heals, as TCP's
//     retransmissions deliver it: a command the client gave up on may
//     still reach the backend after Heal, the ambiguous outcome a service
//     must tolerate. A connection the client closed meanwhile is closed
//     towards the target after what it sent. Blackhole(Downstream) holds
//     the replies alone: commands run, and their clients time out.
//   - [Proxy.SetLatency] delays each byte by d in one direction, measured
//     from when the proxy read it; bytes keep their order, and
//     throughput is not capped (toxiproxy's latency toxic, without
//     jitter).
//   - [Proxy.Heal] makes the path healthy again: no cut, no blackhole, no
//     latency. Held bytes flow at once; cut connections stay closed, and
//     the client's next dial reaches the target.
//
// Faults apply to connections already open as to new ones, and take
// effect at once for every byte not yet handed to the other side (a write
// already under way finishes). The proxy never loses, duplicates or
// reorders a byte it forwards. A connection one side closes normally is
// closed on the other after what it sent (a half-close is passed on); one
// that fails is reset on the other.
//
// # With a Fleet
//
// A Fleet does not know its instances' backends: newInstance(i) builds
// their clients. Give each slot its own Proxy in front of each backend
// and let newInstance(i) use proxies[i].Addr(): faulting proxies[i]
// partitions instance i alone, the others keep their path, and the proxy
// outlives Restart(i), as the network of a node outlives the process on
// it. Create the proxies before the Fleet, so that the Fleet's cleanup,
// which closes the instances' clients, runs before theirs.
//
// # Clients that discover their servers
//
// A proxy stands in for one address. Clients that dial the address they
// are given go through it: a standalone Redis, Memcached, Consul's HTTP
// API, MongoDB with directConnection=true. Clients that learn their
// servers' addresses from the servers (Kafka's advertised brokers, Redis
// Cluster's slot map and Sentinel's master, a MongoDB replica set's
// members) connect to the announced addresses, around the proxy, unless
// their dialer maps each announced address to a proxy of its own (go-redis'
// Options.Dialer, franz-go's kgo.Dialer, the MongoDB driver's
// SetDialer).
//
// # Goroutines
//
// NewProxy starts one goroutine accepting connections. Each connection has
// one while it is dialed, then four (a reader and a writer each way)
// until it closes. All of them end in the test's cleanup, which closes the
// listener and resets every connection, whatever the fault, and fails the
// test if they have not ended after 10s.
type Proxy struct {
	tb     testing.TB
	target string
	ln     net.Listener
	done   chan struct{} // closed by the cleanup

	mu      sync.Mutex
	cut     bool    // every connection is reset
	held    [2]bool // per Direction: bytes are held (a blackhole)
	latency [2]time.Duration
	changed chan struct{} // closed, then replaced, at each change of the path
	conns   map[*proxyConn]struct{}
	closed  bool

	accepted, refused, cuts atomic.Int64
	bytes                   [2]atomic.Int64

	wg sync.WaitGroup
}

// proxyDialTimeout bounds a dial of the target.
const proxyDialTimeout = 10 * time.Second

// Each direction of a connection holds up to proxyDepth chunks of up to
// proxyChunk bytes read and not yet written.
const (
	proxyChunk = 32 << 10
	proxyDepth = 8
)

// NewProxy starts a proxy listening on 127.0.0.1:0 that forwards each
// connection to target (host:port), healthy until a fault is set. It stops
// in t.Cleanup (see Proxy). A listener that fails to open fails the test.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	if target == "" {
		t.Fatal("activetest: NewProxy with an empty target")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("activetest: proxy to %s: %v", target, err)
	}
	p := &Proxy{
		tb:      t,
		target:  target,
		ln:      ln,
		done:    make(chan struct{}),
		changed: make(chan struct{}),
		conns:   map[*proxyConn]struct{}{},
	}
	t.Cleanup(p.close)
	p.wg.Go(p.accept)
	return p
}

// Addr is the address (127.0.0.1:port) to give the client instead of the
// target's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target is the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Cut resets every open connection, on both sides, and each new one as it
// arrives, until Heal or Blackhole; latency set before is kept.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.cut, p.held = true, [2]bool{}
	p.broadcast()
	open := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		open = append(open, c)
	}
	p.mu.Unlock()
	for _, c := range open {
		p.closeConn(c, true, &p.cuts)
	}
}

// Blackhole holds every connection, open and new, forwarding nothing in
// the directions given (both when none is given; directions held already
// stay held), until Heal or Cut; it ends a cut, and latency set before is
// kept. Holding Downstream alone is
// a partition that loses the replies: commands reach the target and run,
// and the client, hearing nothing, times out (the ambiguous outcome of a
// write). Holding Upstream alone holds new connections before the target
// is dialed, as holding both does. An unknown direction fails the test and
// changes nothing.
func (p *Proxy) Blackhole(dirs ...Direction) {
	held := [2]bool{true, true}
	if len(dirs) > 0 {
		held = [2]bool{}
		for _, d := range dirs {
			if d != Upstream && d != Downstream {
				p.tb.Errorf("activetest: Blackhole: unknown %v", d)
				return
			}
			held[d] = true
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	for d, h := range held {
		p.held[d] = p.held[d] || h
	}
	p.broadcast()
}

// SetLatency delays each byte going in direction dir by d from when the
// proxy reads it, until the next SetLatency of dir or Heal; 0 removes it.
// A negative d or an unknown dir fails the test and changes nothing.
func (p *Proxy) SetLatency(dir Direction, d time.Duration) {
	if dir != Upstream && dir != Downstream {
		p.tb.Errorf("activetest: SetLatency: unknown %v", dir)
		return
	}
	if d < 0 {
		p.tb.Errorf("activetest: SetLatency: negative latency %v", d)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latency[dir] = d
	p.broadcast()
}

// Heal makes the path healthy: no cut, no blackhole, no latency. Bytes a
// blackhole held are forwarded at once, in order.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut, p.held = false, [2]bool{}
	p.latency = [2]time.Duration{}
	p.broadcast()
}

// Stats returns what the proxy did so far.
func (p *Proxy) Stats() ProxyStats {
	p.mu.Lock()
	open := len(p.conns)
	p.mu.Unlock()
	return ProxyStats{
		Accepted: p.accepted.Load(),
		Open:     open,
		Refused:  p.refused.Load(),
		Cut:      p.cuts.Load(),
		Up:       p.bytes[Upstream].Load(),
		Down:     p.bytes[Downstream].Load(),
	}
}

// broadcast wakes every writer waiting on the path; p.mu is held.
func (p *Proxy) broadcast() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// proxyConn is one client connection and, once dialed, its connection to
// the target.
type proxyConn struct {
	client *net.TCPConn
	// ctx ends when the connection closes: it stops the dial, the
	// writers' waits and the readers' sends.
	ctx    context.Context
	cancel context.CancelFunc
	// halves counts the directions whose end (EOF) was passed on; the
	// second closes the connection.
	halves atomic.Int32

	mu     sync.Mutex
	server *net.TCPConn // guarded by mu; nil until dialed
	closed bool         // guarded by mu
}

func (p *Proxy) accept() {
	for {
		nc, err := p.ln.Accept()
		if err != nil {
			select {
			case <-p.done:
				return
			case <-time.After(10 * time.Millisecond): // out of files: back off
				continue
			}
		}
		p.accepted.Add(1)
		c := &proxyConn{client: nc.(*net.TCPConn)}
		c.ctx, c.cancel = context.WithCancel(context.Background())
		p.mu.Lock()
		if p.closed || p.cut {
			p.mu.Unlock()
			c.cancel()
			p.refused.Add(1) // before the client can see it
			reset(c.client)
			continue
		}
		p.conns[c] = struct{}{}
		p.mu.Unlock()
		p.wg.Go(func() { p.serve(c) })
	}
}

// serve dials the target for c once the path forwards, then pipes both
// ways until c closes.
func (p *Proxy) serve(c *proxyConn) {
	if !p.wait(c, Upstream, time.Time{}) {
		return
	}
	d := net.Dialer{Timeout: proxyDialTimeout}
	nc, err := d.DialContext(c.ctx, "tcp", p.target)
	if err != nil {
		p.closeConn(c, true, &p.refused)
		return
	}
	server := nc.(*net.TCPConn)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		reset(server)
		return
	}
	c.server = server
	c.mu.Unlock()
	p.wg.Go(func() { p.pipe(c, Upstream, c.client, server) })
	p.pipe(c, Downstream, server, c.client)
}

// chunk is what one read returned: bytes, or the error that ended the
// direction; at is when it was read.
type chunk struct {
	b   []byte
	err error
	at  time.Time
}

// pipe forwards src to dst in direction dir, as the path allows, until
// src ends or c closes. The reading runs in a goroutine of its own, so
// that latency delays each byte from when it was read, without adding up.
func (p *Proxy) pipe(c *proxyConn, dir Direction, src, dst *net.TCPConn) {
	chunks := make(chan chunk, proxyDepth)
	p.wg.Go(func() { readChunks(c, src, chunks) })
	for {
		var ck chunk
		select {
		case ck = <-chunks:
		case <-c.ctx.Done():
			return
		}
		if !p.wait(c, dir, ck.at) {
			return
		}
		if ck.err != nil {
			if !errors.Is(ck.err, io.EOF) {
				p.closeConn(c, true, nil) // a reset or failure: pass it on
				return
			}
			_ = dst.CloseWrite()
			if c.halves.Add(1) == 2 {
				p.closeConn(c, false, nil)
			}
			return
		}
		// Counted before the write, so that the count is never behind
		// what the other side has read; what the write did not take is
		// taken back.
		p.bytes[dir].Add(int64(len(ck.b)))
		if n, err := dst.Write(ck.b); err != nil {
			p.bytes[dir].Add(int64(n - len(ck.b)))
			p.closeConn(c, true, nil)
			return
		}
	}
}

// readChunks reads src into out until an error, which it sends last, or
// the end of c.
func readChunks(c *proxyConn, src *net.TCPConn, out chan<- chunk) {
	buf := make([]byte, proxyChunk)
	for {
		n, err := src.Read(buf)
		at := time.Now()
		if n > 0 {
			select {
			case out <- chunk{b: bytes.Clone(buf[:n]), at: at}:
			case <-c.ctx.Done():
				return
			}
		}
		if err != nil {
			select {
			case out <- chunk{err: err, at: at}:
			case <-c.ctx.Done():
			}
			return
		}
	}
}

// wait blocks until what direction dir of c read at may be forwarded: dir
// is not held, and, unless at is zero, its latency has passed
// since at. It returns false once c is closed (a cut closes every
// connection it finds).
func (p *Proxy) wait(c *proxyConn, dir Direction, at time.Time) bool {
	for {
		p.mu.Lock()
		cut, held, lat, changed := p.cut, p.held[dir], p.latency[dir], p.changed
		p.mu.Unlock()
		var timer *time.Timer
		var fire <-chan time.Time
		switch {
		case cut:
			return false
		case held:
			// until the path changes
		default:
			if at.IsZero() {
				return true
			}
			d := time.Until(at.Add(lat))
			if d <= 0 {
				return true
			}
			timer = time.NewTimer(d)
			fire = timer.C
		}
		select {
		case <-changed:
		case <-fire:
		case <-c.ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return false
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// closeConn closes c, both sides, with a reset if rst is set, if it is
// open; it then adds one to count (nil: none) before either side can see
// the close.
func (p *Proxy) closeConn(c *proxyConn, rst bool, count *atomic.Int64) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	server := c.server
	c.mu.Unlock()
	if count != nil {
		count.Add(1)
	}
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.cancel()
	if rst {
		reset(c.client)
		if server != nil {
			reset(server)
		}
	} else {
		_ = c.client.Close()
		if server != nil {
			_ = server.Close()
		}
	}
}

// reset closes c with a TCP RST rather than a FIN.
func reset(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

// close is the cleanup of NewProxy: it stops accepting, resets every
// connection and waits for every goroutine.
func (p *Proxy) close() {
	p.mu.Lock()
	p.closed = true
	open := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		open = append(open, c)
	}
	p.mu.Unlock()
	close(p.done)
	_ = p.ln.Close()
	for _, c := range open {
		p.closeConn(c, true, nil)
	}
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(cleanupWait):
		p.tb.Errorf("activetest: proxy to %s: goroutines still running %v after the end of the test", p.target, cleanupWait)
	}
}
