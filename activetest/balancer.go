package activetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Fault degrades the network path from the balancer to one slot. The zero
// Fault is a healthy path.
type Fault struct {
	// Latency is added before each request is sent to the instance.
	Latency time.Duration
	// Refuse makes every request's connection to the instance fail as
	// from a port nobody listens on (ECONNREFUSED), keep-alive ones
	// opened before included, while the instance runs on: what the
	// balancer meets when an instance died and it has not noticed. The
	// balancer retries such requests on another instance
	// (WithConnectRetries).
	Refuse bool
	// ResetRate is the fraction, from 0 to 1, of requests whose connection
	// is reset (TCP RST) as the first bytes of the response arrive: the
	// instance received and handled the request, and the client gets a
	// 502. This is the ambiguous failure clients must survive: the work
	// was done and nobody was told.
	ResetRate float64
}

func (ft Fault) validate() error {
	if ft.Latency < 0 {
		return fmt.Errorf("negative latency %v", ft.Latency)
	}
	if !(ft.ResetRate >= 0 && ft.ResetRate <= 1) {
		return fmt.Errorf("reset rate %v outside [0, 1]", ft.ResetRate)
	}
	return nil
}

// SetFault puts ft on the path from the balancer to slot i, for the
// instance there now and the ones Restart brings up, until the next
// SetFault; SetFault(i, Fault{}) heals it. Requests already sent are not
// affected. An invalid Fault fails the test and changes nothing.
func (f *Fleet) SetFault(i int, ft Fault) {
	s := f.slot(i, "SetFault")
	if s == nil {
		return
	}
	if err := ft.validate(); err != nil {
		f.tb.Errorf("activetest: SetFault(%d): %v", i, err)
		return
	}
	f.mu.Lock()
	s.fault = ft
	in := s.cur
	f.mu.Unlock()
	if ft.Refuse && in != nil {
		in.tr.CloseIdleConnections()
	}
}

func (f *Fleet) faultOf(s *slot) Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	return s.fault
}

// dialError marks an error from opening a connection to an instance: no
// byte of the request reached it.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// attemptHeader carries, from the balancer to an instance, the id of one
// attempt to send a request; the instance removes it before its handler
// sees the request.
const attemptHeader = "Activetest-Attempt"

const (
	attemptHandled   = 1
	attemptAbandoned = 2
)

// errNoInstance is the balancer's answer when no instance is live.
var errNoInstance = errors.New("activetest: no live instance")

// dialer returns the DialContext of the transport to the instance at addr
// in slot s. reset wraps connections so that they are reset as the
// response arrives.
func (f *Fleet) dialer(s *slot, addr string, reset bool) func(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		if f.faultOf(s).Refuse {
			return nil, refused(network)
		}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, &dialError{err}
		}
		if reset {
			return &resetConn{Conn: c}, nil
		}
		return c, nil
	}
}

// refused is the error of a connection refused by the instance.
func refused(network string) error {
	return &dialError{&net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}}
}

// resetConn resets the connection (TCP RST) as soon as the first bytes of
// the response arrive.
type resetConn struct{ net.Conn }

func (c *resetConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		if tc, ok := c.Conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // close sends RST
		}
		_ = c.Conn.Close()
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	}
	return n, err
}

// balancer is the reverse proxy's transport: it picks a live instance per
// request and retries on another one a request whose connection failed to
// open.
type balancer struct{ f *Fleet }

