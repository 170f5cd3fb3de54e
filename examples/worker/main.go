// Command worker is the consumer side of an active-active fleet, built the
// way every such worker should be: a template to copy. Any number of
// instances share one Kafka consumer group; each counts the orders of the
// com.example.order.placed events it is given, per customer, in Redis,
// exactly once per event however often the event is delivered and whichever
// instance dies, and announces each with a com.example.order.counted event.
// Events it cannot handle go to the dead-letter topic; it stops without
// losing or repeating an effect when it is told to (SIGTERM).
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
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/activekit/activekit/config"
	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/health"
	"github.com/activekit/activekit/observability"
)

// defaultServiceName names the service when OTEL_SERVICE_NAME does not.
const defaultServiceName = "order-counter"

// retention is how long an event is remembered as handled: by its dedupe
// record, and on a Redis Cluster by its count's mark (countOnce) too.
const retention = 7 * 24 * time.Hour

// startTimeout bounds each call the build makes to a dependency (the Redis
// ping, the topic preflight).
const startTimeout = 5 * time.Second

func main() {
	err := run(context.Background(), os.Args[1:], os.Getenv, os.Stdout)
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

// run runs one instance until SIGTERM, SIGINT or the end of ctx, then stops
// consuming, commits what it handled and closes; it returns nil after a
// clean stop. args are the command-line arguments without the program name,
// getenv reads the environment, and the JSON log goes to stdout. Tests call
// it in-process.
//
// It builds the instance (newWorker, steps 1 to 8), then serves it (serve,
// steps 9 and 10).
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	w, err := newWorker(ctx, args, getenv, stdout)
	if err != nil {
		return err
	}
	return w.serve(ctx)
}

// worker is one instance, built and not yet consuming: its subscriber and
// handler, its health registry and routes, and what it opened, to close in
// reverse order once it stops. It is an io.Closer, so a test can build one
// and close it without serving it.
type worker struct {
	id      observability.Identity
	log     *slog.Logger
	cfg     Config
	reg     *health.Registry
	routes  http.Handler
	rdb     redis.UniversalClient
	sub     *kafka.Subscriber
	handler events.Handler

	// closers is never empty once built; serve takes them over and Close
	// closes them, both leaving it nil: a served or closed instance.
	closers []health.Closer
}

// errDone is serve's answer for an instance already served or closed: its
// clients are closed.
var errDone = errors.New("worker: already served or closed")

