package observability_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"testing/slogtest"

	"go.opentelemetry.io/otel/trace"

	"github.com/activekit/activekit/observability"
)

// parseJSONLines decodes one JSON object per line.
func parseJSONLines(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		if len(bytes.TrimSpace(s.Bytes())) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(s.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", s.Bytes(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestLogHandlerSlogtest(t *testing.T) {
	id := testIdentity(t)
	for _, withSpan := range []bool{false, true} {
		name := "without span"
		if withSpan {
			name = "with span"
		}
		t.Run(name, func(t *testing.T) {
			var buf *bytes.Buffer
			newHandler := func(t *testing.T) slog.Handler {
				buf = new(bytes.Buffer)
				var h slog.Handler = observability.NewLogHandler(slog.NewJSONHandler(buf, nil), id)
				if withSpan {
					h = spanContextHandler{h}
				}
				return h
			}
			result := func(t *testing.T) map[string]any {
				lines := parseJSONLines(t, buf.Bytes())
				if len(lines) != 1 {
					t.Fatalf("got %d lines, want 1: %s", len(lines), buf)
				}
				m := lines[0]
				// Identity (and trace IDs) at the top level of every record.
				if m["service.instance.id"] != "orders-7d9f-abcde" || m["service.name"] != "orders" {
					t.Errorf("record lacks the identity at top level: %v", m)
				}
				if withSpan && (m["trace_id"] != testSpanContext.TraceID().String() || m["span_id"] != testSpanContext.SpanID().String()) {
					t.Errorf("record lacks trace_id/span_id at top level: %v", m)
				}
				if !withSpan {
					if _, ok := m["trace_id"]; ok {
						t.Errorf("trace_id without a span: %v", m)
					}
				}
				return m
			}
			slogtest.Run(t, newHandler, result)
		})
	}
}

var testSpanContext = trace.NewSpanContext(trace.SpanContextConfig{
	TraceID:    trace.TraceID{0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c},
	SpanID:     trace.SpanID{0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31},
	TraceFlags: trace.FlagsSampled,
})

// spanContextHandler puts testSpanContext into the context of every record,
// as slogtest calls Handle with context.Background.
type spanContextHandler struct{ h slog.Handler }

func (s spanContextHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return s.h.Enabled(ctx, l)
}

func (s spanContextHandler) Handle(ctx context.Context, r slog.Record) error {
	return s.h.Handle(trace.ContextWithSpanContext(ctx, testSpanContext), r)
}

func (s spanContextHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return spanContextHandler{s.h.WithAttrs(as)}
}

func (s spanContextHandler) WithGroup(name string) slog.Handler {
	return spanContextHandler{s.h.WithGroup(name)}
}

func TestLogHandlerTopLevelInsideGroups(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(observability.NewLogHandler(slog.NewJSONHandler(&buf, nil), testIdentity(t)))
	ctx := trace.ContextWithSpanContext(context.Background(), testSpanContext)

	logger.With("a", 1).WithGroup("req").With("method", "GET").WithGroup("inner").InfoContext(ctx, "hello", "k", "v")
	logger.InfoContext(context.Background(), "no span")
	// An invalid span context adds nothing.
	logger.InfoContext(trace.ContextWithSpanContext(context.Background(), trace.SpanContext{}), "invalid span")

	lines := parseJSONLines(t, buf.Bytes())
	if len(lines) != 3 {
		t.Fatalf("got %d lines: %s", len(lines), buf.String())
	}
	m := lines[0]
	if m["trace_id"] != "0af7651916cd43dd8448eb211c80319c" || m["span_id"] != "b7ad6b7169203331" {
		t.Errorf("trace ids not at top level: %v", m)
	}
	if m["service.name"] != "orders" || m["deployment.environment.name"] != "production" {
		t.Errorf("identity not at top level: %v", m)
	}
	if m["a"] != float64(1) {
		t.Errorf("a = %v", m["a"])
	}
	req, _ := m["req"].(map[string]any)
	if req == nil || req["method"] != "GET" {
		t.Fatalf("req group = %v", m["req"])
	}
	inner, _ := req["inner"].(map[string]any)
	if inner == nil || inner["k"] != "v" {
		t.Fatalf("inner group = %v", req["inner"])
	}
	if _, ok := req["trace_id"]; ok {
		t.Errorf("trace_id leaked into a group: %v", req)
	}
	if _, ok := inner["trace_id"]; ok {
		t.Errorf("trace_id leaked into a group: %v", inner)
	}
	for i, l := range lines[1:] {
		if _, ok := l["trace_id"]; ok {
			t.Errorf("line %d has trace_id without a valid span: %v", i+1, l)
		}
		if l["service.instance.id"] != "orders-7d9f-abcde" {
			t.Errorf("line %d lacks identity: %v", i+1, l)
		}
	}
}

func TestLogHandlerSiblingsDoNotShareState(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(observability.NewLogHandler(slog.NewJSONHandler(&buf, nil), observability.Identity{}))
	g := base.WithGroup("g")
	a := g.With("x", "a")
	b := g.With("x", "b")
	ctx := trace.ContextWithSpanContext(context.Background(), testSpanContext)
	a.InfoContext(ctx, "a")
	b.InfoContext(ctx, "b")
	lines := parseJSONLines(t, buf.Bytes())
	if len(lines) != 2 {
		t.Fatalf("lines: %s", buf.String())
	}
	for i, want := range []string{"a", "b"} {
		g, _ := lines[i]["g"].(map[string]any)
		if g == nil || g["x"] != want {
			t.Errorf("line %d group = %v, want x=%s", i, lines[i]["g"], want)
		}
		if _, ok := lines[i]["service.name"]; ok {
			t.Errorf("zero identity added service.name: %v", lines[i])
		}
		if lines[i]["trace_id"] == nil {
			t.Errorf("line %d lacks trace_id", i)
		}
	}
}

func TestLogHandlerEnabled(t *testing.T) {
	h := observability.NewLogHandler(slog.NewJSONHandler(new(bytes.Buffer), &slog.HandlerOptions{Level: slog.LevelWarn}), testIdentity(t))
	if h.Enabled(context.Background(), slog.LevelInfo) {
		t.Error("info enabled under a warn handler")
	}
	if !h.Enabled(context.Background(), slog.LevelError) {
		t.Error("error disabled under a warn handler")
	}
}
