// Command service is a small HTTP service built the way every service of
// an active-active fleet should be: a template to copy. It counts visits per
// user session (GET /visits) with the session kept in Redis, so that the
// count goes on whichever instance serves the next request, and it stops
// without dropping a request when it is told to (SIGTERM).
//
// See README.md for what each piece does and why.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/config"
	"github.com/activekit/activekit/discovery"
	"github.com/activekit/activekit/discovery/consul"
	"github.com/activekit/activekit/health"
	"github.com/activekit/activekit/observability"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/redisstore"
)

// defaultServiceName names the service when OTEL_SERVICE_NAME does not.
const defaultServiceName = "visits"

func main() {
	err := run(context.Background(), os.Args[1:], os.Getenv, os.Stdout)
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "service:", err)
		os.Exit(1)
	}
}

// run runs one instance until SIGTERM, SIGINT or the end of ctx, then
// drains and stops it; it returns nil after a clean stop. args are the
// command-line arguments without the program name, getenv reads the
// environment, and the JSON log goes to stdout. Tests call it in-process.
//
// It builds the instance (newService, steps 1 to 7), then serves it
// (serve, steps 8 to 10).
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	svc, err := newService(ctx, args, getenv, stdout, redisSessions)
	if err != nil {
		return err
	}
	return svc.serve(ctx)
}

// service is one instance, built and not yet serving: the handler of its
// routes, and what it opened, to close in reverse order once it stops
// serving. It is an http.Handler and an io.Closer, so a test can serve it
// its own way (behind activetest's balancer) and close it after.
type service struct {
	http.Handler

	// What serve needs to listen, register and run the lifecycle.
	id     observability.Identity
	log    *slog.Logger
	store  *config.Store[Config] // what serve reads of it is restart-only
	reg    *health.Registry
	consul *api.Client // nil without Consul

	// closers is never empty once built; serve takes them over and Close
	// closes them, both leaving it nil: a served or closed instance.
	closers []health.Closer
}

// errDone is serve's answer for an instance already served or closed: its
// clients are closed, so it could only serve errors.
var errDone = errors.New("service: already served or closed")

// sessionStore opens the session store of an instance on its Redis client.
type sessionStore func(rdb redis.UniversalClient, cfg Config) (session.Store, error)

// redisSessions keeps the sessions in Redis, under session_prefix: any
// instance serves any user.
func redisSessions(rdb redis.UniversalClient, cfg Config) (session.Store, error) {
	return redisstore.New(rdb, redisstore.WithPrefix(cfg.SessionPrefix))
}