// newWorker builds one instance (steps 1 to 8) without consuming or
// listening: run's args, getenv and stdout, and consumerOpts added to the
// options of the consumer's Kafka client (run passes none; a test adds a
// hook that counts the records fetched). When it fails, it closes what it
// opened.
func newWorker(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer, consumerOpts ...kgo.Opt) (_ *worker, err error) {
	flags, err := parseFlags(args, stdout)
	if err != nil {
		return nil, err
	}

	// 1. Identity: one value, computed once, in every log line, span and
	// health answer.
	name := getenv(observability.EnvServiceName)
	if name == "" {
		name = defaultServiceName
	}
	id, err := observability.NewIdentity(observability.IdentityConfig{ServiceName: name, Getenv: getenv})
	if err != nil {
		return nil, err
	}

	// 2. Logging: JSON, with the identity and the trace of the event.
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

	// 3. Configuration: defaults < environment < flags, validated before
	// use.
	store, err := loadConfig(ctx, flags, getenv, log)
	if err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	closers = append(closers, health.Closer{Name: "config", Close: func(context.Context) error { return store.Close() }})
	cfg := store.Load()
	level.Set(cfg.LogLevel)
	log.Info("configuration loaded", "hash", store.Hash())

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
	tracing := events.TracingConfig{TracerProvider: providers.TracerProvider, Propagator: providers.Propagator}

	// 5. Redis: the counters and the dedupe records, shared by the fleet.
	// One address is a server, several are a Cluster's seeds, or the
	// Sentinels with a master name. An instance that cannot reach it at
	// start refuses to start: it could handle no event.
	rdb := redis.NewUniversalClient(redisOptions(cfg))
	closers = append(closers, health.Closer{Name: "redis", Close: func(context.Context) error { return rdb.Close() }})
	pctx, cancel := context.WithTimeout(ctx, startTimeout)
	err = rdb.Ping(pctx).Err()
	cancel()
	if err != nil {
		return nil, fmt.Errorf("redis %s: %w", cfg.RedisAddr, err)
	}

	// 6. Dedupe on the subscriber's batch path: per partition and poll,
	// one round trip claims the events, one records them done.
	dstore, err := dedupe.NewRedisStore(rdb, dedupe.RedisConfig{Prefix: cfg.RedisPrefix + "dedupe:", Retention: retention})
	if err != nil {
		return nil, err
	}
	dd, err := dedupe.New(dstore, dedupe.Config{Group: cfg.Group, Lease: cfg.DedupeLease})
	if err != nil {
		return nil, err
	}

	// 7. Kafka: the topics' preflight, the follow-up publisher and the
	// subscriber. A topic that is missing or could lose acknowledged
	// events is a warning in /readyz, never a crash: the topics are
	// shared by the fleet.
	brokers := splitList(cfg.KafkaBrokers)
	kopts := kafkaOpts(cfg)
	admin, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, kopts...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka admin client: %w", err)
	}
	closers = append(closers, health.Closer{Name: "kafka admin", Close: func(context.Context) error { admin.Close(); return nil }})
	topicsErr := topicPreflight(ctx, kadm.NewClient(admin), cfg)
	if topicsErr != nil {
		log.Warn("kafka topics", "error", topicsErr)
	}
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: brokers, Topic: cfg.CountedTopic, Tracing: tracing, ClientOpts: kopts})
	if err != nil {
		return nil, err
	}
	closers = append(closers, health.Closer{Name: "kafka publisher", Close: func(context.Context) error { return pub.Close() }})
	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{
		Brokers:         brokers,
		Group:           cfg.Group,
		DeadLetterTopic: cfg.deadLetterTopic(),
		MaxPollRecords:  cfg.MaxPollRecords,
		ClientOpts:      slices.Concat(kopts, consumerOpts),
		Logger:          log,
		Batch:           dd,
	})
	if err != nil {
		return nil, err
	}
	_, cluster := rdb.(*redis.ClusterClient)
	c := &counter{store: dstore, prefix: cfg.RedisPrefix, source: "/" + id.ServiceName(), pub: pub, log: log,
		cluster: cluster, rdb: rdb, markTTL: retention}
	handler := events.Chain(c.handle, events.Tracing(tracing))

	// 8. Health: Redis gates readiness (never liveness: an outage must not
	// restart the fleet); the configuration and the topics only warn.
	reg, err := health.NewRegistry(health.WithIdentity(id), health.WithConfigHash(store.Hash), health.WithLogger(log))
	if err != nil {
		return nil, err
	}
	checks := []health.Check{{
		Name:          "redis:ping",
		ComponentType: "datastore",
		Func:          func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
		Timeout:       500 * time.Millisecond,
	}, {
		Name:          "config:status",
		ComponentType: "component",
		Interval:      -1,
		Result: func(ctx context.Context) health.Result {
			st := store.Status(ctx)
			res := health.Result{ObservedValue: st.Hash}
			if st.Level == config.LevelWarn {
				res.Status, res.Output = health.StatusWarn, st.Message
			}
			return res
		},
	}, {
		Name:          "kafka:topics",
		ComponentType: "component",
		Interval:      -1, // the result of the preflight at start
		Func:          func(context.Context) error { return health.Warn(topicsErr) },
	}}
	for _, ch := range checks {
		if err := reg.Register(ch); err != nil {
			return nil, err
		}
	}

	mux := http.NewServeMux()
	mux.Handle("GET /livez", reg.Handler(health.Liveness))
	mux.Handle("GET /readyz", reg.Handler(health.Readiness))
	mux.Handle("GET /startupz", reg.Handler(health.Startup))
	if m := tel.MetricsHandler(); m != nil {
		mux.Handle("GET /metrics", m)
	}

	return &worker{
		id:      id,
		log:     log,
		cfg:     cfg,
		reg:     reg,
		routes:  mux,
		rdb:     rdb,
		sub:     sub,
		handler: handler,
		closers: closers,
	}, nil
}

