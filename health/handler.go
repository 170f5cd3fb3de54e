package health

import (
	"encoding/json"
	"log/slog"
	"net/http"
)

// ContentType is the media type of health responses.
const ContentType = "application/health+json"

// Handler serves view as application/health+json: 200 for pass and warn,
// 503 for fail. It answers GET and HEAD, and 405 otherwise. Responses are
// not cacheable. view must be exactly one of Liveness, Readiness and
// Startup (any other value serves a fail).
//
// Mount the three views where the orchestrator probes them, for example
// /livez, /readyz and /startupz.
func (r *Registry) Handler(view View) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		resp := r.Report(req.Context(), view)
		body, err := json.Marshal(resp)
		if err != nil {
			// Only an ObservedValue that encoding/json rejects gets here.
			r.log.Error("health: encoding response", "view", view.String(), "error", err)
			body, _ = json.Marshal(Response{
				Status:    StatusFail,
				Output:    "encoding health response: " + err.Error(),
				ServiceID: resp.ServiceID,
				Version:   resp.Version,
			})
			resp.Status = StatusFail
		}
		body = append(body, '\n')
		h := w.Header()
		h.Set("Content-Type", ContentType)
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		code := http.StatusOK
		if resp.Status == StatusFail {
			code = http.StatusServiceUnavailable
		}
		w.WriteHeader(code)
		if req.Method == http.MethodGet {
			_, _ = w.Write(body)
		}
	})
}

func slogLevelFor(s Status) slog.Level {
	switch s {
	case StatusPass:
		return slog.LevelInfo
	case StatusWarn:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}
