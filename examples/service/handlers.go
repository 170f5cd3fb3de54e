package main

import (
	"encoding/json"
	"log/slog"
	"net/http"

	"github.com/activekit/activekit/config"
	"github.com/activekit/activekit/health"
	"github.com/activekit/activekit/observability"
	"github.com/activekit/activekit/session"
)

// visitsKey is the session key of the visit counter.
const visitsKey = "visits"

// Visits is the answer of GET /visits.
type Visits struct {
	Visits   int    `json:"visits"`
	Instance string `json:"instance"`
}

// routes returns the service's handler. The health views are served
// outside the tracing and session middleware: probes come several times a
// second from every load balancer, and neither need a span nor a session.
func routes(id observability.Identity, store *config.Store[Config], mgr *session.Manager, reg *health.Registry, providers observability.Providers, metrics http.Handler, log *slog.Logger) http.Handler {
	app := http.NewServeMux()
	app.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"greeting": store.Load().Greeting, "instance": id.InstanceID()})
	})
	app.HandleFunc("GET /visits", func(w http.ResponseWriter, r *http.Request) {
		// A compare-and-set on the session key: two requests of one user
		// on two instances at once both count.
		var n int
		err := session.Update(session.FromContext(r.Context()), visitsKey, func(cur int, _ bool) (int, error) {
			n = cur + 1
			return n, nil
		})
		if err != nil {
			log.ErrorContext(r.Context(), "counting a visit", "error", err)
			w.Header().Set("Retry-After", "1")
			http.Error(w, "session store unavailable", http.StatusServiceUnavailable)
			return
		}
		log.DebugContext(r.Context(), "visit", "visits", n)
		writeJSON(w, http.StatusOK, Visits{Visits: n, Instance: id.InstanceID()})
	})

	root := http.NewServeMux()
	root.Handle("GET /livez", reg.Handler(health.Liveness))
	root.Handle("GET /readyz", reg.Handler(health.Readiness))
	root.Handle("GET /startupz", reg.Handler(health.Startup))
	if metrics != nil {
		root.Handle("GET /metrics", metrics)
	}
	root.Handle("/", observability.Middleware(providers)(mgr.Middleware(app)))
	return root
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
