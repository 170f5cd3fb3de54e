package session

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// ErrUnsupported: the store lacks the optional interface an operation needs.
var ErrUnsupported = errors.New("session: not supported by the store")

// Manager loads and saves sessions for HTTP handlers. It is safe for
// concurrent use, holds no per-request state and starts no goroutine.
type Manager struct {
	store   Store
	aliaser Aliaser   // nil when the store has none
	users   UserIndex // nil when the store has none
	// limits: the store enforces Delta.MaxSize (SizeLimiter). blind: Put
	// may then skip the read, unless values are encrypted (a value is sealed
	// to the ID of the record it lands in, which a write through an alias
	// left by a rotation would not know).
	limits, blind bool
	// sealExtra: how many bytes sealing adds to a value (0 without
	// encryption); the session limit counts values as stored.
	sealExtra int
	cfg       config
	keys      map[string]*sealKey // by name; nil without encryption
	metrics   metrics
}

type metrics struct {
	loads, applies, conflicts, errors metric.Int64Counter
	latency                           metric.Float64Histogram
	// Attribute options of each store operation, built once.
	load, apply, delete, alias, destroyUser opMetrics
}

// opMetrics holds the measurement options of one store operation, as
// slices, so that recording allocates nothing.
type opMetrics struct {
	rec []metric.RecordOption
	add []metric.AddOption
}

func newOpMetrics(op string) opMetrics {
	o := metric.WithAttributeSet(attribute.NewSet(attribute.String("op", op)))
	return opMetrics{rec: []metric.RecordOption{o}, add: []metric.AddOption{o}}
}

// NewManager returns a Manager over store. Options are checked here: a bad
// combination fails now, not at the first request.
func NewManager(store Store, opts ...Option) (*Manager, error) {
	if store == nil {
		return nil, errors.New("session: nil store")
	}
	m := &Manager{store: store}
	for _, o := range opts {
		if o == nil {
			return nil, errors.New("session: nil option")
		}
		o.apply(&m.cfg)
	}
	m.cfg.defaults()
	keys, err := m.cfg.validate()
	if err != nil {
		return nil, err
	}
	m.keys = keys
	if keys != nil {
		// Version, name length, name, nonce and tag (see crypto.go); a
		// derived key's GCM has the same nonce and tag sizes.
		name := m.cfg.keys[0].Name
		m.sealExtra = 2 + len(name) + keys[name].v1.NonceSize() + keys[name].v1.Overhead()
	}
	m.aliaser, _ = store.(Aliaser)
	m.users, _ = store.(UserIndex)
	if sl, ok := store.(SizeLimiter); ok && sl.EnforcesMaxSize() {
		m.limits = true
		m.blind = keys == nil
	}
	mp := m.cfg.meterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter("github.com/activekit/activekit/session")
	var errs [5]error
	m.metrics.loads, errs[0] = meter.Int64Counter("session.loads", metric.WithDescription("Session loads from the store."))
	m.metrics.applies, errs[1] = meter.Int64Counter("session.applies", metric.WithDescription("Session deltas applied to the store."))
	m.metrics.conflicts, errs[2] = meter.Int64Counter("session.conflicts", metric.WithDescription("Compare-and-set conflicts."))
	m.metrics.errors, errs[3] = meter.Int64Counter("session.errors", metric.WithDescription("Store failures."))
	m.metrics.latency, errs[4] = meter.Float64Histogram("session.store.duration", metric.WithUnit("s"), metric.WithDescription("Duration of store calls."))
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("session: metrics: %w", err)
	}
	m.metrics.load, m.metrics.apply, m.metrics.delete = newOpMetrics("load"), newOpMetrics("apply"), newOpMetrics("delete")
	m.metrics.alias, m.metrics.destroyUser = newOpMetrics("alias"), newOpMetrics("destroy_user")
	return m, nil
}

// observe records a store call's latency and outcome.
func (m *Manager) observe(ctx context.Context, op *opMetrics, start time.Time, err error) {
	m.metrics.latency.Record(ctx, time.Since(start).Seconds(), op.rec...)
	if err == nil {
		return
	}
	switch {
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		// The caller went away (a client that closed its connection):
		// that says nothing of the store.
	case errors.Is(err, ErrConflict):
		m.metrics.conflicts.Add(ctx, 1, op.add...)
	case !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrTooLarge):
		m.metrics.errors.Add(ctx, 1, op.add...)
	}
}

type ctxKey struct{}

// FromContext returns the session of the request whose context ctx is, or
// nil outside Middleware. The methods of a nil *Session return ErrNoSession.
func FromContext(ctx context.Context) *Session {
	s, _ := ctx.Value(ctxKey{}).(*Session)
	return s
}

