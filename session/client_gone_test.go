package session_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/activekit/activekit/session"
)

// TestClientGoneIsNoStoreFailure: a client that goes away while its
// request reads the session cancels the request's context, and the store
// call fails with context.Canceled. That says nothing of the store: it is
// neither counted in session.errors nor logged as a store failure (at
// error level), where it would raise the alarms a store outage raises. A
// real failure still is.
func TestClientGoneIsNoStoreFailure(t *testing.T) {
	store, _ := newMem(t)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	var logs bytes.Buffer
	m := newManager(t, store, session.WithMeterProvider(mp),
		session.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	h := m.Middleware(app(t))
	c := &client{h: h}
	c.do(t, "GET", "/put?a=1")

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	r := httptest.NewRequestWithContext(ctx, "GET", "/get?k=a", nil)
	r.AddCookie(c.cookie)
	h.ServeHTTP(httptest.NewRecorder(), r)
	if n := storeErrors(t, reader); n != 0 {
		t.Errorf("session.errors = %d after a client went away, want 0", n)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("a client that went away is logged as an error: %s", logs.String())
	}

	store.fail.Store(true)
	defer store.fail.Store(false)
	c.do(t, "GET", "/get?k=a")
	if n := storeErrors(t, reader); n != 1 {
		t.Errorf("session.errors = %d after a store failure, want 1", n)
	}
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("a store failure is not logged as an error: %s", logs.String())
	}
}

func storeErrors(t *testing.T, reader *sdkmetric.ManualReader) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			if sum, ok := mt.Data.(metricdata.Sum[int64]); ok && mt.Name == "session.errors" {
				for _, dp := range sum.DataPoints {
					n += dp.Value
				}
			}
		}
	}
	return n
}
