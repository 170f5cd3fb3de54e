package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/config"
	"github.com/activekit/activekit/config/consulsource"
	"github.com/activekit/activekit/health"
	"github.com/activekit/activekit/observability"
)

// EnvPrefix starts the environment variable of every setting:
// ACTIVEKIT_REDIS_ADDR sets redis_addr. It is the prefix scripts/services
// uses too, so `eval "$(scripts/services env)"` points the service at the
// test servers. Copy the template under your own prefix.
const EnvPrefix = "ACTIVEKIT_"

// Config is the configuration of one instance. Every instance of the fleet
// should run the same one; its hash is in every /readyz answer and in the
// Consul registration, so that drift shows.
//
// Each field is a setting named by its json tag, set, from lowest to
// highest precedence, by the defaults, Consul KV (<consul_prefix>/<name>,
// when consul_addr is set), the environment (ACTIVEKIT_<NAME>) and the
// command line (-<name> with '-' for '_'). Fields tagged config:"restart"
// are read at boot only: a change of one in Consul is refused, the instance
// keeps its configuration and reports warn in /readyz until restarted.
type Config struct {
	Listen        string `json:"listen" config:"restart" help:"address to listen on (host:port; port 0 picks a free one)"`
	AdvertiseHost string `json:"advertise_host" config:"restart" help:"host registered in Consul (default: the listen host, or the host name)"`

	RedisAddr           string        `json:"redis_addr" config:"restart" help:"Redis address; comma-separated: Cluster seeds, or Sentinels with redis_sentinel_master"`
	RedisSentinelMaster string        `json:"redis_sentinel_master" config:"restart" help:"Sentinel master name (redis_addr then lists the Sentinels)"`
	RedisUsername       string        `json:"redis_username" config:"restart" help:"Redis ACL user name (empty: the default user)"`
	RedisPassword       config.Secret `json:"redis_password" config:"restart" help:"Redis password of the data nodes, not of Sentinels (set it through the environment or Consul, not a flag; never logged)"`
	RedisTLS            bool          `json:"redis_tls" config:"restart" help:"connect to Redis over TLS 1.2+, verifying its certificate against the system roots"`
	RedisTimeout        time.Duration `json:"redis_timeout" config:"restart" help:"dial, read and write timeout of each Redis call: how long a user waits for a 503 when this instance loses Redis"`
	SessionPrefix       string        `json:"session_prefix" config:"restart" help:"prefix of the session keys in Redis"`
	InsecureCookie      bool          `json:"insecure_cookie" config:"restart" help:"send the session cookie over plain HTTP (development only)"`

	DrainDelay      time.Duration `json:"drain_delay" config:"restart" help:"how long /readyz fails before the server stops (>= load balancer interval x fall)"`
	ShutdownTimeout time.Duration `json:"shutdown_timeout" config:"restart" help:"how long requests in flight may take to finish"`
	CloseTimeout    time.Duration `json:"close_timeout" config:"restart" help:"how long closing clients and flushing telemetry may take"`
	GracePeriod     time.Duration `json:"grace_period" config:"restart" help:"time between SIGTERM and SIGKILL granted by the orchestrator"`

	ConsulAddr   string        `json:"consul_addr" config:"restart" help:"Consul agent (host:port); empty: no Consul"`
	ConsulPrefix string        `json:"consul_prefix" config:"restart" help:"Consul KV prefix of this configuration (default service/<name>/config)"`
	ConsulTTL    time.Duration `json:"consul_ttl" config:"restart" help:"TTL of the Consul heartbeat check"`

	TracesExporter  observability.Exporter `json:"traces_exporter" config:"restart" help:"none, otlp-grpc, otlp-http or stdout"`
	MetricsExporter observability.Exporter `json:"metrics_exporter" config:"restart" help:"none, otlp-grpc, otlp-http, stdout or prometheus (served on /metrics)"`
	OTLPEndpoint    string                 `json:"otlp_endpoint" config:"restart" help:"OTLP receiver base URL (default: the OTEL_EXPORTER_OTLP_* variables)"`

	// Changeable at run time through Consul.
	LogLevel slog.Level `json:"log_level" help:"debug, info, warn or error"`
	Greeting string     `json:"greeting" help:"what GET / says"`
}

// defaults returns the configuration an instance runs with when nothing
// else is set.
func defaults() Config {
	return Config{
		Listen:          ":8080",
		RedisAddr:       "127.0.0.1:6379",
		RedisTimeout:    time.Second,
		SessionPrefix:   "visits:session:",
		DrainDelay:      health.DefaultDrainDelay,
		ShutdownTimeout: health.DefaultShutdownTimeout,
		CloseTimeout:    health.DefaultCloseTimeout,
		GracePeriod:     health.DefaultGracePeriod,
		ConsulTTL:       10 * time.Second,
		LogLevel:        slog.LevelInfo,
		Greeting:        "hello",
	}
}