// newService builds one instance (steps 1 to 7) without listening: run's
// args, getenv and stdout, with its sessions in the store sessions opens
// (redisSessions; a test passes one kept in the instance's memory to show
// that its checks would catch it). With Consul, it starts the goroutine
// that follows the configuration, which Close stops. When it fails, it
// closes what it opened.
func newService(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer, sessions sessionStore) (_ *service, err error) {
	flags, err := parseFlags(args, stdout)
	if err != nil {
		return nil, err
	}

	// 1. Identity: one value, computed once, in every log line, span,
	// health answer and registration.
	name := getenv(observability.EnvServiceName)
	if name == "" {
		name = defaultServiceName
	}
	id, err := observability.NewIdentity(observability.IdentityConfig{ServiceName: name, Getenv: getenv})
	if err != nil {
		return nil, err
	}

	// 2. Logging: JSON, with the identity and the trace of the request.
	level := new(slog.LevelVar)
	log := slog.New(observability.NewLogHandler(slog.NewJSONHandler(stdout, &slog.HandlerOptions{Level: level}), id))

	// Everything opened from here on is closed in reverse order: by the
	// lifecycle once serve runs it, by Close, or by this deferred call if
	// the build fails.
	var closers []health.Closer
	defer func() {
		if err != nil {
			err = errors.Join(err, closeAll(closers))
		}
	}()

	// 3. Configuration: defaults < Consul KV < environment < flags,
	// validated before use; a bad change in Consul is refused and the
	// instance keeps the last good one.
	// The Consul client is closed as soon as it exists: reading the
	// configuration through it leaves a keep-alive connection (two
	// goroutines) open even when that configuration is then refused.
	store, consulClient, err := loadConfig(ctx, id.ServiceName(), flags, getenv, func(addr string) (*api.Client, error) {
		cc := api.DefaultConfig()
		cc.Address = addr
		tr := cc.Transport
		closers = append(closers, health.Closer{Name: "consul client", Close: func(context.Context) error {
			tr.CloseIdleConnections()
			return nil
		}})
		return api.NewClient(cc)
	}, log)
	if err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	closers = append(closers, health.Closer{Name: "config", Close: func(context.Context) error { return store.Close() }})
	cfg := store.Load()
	level.Set(cfg.LogLevel)
	store.Subscribe(func(_, c Config) { level.Set(c.LogLevel) })
	log.Info("configuration loaded", "hash", store.Hash(), "consul", cfg.ConsulAddr != "")

	// 4. Telemetry: providers built here and passed explicitly, no globals.
	tel, err := observability.Setup(ctx, observability.Config{
		Identity:     id,
		Traces:       cfg.TracesExporter,
		Metrics:      cfg.MetricsExporter,
		OTLPEndpoint: cfg.OTLPEndpoint,
	})
	if err != nil {
		return nil, err
	}
	// Closed after everything opened later, so that it flushes the spans
	// of their shutdown too.
	closers = append(closers, health.Closer{Name: "telemetry", Close: tel.Shutdown})
	providers := tel.Providers()

	// 5. Sessions in Redis: any instance serves any user.
	rdb := redis.NewUniversalClient(redisOptions(cfg))
	closers = append(closers, health.Closer{Name: "redis", Close: func(context.Context) error { return rdb.Close() }})
	st, err := sessions(rdb, cfg)
	if err != nil {
		return nil, err
	}
	sopts := []session.Option{session.WithLogger(log), session.WithMeterProvider(providers.MeterProvider)}
	if cfg.InsecureCookie {
		sopts = append(sopts, session.WithInsecureCookie())
	}
	mgr, err := session.NewManager(st, sopts...)
	if err != nil {
		return nil, err
	}

	// 6. Health: Redis gates readiness; the configuration and Consul only
	// warn, since they are shared by the whole fleet and failing readiness
	// on them would empty the load balancer at once.
	reg, err := health.NewRegistry(health.WithIdentity(id), health.WithConfigHash(store.Hash), health.WithLogger(log))
	if err != nil {
		return nil, err
	}
	checks := []health.Check{{
		Name:          "redis:ping",
		ComponentType: "datastore",
		Func:          redisstore.HealthCheck(rdb),
		Timeout:       500 * time.Millisecond,
	}, {
		Name:          "config:status",
		ComponentType: "component",
		Interval:      -1, // a read of an atomic pointer: no need to cache
		Result: func(ctx context.Context) health.Result {
			st := store.Status(ctx)
			res := health.Result{ObservedValue: st.Hash}
			if st.Level == config.LevelWarn {
				res.Status, res.Output = health.StatusWarn, st.Message
			}
			return res
		},
	}}
	if consulClient != nil {
		leader := consul.HealthCheck(consulClient)
		checks = append(checks, health.Check{
			Name:          "consul:leader",
			ComponentType: "component",
			Func:          func(ctx context.Context) error { return health.Warn(leader(ctx)) },
		})
	}
	for _, c := range checks {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}

	handler := routes(id, store, mgr, reg, providers, tel.MetricsHandler(), log)

	// 7. Consul follows the configuration while the instance runs.
	if consulClient != nil {
		watchCtx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
		var watching sync.WaitGroup
		watching.Go(func() {
			if err := store.Watch(watchCtx); err != nil && watchCtx.Err() == nil {
				log.Error("configuration watch ended", "error", err)
			}
		})
		closers = append(closers, health.Closer{Name: "config watch", Close: func(context.Context) error {
			stopWatch()
			watching.Wait()
			return nil
		}})
	}

	return &service{
		Handler: handler,
		id:      id,
		log:     log,
		store:   store,
		reg:     reg,
		consul:  consulClient,
		closers: closers,
	}, nil
}

// Close closes what the instance opened, in reverse order, for an instance
// that was built and not served: serve closes them itself.
func (s *service) Close() error {
	closers := s.closers
	s.closers = nil
	return closeAll(closers)
}

