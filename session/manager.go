package session

import (
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
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
	cfg     config
	aeads   map[string]cipher.AEAD
	metrics metrics
}

type metrics struct {
	loads, applies, conflicts, errors metric.Int64Counter
	latency                           metric.Float64Histogram
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
	aeads, err := m.cfg.validate()
	if err != nil {
		return nil, err
	}
	m.aeads = aeads
	m.aliaser, _ = store.(Aliaser)
	m.users, _ = store.(UserIndex)
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
	return m, nil
}

// observe records a store call's latency and outcome.
func (m *Manager) observe(ctx context.Context, op string, start time.Time, err error) {
	attrs := metric.WithAttributes(attribute.String("op", op))
	m.metrics.latency.Record(ctx, time.Since(start).Seconds(), attrs)
	switch {
	case errors.Is(err, ErrConflict):
		m.metrics.conflicts.Add(ctx, 1, attrs)
	case err != nil && !errors.Is(err, ErrNotFound):
		m.metrics.errors.Add(ctx, 1, attrs)
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
// response is replaced by the error handler's (503 by default); no fresh
// session is ever issued in place of one the store could not read.
//
// The response is not buffered: writes and flushes pass straight through
// once the session is saved. http.ResponseController works through the
// wrapper (it implements Unwrap); a hijacked connection skips the save, so
// save before hijacking by writing the headers first.
func (m *Manager) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := &Session{m: m, ctx: r.Context()}
		if c, err := r.Cookie(m.cfg.cookie.Name); err == nil && len(c.Value) <= MaxTokenLen {
			if id, ok := TokenID(c.Value); ok {
				s.token, s.id = c.Value, id
			}
		}
		sw := &writer{ResponseWriter: w, s: s, r: r}
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), ctxKey{}, s)))
		sw.commit()
	})
}

// DestroyUser ends every session of user, on every instance ("log out
// everywhere"). It needs a store implementing UserIndex.
func (m *Manager) DestroyUser(ctx context.Context, user string) error {
	if m.users == nil {
		return ErrUnsupported
	}
	start := time.Now()
	err := m.users.DestroyUser(ctx, user)
	m.observe(ctx, "destroy_user", start, err)
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

// ErrSaveFailed is returned by Write after the session could not be saved
// and the error handler has answered instead of the handler.
var ErrSaveFailed = errors.New("session: not saved; the response was replaced")

func (w *writer) commit() bool {
	if !w.done {
		w.done = true
		if err := w.s.save(w.ResponseWriter.Header()); err != nil {
			w.failed = true
			m := w.s.m
			m.cfg.logger.LogAttrs(w.r.Context(), slog.LevelError, "session store failure",
				slog.String("method", w.r.Method), slog.String("path", w.r.URL.Path), slog.Any("error", err))
			h := w.ResponseWriter.Header()
			h.Del("Set-Cookie")
			m.cfg.errorHandler(w.ResponseWriter, w.r, err)
		}
	}
	return !w.failed
}

func (w *writer) WriteHeader(code int) {
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

// FlushError saves the session, then flushes.
func (w *writer) FlushError() error {
	if !w.commit() {
		return ErrSaveFailed
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Flush implements http.Flusher.
func (w *writer) Flush() { _ = w.FlushError() }

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }
