package consistency

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// DefaultTokenHeader is the HTTP header that carries a causal token, on
// requests and responses alike.
const DefaultTokenHeader = "Activekit-Causal-Token"

// Metric names, in the instrumentation scope ScopeName.
const (
	ScopeName = "github.com/activekit/activekit/consistency"
	// MetricTokens counts causal tokens seen by the Middleware, with the
	// attribute activekit.consistency.token.result: "accepted", "missing",
	// "malformed", "forged", "expired" or "refused" (a session would not
	// take it), and tokens written to responses as "issued".
	MetricTokens = "activekit.consistency.tokens"
	// AttrTokenResult is the attribute of MetricTokens.
	AttrTokenResult = "activekit.consistency.token.result"
)

// Middleware gives every HTTP request a causally consistent MongoDB session
// that starts where the caller's last request ended, on whichever instance
// served it, and hands the caller the position it reached.
//
// For each request it reads the token in the request header, verifies it,
// starts a causally consistent session on the client and advances it to the
// token's cluster and operation times, and puts the session in the request
// context (mongo.NewSessionContext), so that every driver call made with
// that context runs in it: reads wait until the member they go to has
// caught up with the token. When the response header is written, it adds
// the session's position at that moment as a new token.
//
// A missing, malformed, forged or expired token is ignored and counted:
// never a failure, never trusted. The request then runs in a fresh session.
//
// A token only covers what the session had done when the response header
// was written: a handler that writes to MongoDB after the first byte of its
// body (streaming) must carry the position some other way (CurrentToken).
//
// Sessions are not safe for concurrent use: a handler that fans out to
// goroutines must not use the request context's session from more than one
// at a time.
//
// A Middleware is safe for concurrent use and starts no goroutines.
type Middleware struct {
	client *mongo.Client
	codec  *TokenCodec
	header string
	logger *slog.Logger
	mp     metric.MeterProvider
	tokens metric.Int64Counter
	attrs  map[string]metric.AddOption
}

// MiddlewareOption configures a Middleware.
type MiddlewareOption interface{ applyMiddleware(*Middleware) error }

type middlewareOptionFunc func(*Middleware) error

func (f middlewareOptionFunc) applyMiddleware(m *Middleware) error { return f(m) }

// WithHeader sets the header that carries the token; DefaultTokenHeader by
// default.
func WithHeader(name string) MiddlewareOption {
	return middlewareOptionFunc(func(m *Middleware) error {
		if name == "" {
			return fmt.Errorf("%w: empty header name", ErrInvalidOption)
		}
		m.header = http.CanonicalHeaderKey(name)
		return nil
	})
}

// WithLogger sets where rejected tokens and session failures are logged, at
// debug and warn level; nothing is logged by default.
func WithLogger(l *slog.Logger) MiddlewareOption {
	return middlewareOptionFunc(func(m *Middleware) error {
		if l == nil {
			return fmt.Errorf("%w: nil logger", ErrInvalidOption)
		}
		m.logger = l
		return nil
	})
}

// WithMeterProvider sets where the token counter is created; the default is
// otel.GetMeterProvider(), a no-op unless the application set one.
func WithMeterProvider(mp metric.MeterProvider) MiddlewareOption {
	return middlewareOptionFunc(func(m *Middleware) error {
		if mp == nil {
			return fmt.Errorf("%w: nil meter provider", ErrInvalidOption)
		}
		m.mp = mp
		return nil
	})
}

// Token results, the values of AttrTokenResult.
const (
	resultAccepted  = "accepted"
	resultMissing   = "missing"
	resultMalformed = "malformed"
	resultForged    = "forged"
	resultExpired   = "expired"
	resultRefused   = "refused"
	resultIssued    = "issued"
)

// NewMiddleware returns a Middleware that starts sessions on client and
// signs and verifies tokens with codec.
func NewMiddleware(client *mongo.Client, codec *TokenCodec, opts ...MiddlewareOption) (*Middleware, error) {
	if client == nil || codec == nil {
		return nil, fmt.Errorf("%w: nil client or codec", ErrInvalidOption)
	}
	m := &Middleware{
		client: client,
		codec:  codec,
		header: DefaultTokenHeader,
		logger: slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		if err := o.applyMiddleware(m); err != nil {
			return nil, err
		}
	}
	if m.mp == nil {
		m.mp = otel.GetMeterProvider()
	}
	var err error
	m.tokens, err = m.mp.Meter(ScopeName).Int64Counter(MetricTokens,
		metric.WithUnit("{token}"),
		metric.WithDescription("Causal tokens received (by result) and issued by the consistency middleware."))
	if err != nil {
		return nil, fmt.Errorf("consistency: token counter: %w", err)
	}
	m.attrs = make(map[string]metric.AddOption)
	for _, r := range []string{resultAccepted, resultMissing, resultMalformed, resultForged, resultExpired, resultRefused, resultIssued} {
		m.attrs[r] = metric.WithAttributeSet(attribute.NewSet(attribute.String(AttrTokenResult, r)))
	}
	return m, nil
}