// serve serves the instance (steps 8 to 10) until SIGTERM, SIGINT or the
// end of ctx, then drains it and closes what it opened; it returns nil
// after a clean stop. It closes the instance on every path (Close after it
// does nothing), and runs once: after serve or Close it returns errDone.
func (s *service) serve(ctx context.Context) (err error) {
	if s.closers == nil {
		return errDone
	}
	cfg, log := s.store.Load(), s.log
	// The lifecycle closes them once it runs; this deferred call before.
	closers := s.closers
	s.closers = nil
	defer func() {
		if closers != nil {
			err = errors.Join(err, closeAll(closers))
		}
	}()

	// 8. Listen, and say where: with port 0 the kernel picks the port.
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	addr := ln.Addr().(*net.TCPAddr)
	log.Info("listening", "addr", addr.String())

	// 9. Consul registration (optional): registered once serving, critical
	// as soon as the drain starts, deregistered once stopped. Its meta
	// carries the hash of the configuration the instance runs, followed
	// at run time, so that the catalog shows drift.
	var onStarted, onDrain []func(context.Context) error
	if s.consul != nil {
		// mu orders the registration and the config hash updates, so
		// that the catalog ends with the latest hash.
		var (
			mu sync.Mutex
			g  *consul.Registration
		)
		host, err := advertiseHost(cfg, addr)
		if err != nil {
			_ = ln.Close()
			return err
		}
		hostPort := net.JoinHostPort(host, strconv.Itoa(addr.Port))
		dreg, err := consul.NewRegistry(s.consul, consul.RegistryConfig{
			TTL:       cfg.ConsulTTL,
			HTTPCheck: "http://" + hostPort + "/readyz",
			Version:   s.id.ServiceVersion(),
			Logger:    log,
		})
		if err != nil {
			_ = ln.Close()
			return err
		}
		inst := discovery.Instance{ID: s.id.InstanceID(), Service: s.id.ServiceName(), Address: host, Port: addr.Port}
		// Changes come one at a time, in order, from the watch's
		// goroutine; each sends the hash current then.
		unsubscribe := s.store.Subscribe(func(_, _ Config) {
			mu.Lock()
			defer mu.Unlock()
			if g == nil {
				return // not registered yet: the registration reads the hash
			}
			ctx, cancel := context.WithTimeout(context.Background(), consulMetaTimeout)
			defer cancel()
			switch err := g.SetMeta(ctx, consul.MetaConfigHash, s.store.Hash()); {
			case errors.Is(err, discovery.ErrClosed): // stopping
			case err != nil:
				log.Warn("config hash not updated in Consul yet: the heartbeat sends it", "error", err)
			}
		})
		onStarted = append(onStarted, func(ctx context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			inst.Meta = map[string]string{consul.MetaConfigHash: s.store.Hash()}
			r, err := dreg.RegisterInstance(ctx, inst)
			if err != nil {
				return err
			}
			g = r
			log.Info("registered in Consul", "service", inst.Service, "id", inst.ID)
			return nil
		})
		onDrain = append(onDrain, func(ctx context.Context) error {
			if g == nil {
				return nil
			}
			return g.SetCritical(ctx, "draining")
		})
		closers = append(closers, health.Closer{Name: "consul registration", Close: func(ctx context.Context) error {
			unsubscribe()
			if g == nil {
				return nil
			}
			return g.Close(ctx)
		}})
	}

	// 10. The lifecycle: serve, then on SIGTERM fail readiness, wait for
	// the load balancer to notice, finish the requests in flight, close.
	lc := health.Lifecycle{
		Registry: s.reg,
		Servers: []health.Server{{
			HTTP: &http.Server{
				Handler:           s.Handler,
				ReadHeaderTimeout: 5 * time.Second,
				// Longer than any load balancer's idle timeout, so that
				// the balancer, never the server, closes an idle
				// keep-alive connection (else a request sent as the
				// server closes it fails).
				IdleTimeout: 2 * time.Minute,
				ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelWarn),
			},
			Listener: ln,
		}},
		DrainDelay:      cfg.DrainDelay,
		ShutdownTimeout: cfg.ShutdownTimeout,
		CloseTimeout:    cfg.CloseTimeout,
		GracePeriod:     cfg.GracePeriod,
		OnStarted:       onStarted,
		OnDrain:         onDrain,
		Closers:         closers,
		Logger:          log,
	}
	owned := closers
	closers = nil // the lifecycle closes them now
	err = lc.Run(ctx)
	if errors.Is(err, health.ErrInvalidLifecycle) {
		// Refused before it started: it closed nothing.
		_ = ln.Close()
		err = errors.Join(err, closeAll(owned))
	}
	return err
}

// consulMetaTimeout bounds the wait of a config hash update for a
// heartbeat in flight; past it the heartbeat sends the hash.
const consulMetaTimeout = 2 * time.Second

// closeAll runs closers in reverse order, for an instance the lifecycle
// did not take over: its build or start failed, or it was never served.
func closeAll(closers []health.Closer) error {
	ctx, cancel := context.WithTimeout(context.Background(), health.DefaultCloseTimeout)
	defer cancel()
	var errs []error
	for i := len(closers) - 1; i >= 0; i-- {
		if err := closers[i].Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("closing %s: %w", closers[i].Name, err))
		}
	}
	return errors.Join(errs...)
}

// advertiseHost is the host other instances and the Consul agent reach this
// one at: advertise_host, else the listen host when it is a specific one,
// else the host name.
func advertiseHost(cfg Config, addr *net.TCPAddr) (string, error) {
	if cfg.AdvertiseHost != "" {
		return cfg.AdvertiseHost, nil
	}
	if !addr.IP.IsUnspecified() {
		return addr.IP.String(), nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("advertise host: set advertise_host: %w", err)
	}
	return h, nil
}
