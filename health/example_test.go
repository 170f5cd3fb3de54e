package health_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/activekit/activekit/health"
	"github.com/activekit/activekit/observability"
)

// A registry with a dependency check (readiness), a warning (readiness,
// never failing it) and a process check (liveness), served as the three
// views an orchestrator probes.
func ExampleRegistry() {
	id, err := observability.NewIdentity(observability.IdentityConfig{
		ServiceName:    "orders",
		ServiceVersion: "1.4.2",
		InstanceID:     "orders-0",
	})
	if err != nil {
		panic(err)
	}
	reg, err := health.NewRegistry(
		health.WithIdentity(id),
		health.WithConfigHash(func() string { return "sha256:9f86d0" }),
	)
	if err != nil {
		panic(err)
	}
	// In a real service these checks come from the clients' packages.
	_ = reg.Register(health.Check{
		Name:          "mongodb:ping",
		ComponentType: "datastore",
		Timeout:       500 * time.Millisecond,
		Interval:      2 * time.Second,
		Func: func(ctx context.Context) error {
			return errors.New("server selection timeout")
		},
	})
	_ = reg.Register(health.Check{
		Name: "config:reload",
		Func: func(ctx context.Context) error {
			return health.Warn(errors.New("change rejected, running the last good config"))
		},
	})
	_ = reg.Register(health.Check{
		Name:  "eventloop:lag",
		Views: health.Liveness,
		Result: func(ctx context.Context) health.Result {
			return health.Result{ObservedValue: 2, ObservedUnit: "ms"}
		},
	})
	reg.MarkStarted() // Lifecycle.Run does this once the servers listen

	mux := http.NewServeMux()
	mux.Handle("GET /livez", reg.Handler(health.Liveness))
	mux.Handle("GET /readyz", reg.Handler(health.Readiness))
	mux.Handle("GET /startupz", reg.Handler(health.Startup))

	for _, path := range []string{"/livez", "/readyz", "/startupz"} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		var resp health.Response
		if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
			panic(err)
		}
		fmt.Println(path, rec.Code, rec.Header().Get("Content-Type"), resp.Status, resp.ServiceID, resp.ConfigHash)
		for _, name := range []string{"eventloop:lag", "mongodb:ping", "config:reload"} {
			if cs, ok := resp.Checks[name]; ok {
				line := fmt.Sprintf("  %s %s", name, cs[0].Status)
				if cs[0].Output != "" {
					line += " " + cs[0].Output
				}
				fmt.Println(line)
			}
		}
	}
	// Output:
	// /livez 200 application/health+json pass orders-0 sha256:9f86d0
	//   eventloop:lag pass
	// /readyz 503 application/health+json fail orders-0 sha256:9f86d0
	//   mongodb:ping fail server selection timeout
	//   config:reload warn change rejected, running the last good config
	// /startupz 200 application/health+json pass orders-0 sha256:9f86d0
}

// A service run from start to stop. In main, pass the process context and
// leave Signal nil: SIGTERM and SIGINT then start the drain. Here the
// context is cancelled once the instance has served a request.
func ExampleLifecycle() {
	reg, err := health.NewRegistry()
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /readyz", reg.Handler(health.Readiness))
	mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	base := "http://" + ln.Addr().String()

	closer := func(what string) func(context.Context) error {
		return func(context.Context) error { fmt.Println(what); return nil }
	}
	lc := health.Lifecycle{
		Registry: reg,
		Servers: []health.Server{{
			HTTP:     &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
			Listener: ln,
		}},
		DrainDelay:      10 * time.Millisecond, // in production: seconds
		ShutdownTimeout: time.Second,
		CloseTimeout:    time.Second,
		OnStarted:       []func(context.Context) error{closer("registered in discovery")},
		OnDrain:         []func(context.Context) error{closer("discovery check critical")},
		// Closed in reverse: the last registered first.
		Closers: []health.Closer{
			{Name: "redis", Close: closer("redis client closed")},
			{Name: "telemetry", Close: closer("telemetry flushed")},
			{Name: "discovery", Close: closer("deregistered")},
		},
	}

	ctx, stop := context.WithCancel(context.Background())
	go func() {
		defer stop() // stands in for SIGTERM
		for {
			resp, err := http.Get(base + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			<-time.After(time.Millisecond) // poll again
		}
		resp, err := http.Get(base + "/hello")
		if err != nil {
			panic(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println("served:", string(body))
	}()

	err = lc.Run(ctx)
	fmt.Println("stopped:", err)
	// Output:
	// registered in discovery
	// served: hello
	// discovery check critical
	// deregistered
	// telemetry flushed
	// redis client closed
	// stopped: <nil>
}