// Validate is called by the config store before a configuration is used,
// at boot and on every change.
func (c *Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen %q: %w", c.Listen, err))
	}
	if len(redisAddrs(c.RedisAddr)) == 0 {
		errs = append(errs, errors.New("redis_addr is empty"))
	}
	if c.RedisTimeout <= 0 {
		errs = append(errs, fmt.Errorf("redis_timeout %v is not positive", c.RedisTimeout))
	}
	if strings.ContainsAny(c.SessionPrefix, "{}") {
		errs = append(errs, fmt.Errorf("session_prefix %q contains a brace", c.SessionPrefix))
	}
	if c.ConsulAddr != "" {
		if _, _, err := net.SplitHostPort(c.ConsulAddr); err != nil {
			errs = append(errs, fmt.Errorf("consul_addr %q: %w", c.ConsulAddr, err))
		}
	}
	// Checked here, not only by consul.NewRegistry when serve registers:
	// a bad value fails the build, before the instance listens.
	if c.ConsulTTL < 0 || c.ConsulTTL > 0 && c.ConsulTTL < time.Second {
		errs = append(errs, fmt.Errorf("consul_ttl %v is below 1s", c.ConsulTTL))
	}
	// The lifecycle checks these again at serve; checked here too, so that
	// a change in Consul that would make every instance of the next
	// rolling restart refuse to start is refused now, where it is made.
	if err := health.CheckShutdownBudget(c.DrainDelay, c.ShutdownTimeout, c.CloseTimeout, c.GracePeriod); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func redisAddrs(s string) []string {
	var out []string
	for a := range strings.SplitSeq(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// setting is one field of Config as the sources name it.
type setting struct {
	key  string // json name: the key in Consul and in the config tree
	help string
	bool bool
}

func settings() []setting {
	t := reflect.TypeFor[Config]()
	out := make([]setting, 0, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		out = append(out, setting{key: f.Tag.Get("json"), help: f.Tag.Get("help"), bool: f.Type.Kind() == reflect.Bool})
	}
	return out
}

// envName is the environment variable of a setting.
func envName(key string) string { return EnvPrefix + strings.ToUpper(key) }

// parseFlags parses args into a layer holding the settings given on the
// command line, and nothing else, so that an absent flag does not override
// the environment.
func parseFlags(args []string, out io.Writer) (map[string]any, error) {
	fs := flag.NewFlagSet("service", flag.ContinueOnError)
	fs.SetOutput(out)
	layer := map[string]any{}
	for _, s := range settings() {
		name := strings.ReplaceAll(s.key, "_", "-")
		help := s.help + " (" + envName(s.key) + ")"
		set := func(v string) error { layer[s.key] = v; return nil }
		if s.bool {
			fs.BoolFunc(name, help, set)
		} else {
			fs.Func(name, help, set)
		}
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return layer, nil
}

// environ returns the service's variables, and only those, from getenv,
// in the form config.Env reads.
func environ(getenv func(string) string) func() []string {
	return func() []string {
		var env []string
		for _, s := range settings() {
			if v := getenv(envName(s.key)); v != "" {
				env = append(env, envName(s.key)+"="+v)
			}
		}
		return env
	}
}

// loadConfig builds the configuration store: defaults, then Consul KV when
// a Consul address is configured, then the environment, then the flags.
// The Consul address itself can only come from the environment or the
// flags, so they are read first, alone.
func loadConfig(ctx context.Context, service string, flags map[string]any, getenv func(string) string, consul func(addr string) (*api.Client, error), log *slog.Logger) (*config.Store[Config], *api.Client, error) {
	local := []config.Source{config.Env(EnvPrefix, environ(getenv)), config.Map("flags", flags)}
	boot, err := config.New(ctx, config.Options[Config]{Defaults: defaults(), Sources: local})
	if err != nil {
		return nil, nil, err
	}
	bc := boot.Load()
	_ = boot.Close()
	if bc.ConsulAddr == "" {
		store, err := config.New(ctx, config.Options[Config]{Defaults: defaults(), Sources: local, Logger: log})
		return store, nil, err
	}
	client, err := consul(bc.ConsulAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("consul client: %w", err)
	}
	prefix := bc.ConsulPrefix
	if prefix == "" {
		prefix = "service/" + service + "/config"
	}
	kv := consulsource.Prefix(client, prefix, consulsource.Optional(), consulsource.WithLogger(log))
	store, err := config.New(ctx, config.Options[Config]{
		Defaults: defaults(),
		Sources:  append([]config.Source{kv}, local...),
		Logger:   log,
	})
	if err != nil {
		return nil, nil, err
	}
	return store, client, nil
}

// redisOptions returns the Redis client's options from the configuration.
// The timeouts bound every call, so that an instance that loses Redis
// answers 503 within them rather than after go-redis's defaults (a 5s
// dial, 3s reads, 3 retries), and fails readiness soon enough for the
// balancer to drain it.
func redisOptions(c Config) *redis.UniversalOptions {
	o := &redis.UniversalOptions{
		Addrs:        redisAddrs(c.RedisAddr),
		MasterName:   c.RedisSentinelMaster,
		Username:     c.RedisUsername,
		Password:     c.RedisPassword.Reveal(),
		DialTimeout:  c.RedisTimeout,
		ReadTimeout:  c.RedisTimeout,
		WriteTimeout: c.RedisTimeout,
	}
	if c.RedisTLS {
		// No ServerName: crypto/tls verifies each node against the host
		// it dials, as Cluster and Sentinel announce several.
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return o
}
