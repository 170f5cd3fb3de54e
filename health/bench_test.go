package health_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/activekit/activekit/health"
)

// BenchmarkReadinessHandlerCached measures a readiness probe answered from
// cached results (the common case: probes arrive more often than the
// interval), with three checks.
func BenchmarkReadinessHandlerCached(b *testing.B) {
	r, err := health.NewRegistry(health.WithCheckDefaults(time.Second, time.Hour))
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"redis", "mongodb:ping", "kafka"} {
		if err := r.Register(health.Check{Name: name, Func: func(context.Context) error { return nil }}); err != nil {
			b.Fatal(err)
		}
	}
	r.MarkStarted()
	h := r.Handler(health.Readiness)
	req := httptest.NewRequest(http.MethodGet, "/readyz", nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != 200 {
				b.Fatal(rec.Code)
			}
		}
	})
}