func (b *balancer) RoundTrip(req *http.Request) (*http.Response, error) {
	f := b.f
	ctx := req.Context()
	body := &sentBody{rc: req.Body}
	var (
		tried   []*instance
		lastErr error
	)
	for attempt := 0; ; attempt++ {
		in := f.pick(tried)
		if in == nil {
			if lastErr != nil {
				return nil, fmt.Errorf("every live instance tried: %w", lastErr)
			}
			return nil, errNoInstance
		}
		tried = append(tried, in)
		ft := f.faultOf(in.slot)
		if ft.Latency > 0 {
			t := time.NewTimer(ft.Latency)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			}
		}
		tr := in.tr
		if ft.ResetRate > 0 && rand.Float64() < ft.ResetRate {
			tr = in.resetTr
		}
		var wrote atomic.Bool
		out := req.Clone(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			WroteHeaders: func() { wrote.Store(true) },
		}))
		out.URL.Host = in.addr
		id := strconv.FormatUint(f.attempts.Add(1), 10)
		out.Header.Set(attemptHeader, id)
		out.Header.Del(probeHeader) // only the balancer's probes carry it
		// A request with a body the transport cannot rewind is one it
		// never replays on a new connection: once sent, a request must not
		// reach an instance twice. The body is the inbound one, closed by
		// the server, read again from what was sent of it on a retry; a
		// bodyless GET gets an empty one, which the transport sees is
		// empty and does not send.
		var ab *attemptBody
		if req.Body != nil && req.Body != http.NoBody || replayable(req) {
			ab = &attemptBody{b: body}
			out.Body, out.GetBody = ab, nil
		}
		var (
			resp *http.Response
			err  error
		)
		if ft.Refuse {
			// Not even on a keep-alive connection opened before the
			// fault: the path is cut.
			err = refused("tcp")
		} else {
			resp, err = tr.RoundTrip(out)
		}
		if err == nil {
			in.attempts.Delete(id)
			return resp, nil
		}
		if ctx.Err() != nil || attempt >= f.opts.connectRetries {
			in.attempts.Delete(id)
			return nil, err
		}
		lastErr = err
		var de *dialError
		if wrote.Load() || !errors.As(err, &de) {
			// Sent: retried only when the instance closed the connection
			// in a graceful shutdown, which reads no new request, and
			// never if the instance's handler took the request (its
			// answer lost to a reset fault or an aborted handler). With
			// probing, not even then: whether the balancer stopped
			// sending before the server stopped is what the probes
			// model, and a real balancer that did not fails the request.
			if f.opts.probe != nil || !f.drainingNow(in) {
				in.attempts.Delete(id)
				return nil, err
			}
			if _, handled := in.attempts.LoadOrStore(id, attemptAbandoned); handled {
				in.attempts.Delete(id)
				return nil, err
			}
		}
		// The transport may go on reading an attempt's body after
		// RoundTrip returned; the next attempt reads it from the start.
		ab.end()
	}
}

// drainingNow reports whether in is being drained, the drain not cut.
func (f *Fleet) drainingNow(in *instance) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return in.draining
}

// replayable reports whether http.Transport would send req again after a
// reused connection failed under it (http.Request.isReplayable).
func replayable(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

// pick returns the next live instance not in tried, or nil. Round-robin
// goes on from the slot it picked last to the next live one, skipping the
// slots that are down, as a load balancer's rotation does.
func (f *Fleet) pick(tried []*instance) *instance {
	f.mu.Lock()
	defer f.mu.Unlock()
	ok := func(s *slot) bool {
		return s.cur != nil && s.cur.live && !slices.Contains(tried, s.cur)
	}
	n := len(f.slots)
	if f.opts.policy == Random {
		live := make([]*instance, 0, n)
		for _, s := range f.slots {
			if ok(s) {
				live = append(live, s.cur)
			}
		}
		if len(live) == 0 {
			return nil
		}
		return live[rand.IntN(len(live))]
	}
	for k := 1; k <= n; k++ {
		s := f.slots[(f.last+k)%n]
		if ok(s) {
			f.last = s.index
			return s.cur
		}
	}
	return nil
}

// sentBody is a request body shared by the attempts of one request: it
// keeps what was read of it, so that an attempt that no handler took can be
// sent again whole, and leaves closing to the server.
type sentBody struct {
	mu  sync.Mutex
	rc  io.ReadCloser
	buf []byte // what was read from rc
}

// attemptBody is the body of one attempt: sentBody read from its start.
type attemptBody struct {
	b   *sentBody
	pos int  // guarded by b.mu
	off bool // guarded by b.mu: the attempt is over
}

var errAttemptOver = errors.New("activetest: attempt abandoned")

func (a *attemptBody) Read(p []byte) (int, error) {
	a.b.mu.Lock()
	defer a.b.mu.Unlock()
	if a.off {
		return 0, errAttemptOver
	}
	if a.pos < len(a.b.buf) {
		n := copy(p, a.b.buf[a.pos:])
		a.pos += n
		return n, nil
	}
	if a.b.rc == nil {
		return 0, io.EOF
	}
	n, err := a.b.rc.Read(p)
	a.b.buf = append(a.b.buf, p[:n]...)
	a.pos += n
	return n, err
}

func (a *attemptBody) Close() error { return nil }

// end stops the attempt's reads; nil does nothing.
func (a *attemptBody) end() {
	if a == nil {
		return
	}
	a.b.mu.Lock()
	defer a.b.mu.Unlock()
	a.off = true
}

// proxyError answers a request the balancer could not complete, as a load
// balancer does: 503 when no instance could be reached, 502 when the
// instance failed the request. A client that went away gets nothing.
func proxyError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return
	}
	code := http.StatusBadGateway
	var de *dialError
	if errors.Is(err, errNoInstance) || errors.As(err, &de) {
		code = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = fmt.Fprintf(w, "activetest balancer: %v\n", err)
}