// Middleware gives each request a *Session (see FromContext). The session
// is loaded only when the handler first uses it, and saved, only if
// changed, just before the response headers are written (or when the
// handler returns without writing). If the store fails, the handler's
// response is replaced by the error handler's (503 by default), without
// the headers set that describe the replaced response (Set-Cookie,
// Cache-Control, Expires, ETag, Last-Modified, the Content- headers,
// Location, Refresh, Trailer); no fresh session is ever issued in place of
// one the store could not read.
//
// A request carrying several cookies of the session cookie's name (one
// left under the cookie's old Domain or Path, another application's)
// uses the first whose value is a token leading to a session, of the
// first four tokens; only the first costs a read when it leads to one.
//
// A request whose session has ended (expired, revoked, or renewed by another
// request and its old token's grace period over) is answered as a new
// visitor's: a change starts a new session, and a read clears the cookie.
// Unless the request had run for half the grace period (WithRenewGrace),
// and a second at least, when it found its session ended: another request
// (a login on another tab) may then have renewed it meanwhile, and the
// browser hold the renewed token, which a new cookie, or clearing it, would
// take away. The request's changes are then dropped and the cookie is left
// alone, as when a session ends after the request has read it; a login
// (SetUser) still gets its new session, and a logout (Destroy) clears the
// cookie only if the token still led to a session (see Session.Destroy).
//
// A handler that panics before its response headers go out has its
// changes dropped: nothing is saved and no cookie set (the panic goes on).
//
// The response is not buffered: writes and flushes pass straight through
// once the session is saved. http.ResponseController works through the
// wrapper (it implements Unwrap); a Flush saves the session first, unless
// the writer cannot flush (http.TimeoutHandler's): it then fails with an
// error matching http.ErrNotSupported and saves nothing. Hijack (a
// websocket upgrade) saves the session first, and answers with the error
// handler instead if the save fails. Unless the response headers were written before (WriteHeader),
// the response the hijacker then writes carries no session cookie: a new
// visitor's session made then is never sent, a pending Renew is not made
// (the old token would end with the grace period; the changes are saved
// under it), and a pending SetUser fails the Hijack (a login cannot go
// without its new token), to be saved with the response the handler
// writes instead. Where the connection cannot be hijacked (HTTP/2), Hijack
// fails with an error matching http.ErrNotSupported and leaves the session
// as it was.
func (m *Manager) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The session and the writer in one allocation.
		rs := &struct {
			s  Session
			sw writer
		}{}
		s := &rs.s
		s.m, s.ctx = m, r.Context()
		if lines := r.Header["Cookie"]; len(lines) > 0 {
			if v, ok := cookieToken(lines, m.cfg.cookie.Name, 0); ok {
				s.token, s.start = v, m.cfg.now()
				s.id, _ = TokenID(v)
				// Another token under the name (rare): see Session.load.
				if _, more := cookieToken(lines, m.cfg.cookie.Name, 1); more {
					s.cookies, s.more = lines, true
				}
			}
		}
		sw := &rs.sw
		sw.ResponseWriter, sw.s, sw.r = w, s, r
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), ctxKey{}, s)))
		sw.commit()
	})
}

// cookieToken returns the (n+1)th cookie called name in the Cookie header
// lines whose value has the form of a token (see TokenID), without
// allocating. Cookies of that name whose values are no tokens are skipped,
// where http.Request.Cookie would return the first: browsers send
// same-named cookies longest path first, then oldest first, so another
// application's cookie of the same name (on the parent domain, for a name
// without the __Host- prefix) would otherwise come first on every request
// and hide the session for good. A token that leads nowhere is skipped
// likewise, when the session is read (see Session.load).
func cookieToken(lines []string, name string, n int) (string, bool) {
	for _, line := range lines {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			k, v, _ := strings.Cut(textproto.TrimString(part), "=")
			if textproto.TrimString(k) != name {
				continue
			}
			if len(v) > 1 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			if len(v) > MaxTokenLen || !validCookieValue(v) {
				continue
			}
			if _, ok := tokenTag(v); ok {
				if n == 0 {
					return v, true
				}
				n--
			}
		}
	}
	return "", false
}

// maxCookieTokens bounds the tokens of one request that Session.load tries.
const maxCookieTokens = 4

// validCookieValue reports whether net/http would accept v as a cookie
// value (RFC 6265 cookie-octets, plus space and comma).
func validCookieValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c >= 0x7f || c == '"' || c == ';' || c == '\\' {
			return false
		}
	}
	return true
}

// DestroyUser ends every session of user, on every instance ("log out
// everywhere"). It needs a store implementing UserIndex.
func (m *Manager) DestroyUser(ctx context.Context, user string) error {
	if m.users == nil {
		return ErrUnsupported
	}
	start := time.Now()
	err := m.users.DestroyUser(ctx, user)
	m.observe(ctx, &m.metrics.destroyUser, start, err)
	return err
}