// topicPreflight checks the consumed, dead-letter and follow-up topics, or
// with create_topics creates those missing first, and returns what is wrong
// with them (nil when nothing is).
func topicPreflight(ctx context.Context, adm *kadm.Client, cfg Config) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	topics := []string{cfg.Topic, cfg.deadLetterTopic(), cfg.CountedTopic}
	var (
		report kafka.Report
		err    error
	)
	if cfg.CreateTopics {
		report, err = kafka.CreateTopics(ctx, adm, kafka.TopicSpec{Partitions: int32(cfg.Partitions)}, topics...)
	} else {
		report, err = kafka.Preflight(ctx, adm, topics...)
	}
	if err != nil {
		return fmt.Errorf("topic preflight: %w", err)
	}
	return report.Err()
}

// Close closes what the instance opened, in reverse order, for an instance
// that was built and not served: serve closes them itself.
func (w *worker) Close() error {
	closers := w.closers
	w.closers = nil
	return closeAll(closers)
}

// serve runs the instance (steps 9 and 10) until SIGTERM, SIGINT or the end
// of ctx, then stops consuming and closes what it opened; it returns nil
// after a clean stop, and the subscriber's error when the subscriber
// stopped on its own. It closes the instance on every path, and runs once:
// after serve or Close it returns errDone.
func (w *worker) serve(ctx context.Context) (err error) {
	if w.closers == nil {
		return errDone
	}
	log := w.log
	closers := w.closers
	w.closers = nil
	defer func() {
		if closers != nil {
			err = errors.Join(err, closeAll(closers))
		}
	}()

	// 9. Listen for the probes, and say where.
	ln, err := net.Listen("tcp", w.cfg.Listen)
	if err != nil {
		return err
	}
	log.Info("listening", "addr", ln.Addr().String())

	// 10. Consume from the moment the instance has started until the drain
	// begins, then finish the batch in hand, commit it and leave the group
	// (so that the partitions move to the other instances at once), and
	// only then close the clients. A subscriber that stops on its own
	// stops the instance, for the orchestrator to restart it.
	runCtx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	consumeCtx, stopConsuming := context.WithCancel(context.WithoutCancel(ctx))
	var consuming sync.WaitGroup
	stop := func(ctx context.Context) error {
		stopConsuming()
		done := make(chan struct{})
		go func() { consuming.Wait(); close(done) }()
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("consumer still running: %w", ctx.Err())
		}
	}
	closers = append(closers, health.Closer{Name: "consumer", Close: stop})
	lc := health.Lifecycle{
		Registry: w.reg,
		Servers: []health.Server{{
			HTTP: &http.Server{
				Handler:           w.routes,
				ReadHeaderTimeout: 5 * time.Second,
				ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
			},
			Listener: ln,
		}},
		DrainDelay:      w.cfg.DrainDelay,
		ShutdownTimeout: w.cfg.ShutdownTimeout,
		CloseTimeout:    w.cfg.CloseTimeout,
		GracePeriod:     w.cfg.GracePeriod,
		OnStarted: []func(context.Context) error{func(context.Context) error {
			consuming.Go(func() {
				log.Info("consuming", "topic", w.cfg.Topic, "group", w.cfg.Group)
				err := w.sub.Subscribe(consumeCtx, w.cfg.Topic, w.handler)
				if err == nil && consumeCtx.Err() == nil {
					err = errors.New("subscriber stopped")
				}
				if err != nil {
					log.Error("consuming stopped", "error", err)
					stopRun(fmt.Errorf("consuming %s: %w", w.cfg.Topic, err))
				}
			})
			return nil
		}},
		OnDrain: []func(context.Context) error{stop},
		Closers: closers,
		Logger:  log,
	}
	owned := closers
	closers = nil // the lifecycle closes them now
	err = lc.Run(runCtx)
	if errors.Is(err, health.ErrInvalidLifecycle) {
		// Refused before it started: it closed nothing.
		_ = ln.Close()
		return errors.Join(err, closeAll(owned))
	}
	if cause := context.Cause(runCtx); ctx.Err() == nil && cause != nil {
		err = errors.Join(cause, err)
	}
	return err
}

// closeAll runs closers in reverse order, for an instance the lifecycle did
// not take over: its build or start failed, or it was never served.
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