// requestState is what the middleware keeps in a request's context.
type requestState struct {
	sess  *mongo.Session
	codec *TokenCodec
}

type stateKey struct{}

// SessionFromContext returns the causally consistent session the Middleware
// started for the request, or nil outside the Middleware.
func SessionFromContext(ctx context.Context) *mongo.Session {
	if st, ok := ctx.Value(stateKey{}).(*requestState); ok {
		return st.sess
	}
	return nil
}

// CurrentToken returns a token for the position the request's session has
// reached now, for a handler that must hand it over another way than the
// response header (in a streamed body, a message, a redirect). ok is false
// outside the Middleware and when the session has no position yet (no
// operation has run and no token came in, or the server has no cluster
// times, such as FerretDB or a standalone mongod).
func CurrentToken(ctx context.Context) (token string, ok bool) {
	st, _ := ctx.Value(stateKey{}).(*requestState)
	if st == nil {
		return "", false
	}
	return st.token()
}

func (st *requestState) token() (string, bool) {
	t := Token{ClusterTime: st.sess.ClusterTime(), OperationTime: st.sess.OperationTime()}
	if t.empty() {
		return "", false
	}
	s, err := st.codec.Encode(t)
	if err != nil {
		return "", false
	}
	return s, true
}

// Handler wraps next.
func (m *Middleware) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		sess, err := m.client.StartSession(options.Session().SetCausalConsistency(true))
		if err != nil {
			// Only a disconnected client or bad options get here; the
			// handler's own calls will report the client's state.
			m.logger.WarnContext(ctx, "consistency: starting a session", slog.Any("error", err))
			next.ServeHTTP(w, r)
			return
		}
		defer sess.EndSession(context.WithoutCancel(ctx))
		m.advance(ctx, sess, r.Header.Get(m.header))

		st := &requestState{sess: sess, codec: m.codec}
		ctx = context.WithValue(mongo.NewSessionContext(ctx, sess), stateKey{}, st)
		tw := &tokenWriter{ResponseWriter: w, m: m, st: st, ctx: ctx}
		next.ServeHTTP(tw, r.WithContext(ctx))
		tw.stamp() // a handler that wrote nothing: the header is still open
	})
}

// advance moves sess to the position in the token s, if s verifies.
func (m *Middleware) advance(ctx context.Context, sess *mongo.Session, s string) {
	if s == "" {
		m.tokens.Add(ctx, 1, m.attrs[resultMissing])
		return
	}
	t, err := m.codec.Decode(s)
	if err != nil {
		result := resultMalformed
		switch {
		case errors.Is(err, ErrTokenForged):
			result = resultForged
		case errors.Is(err, ErrTokenExpired):
			result = resultExpired
		}
		m.tokens.Add(ctx, 1, m.attrs[result])
		m.logger.DebugContext(ctx, "consistency: causal token ignored", slog.String("result", result), slog.Any("error", err))
		return
	}
	if len(t.ClusterTime) > 0 {
		err = sess.AdvanceClusterTime(t.ClusterTime)
	}
	if err == nil && t.OperationTime != nil {
		err = sess.AdvanceOperationTime(t.OperationTime)
	}
	if err != nil {
		m.tokens.Add(ctx, 1, m.attrs[resultRefused])
		m.logger.DebugContext(ctx, "consistency: causal token refused by the session", slog.Any("error", err))
		return
	}
	m.tokens.Add(ctx, 1, m.attrs[resultAccepted])
}

// tokenWriter adds the token to the response header just before the header
// is sent: at WriteHeader, at the first Write, at Flush, or when the handler
// returns having written nothing.
type tokenWriter struct {
	http.ResponseWriter
	m       *Middleware
	st      *requestState
	ctx     context.Context
	stamped bool
}

func (w *tokenWriter) stamp() {
	if w.stamped {
		return
	}
	w.stamped = true
	if s, ok := w.st.token(); ok {
		w.ResponseWriter.Header().Set(w.m.header, s)
		w.m.tokens.Add(w.ctx, 1, w.m.attrs[resultIssued])
	}
}

// WriteHeader adds the token, unless code is informational (1xx other than
// 101), whose headers go out before the final ones.
func (w *tokenWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.stamp()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *tokenWriter) Write(b []byte) (int, error) {
	w.stamp()
	return w.ResponseWriter.Write(b)
}

// Flush sends the header, with the token, and any buffered body.
func (w *tokenWriter) Flush() {
	w.stamp()
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack implements http.Hijacker, which websocket libraries assert on the
// ResponseWriter they are given. The connection is handed over as it is:
// the handler writes its own response, so no token is added.
func (w *tokenWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.stamped = true // the header is no longer ours to write
	}
	return conn, rw, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *tokenWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

var (
	_ http.Flusher  = (*tokenWriter)(nil)
	_ http.Hijacker = (*tokenWriter)(nil)
)