// UserSessions returns the store IDs of user's live sessions. It needs a
// store implementing UserIndex.
func (m *Manager) UserSessions(ctx context.Context, user string) ([]string, error) {
	if m.users == nil {
		return nil, ErrUnsupported
	}
	return m.users.Sessions(ctx, user)
}

// writer saves the session before the first byte of the response.
type writer struct {
	http.ResponseWriter
	s      *Session
	r      *http.Request
	done   bool // save attempted
	failed bool // save failed: the error handler answered
}

// ErrSaveFailed is returned by Write (and Flush, Hijack) after the session
// could not be saved and the error handler has answered instead of the
// handler.
var ErrSaveFailed = errors.New("session: not saved; the response was replaced")

// responseHeaders describe the handler's response: the error handler's
// answer, which replaces it when the save fails, must not carry them (a
// Content-Encoding set by a compressing writer inside the Middleware would
// make the client decode the plain error body; a Cache-Control or a
// validator would let a cache keep the error as the page). Other headers,
// such as those of outer middleware, stay.
var responseHeaders = []string{
	"Set-Cookie", "Cache-Control", "Expires", "ETag", "Last-Modified",
	"Content-Encoding", "Content-Language", "Content-Disposition",
	"Content-Location", "Content-Range", "Content-Length", "Location",
	"Refresh", "Trailer",
}

func (w *writer) commit() bool {
	if !w.done {
		w.done = true
		if err := w.s.save(w.ResponseWriter.Header()); err != nil {
			w.failed = true
			m := w.s.m
			level, msg := slog.LevelError, "session store failure"
			if ctx := w.r.Context(); errors.Is(err, context.Canceled) && ctx.Err() != nil {
				level, msg = slog.LevelDebug, "session not saved: request canceled" // the client went away
			}
			m.cfg.logger.LogAttrs(w.r.Context(), level, msg,
				slog.String("method", w.r.Method), slog.String("path", w.r.URL.Path), slog.Any("error", err))
			h := w.ResponseWriter.Header()
			for _, k := range responseHeaders {
				h.Del(k)
			}
			m.cfg.errorHandler(w.ResponseWriter, w.r, err)
		}
	}
	return !w.failed
}

func (w *writer) WriteHeader(code int) {
	// An informational response (103 Early Hints) goes out before the
	// response's own headers: the handler may still change the session.
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols && !w.done {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	if w.commit() {
		w.ResponseWriter.WriteHeader(code)
	}
}

func (w *writer) Write(b []byte) (int, error) {
	if !w.commit() {
		return 0, ErrSaveFailed
	}
	return w.ResponseWriter.Write(b)
}

// FlushError saves the session, then flushes. Where the writer cannot
// flush (http.TimeoutHandler's), it fails with http.ErrNotSupported and
// saves nothing: the handler may still answer otherwise, and change the
// session.
func (w *writer) FlushError() error {
	if !flushable(w.ResponseWriter) {
		return fmt.Errorf("session: flush: %w", http.ErrNotSupported)
	}
	if !w.commit() {
		return ErrSaveFailed
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Flush implements http.Flusher.
func (w *writer) Flush() { _ = w.FlushError() }

// Hijack implements http.Hijacker, which websocket libraries assert:
// the session is saved first (see Middleware).
func (w *writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if !hijackable(w.ResponseWriter) {
		// HTTP/2: the Hijack would fail after the session was saved and
		// a pending Renew dropped, and the response the handler writes
		// instead would go out without them.
		return nil, nil, fmt.Errorf("session: hijack: %w", http.ErrNotSupported)
	}
	if !w.done {
		// The hijacker writes its own response, without the headers set
		// here: a token issued now would never reach the browser.
		if err := w.s.holdRenewal(); err != nil {
			return nil, nil, err
		}
	}
	if !w.commit() {
		return nil, nil, ErrSaveFailed
	}
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// flushable reports whether rw, or a writer it unwraps to (as
// http.ResponseController finds them), can flush.
func flushable(rw http.ResponseWriter) bool {
	for {
		switch t := rw.(type) {
		case interface{ FlushError() error }, http.Flusher:
			return true
		case interface{ Unwrap() http.ResponseWriter }:
			rw = t.Unwrap()
		default:
			return false
		}
	}
}

// hijackable reports whether rw, or a writer it unwraps to (as
// http.ResponseController finds them), implements http.Hijacker.
func hijackable(rw http.ResponseWriter) bool {
	for {
		switch t := rw.(type) {
		case http.Hijacker:
			return true
		case interface{ Unwrap() http.ResponseWriter }:
			rw = t.Unwrap()
		default:
			return false
		}
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }
