package observability

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

// Log attribute keys the LogHandler adds when the context carries a valid
// span context.
const (
	TraceIDKey = "trace_id"
	SpanIDKey  = "span_id"
)

// LogHandler is an slog.Handler that adds the instance identity and the
// current trace and span IDs to every record, then passes it to an inner
// handler. With it, a log line from any instance can be told apart from the
// others (service.instance.id) and joined to the trace of the request that
// wrote it (trace_id), even when the request crossed several instances.
//
// The identity attributes and trace_id/span_id are always at the top level
// of the record, never inside a group opened with WithGroup. trace_id and
// span_id are added only when the context passed to Handle (for example
// through slog.InfoContext or Logger.Log) holds a valid span context.
//
// A LogHandler is safe for concurrent use when its inner handler is.
type LogHandler struct {
	// base is the inner handler with only the identity applied. It is
	// needed to put trace attributes at the top level when a group is
	// open: Handle then rebuilds the chain of WithAttrs/WithGroup calls on
	// top of it.
	base slog.Handler
	// handler is base with all WithAttrs/WithGroup calls applied.
	handler slog.Handler
	// ops are the WithAttrs/WithGroup calls made since the last group-free
	// point, replayed only while a group is open.
	ops      []logOp
	hasGroup bool
}

// logOp is one WithAttrs (group == "") or WithGroup call.
type logOp struct {
	group string
	attrs []slog.Attr
}

var _ slog.Handler = (*LogHandler)(nil)

// NewLogHandler returns a handler that adds id and the trace context to the
// records it passes to inner. A zero id adds no identity attributes.
func NewLogHandler(inner slog.Handler, id Identity) *LogHandler {
	base := inner
	if attrs := id.LogAttrs(); len(attrs) > 0 {
		base = inner.WithAttrs(attrs)
	}
	return &LogHandler{base: base, handler: base}
}

// Enabled reports whether the inner handler handles records at level.
func (h *LogHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.handler.Enabled(ctx, level)
}

// Handle adds trace_id and span_id when ctx holds a valid span context and
// passes the record on.
func (h *LogHandler) Handle(ctx context.Context, r slog.Record) error {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return h.handler.Handle(ctx, r)
	}
	traceAttrs := []slog.Attr{
		slog.String(TraceIDKey, sc.TraceID().String()),
		slog.String(SpanIDKey, sc.SpanID().String()),
	}
	if !h.hasGroup {
		// Record attributes land at the top level: add them there.
		r = r.Clone()
		r.AddAttrs(traceAttrs...)
		return h.handler.Handle(ctx, r)
	}
	// A group is open, so record attributes would land inside it. Put the
	// trace attributes on the group-free base and replay the rest.
	hh := h.base.WithAttrs(traceAttrs)
	for _, op := range h.ops {
		if op.group != "" {
			hh = hh.WithGroup(op.group)
		} else {
			hh = hh.WithAttrs(op.attrs)
		}
	}
	return hh.Handle(ctx, r)
}

// WithAttrs returns a handler whose records carry attrs, inside the groups
// opened so far.
func (h *LogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	next := h.handler.WithAttrs(attrs)
	if !h.hasGroup {
		// No group open: the attributes are top-level and need no replay.
		return &LogHandler{base: next, handler: next}
	}
	return &LogHandler{
		base:     h.base,
		handler:  next,
		ops:      appendOp(h.ops, logOp{attrs: attrs}),
		hasGroup: true,
	}
}

// WithGroup returns a handler that puts later attributes inside the group
// name. An empty name returns h, as slog requires.
func (h *LogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &LogHandler{
		base:     h.base,
		handler:  h.handler.WithGroup(name),
		ops:      appendOp(h.ops, logOp{group: name}),
		hasGroup: true,
	}
}

// appendOp appends without sharing the backing array between siblings.
func appendOp(ops []logOp, op logOp) []logOp {
	out := make([]logOp, len(ops), len(ops)+1)
	copy(out, ops)
	return append(out, op)
}
