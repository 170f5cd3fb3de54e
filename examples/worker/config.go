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

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/activekit/activekit/config"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/health"
	"github.com/activekit/activekit/observability"
)

// EnvPrefix starts the environment variable of every setting:
// ACTIVEKIT_REDIS_ADDR sets redis_addr. It is the prefix scripts/services
// uses too, so `eval "$(scripts/services env)"` points the worker at the
// test servers. Copy the template under your own prefix.
const EnvPrefix = "ACTIVEKIT_"

// Config is the configuration of one instance. Every instance of the fleet
// must run the same one (the same group, topics, prefixes and lease); its
// hash is in every /readyz answer, so that drift shows.
//
// Each field is a setting named by its json tag, set, from lowest to
// highest precedence, by the defaults, the environment (ACTIVEKIT_<NAME>)
// and the command line (-<name> with '-' for '_'). Every setting is read at boot: this template
// has no run-time source (see examples/service for Consul KV).
type Config struct {
	Listen string `json:"listen" help:"address of the health views (host:port; port 0 picks a free one)"`

	RedisAddr           string        `json:"redis_addr" help:"Redis address; comma-separated: Cluster seeds, or Sentinels with redis_sentinel_master"`
	RedisSentinelMaster string        `json:"redis_sentinel_master" help:"Sentinel master name (redis_addr then lists the Sentinels)"`
	RedisPrefix         string        `json:"redis_prefix" help:"prefix of every key the worker writes in Redis (counters and dedupe records)"`
	RedisUsername       string        `json:"redis_username" help:"Redis ACL user name (empty: the default user)"`
	RedisPassword       config.Secret `json:"redis_password" help:"Redis password of the data nodes, not of Sentinels (set it through the environment, not a flag; never logged)"`
	RedisTLS            bool          `json:"redis_tls" help:"connect to Redis over TLS 1.2+, verifying each node's certificate against the host dialed"`
	RedisTimeout        time.Duration `json:"redis_timeout" help:"dial, read and write timeout of each Redis call"`

	KafkaBrokers    string        `json:"kafka_brokers" help:"Kafka seed brokers, comma-separated"`
	KafkaTLS        bool          `json:"kafka_tls" help:"connect to the brokers over TLS 1.2+, verifying their certificates against the system roots"`
	KafkaSASL       string        `json:"kafka_sasl" help:"SASL mechanism: empty (none), scram-sha-256, scram-sha-512, or plain (only with kafka_tls)"`
	KafkaUsername   string        `json:"kafka_username" help:"SASL user name"`
	KafkaPassword   config.Secret `json:"kafka_password" help:"SASL password (set it through the environment, not a flag; never logged)"`
	Topic           string        `json:"topic" help:"topic the orders are consumed from"`
	Group           string        `json:"group" help:"consumer group of the fleet (and dedupe group)"`
	DeadLetterTopic string        `json:"dead_letter_topic" help:"where poison events go (default: <topic>.dlq)"`
	CountedTopic    string        `json:"counted_topic" help:"topic the follow-up events are published to"`
	CreateTopics    bool          `json:"create_topics" help:"create missing topics with durable settings at start (development)"`
	Partitions      int           `json:"partitions" help:"partitions of the topics create_topics makes"`
	DedupeLease     time.Duration `json:"dedupe_lease" help:"how long a claim holds before another instance may take the event over"`
	MaxPollRecords  int           `json:"max_poll_records" help:"records handled between two offset commits"`

	DrainDelay      time.Duration `json:"drain_delay" help:"how long /readyz fails before the worker stops consuming (negative: none; a worker takes no load balancer traffic)"`
	ShutdownTimeout time.Duration `json:"shutdown_timeout" help:"how long the batch in hand may take to finish and commit"`
	CloseTimeout    time.Duration `json:"close_timeout" help:"how long closing clients and flushing telemetry may take"`
	GracePeriod     time.Duration `json:"grace_period" help:"time between SIGTERM and SIGKILL granted by the orchestrator"`

	TracesExporter  observability.Exporter `json:"traces_exporter" help:"none, otlp-grpc, otlp-http or stdout"`
	MetricsExporter observability.Exporter `json:"metrics_exporter" help:"none, otlp-grpc, otlp-http, stdout or prometheus (served on /metrics)"`
	OTLPEndpoint    string                 `json:"otlp_endpoint" help:"OTLP receiver base URL (default: the OTEL_EXPORTER_OTLP_* variables)"`

	LogLevel slog.Level `json:"log_level" help:"debug, info, warn or error"`
}

// defaults returns the configuration an instance runs with when nothing
// else is set.
func defaults() Config {
	return Config{
		Listen:          ":8080",
		RedisAddr:       "127.0.0.1:6379",
		RedisPrefix:     "order-counter:",
		RedisTimeout:    time.Second,
		KafkaBrokers:    "127.0.0.1:9092",
		Topic:           "orders",
		Group:           "order-counter",
		CountedTopic:    "orders.counted",
		Partitions:      6,
		DedupeLease:     30 * time.Second,
		MaxPollRecords:  500,
		DrainDelay:      -1,
		ShutdownTimeout: health.DefaultShutdownTimeout,
		CloseTimeout:    health.DefaultCloseTimeout,
		GracePeriod:     health.DefaultGracePeriod,
		LogLevel:        slog.LevelInfo,
	}
}

// Validate is called by the config store before a configuration is used.
func (c *Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen %q: %w", c.Listen, err))
	}
	if len(splitList(c.RedisAddr)) == 0 {
		errs = append(errs, errors.New("redis_addr is empty"))
	}
	if strings.ContainsAny(c.RedisPrefix, "{}") {
		errs = append(errs, fmt.Errorf("redis_prefix %q contains a brace", c.RedisPrefix))
	}
	if c.RedisTimeout <= 0 {
		errs = append(errs, fmt.Errorf("redis_timeout %v is not positive", c.RedisTimeout))
	}
	if len(splitList(c.KafkaBrokers)) == 0 {
		errs = append(errs, errors.New("kafka_brokers is empty"))
	}
	switch c.KafkaSASL {
	case "":
		if c.KafkaUsername != "" || !c.KafkaPassword.IsZero() {
			errs = append(errs, errors.New("kafka_username or kafka_password is set without kafka_sasl"))
		}
	case saslPlain, saslSCRAM256, saslSCRAM512:
		if c.KafkaUsername == "" {
			errs = append(errs, fmt.Errorf("kafka_sasl %s needs kafka_username", c.KafkaSASL))
		}
		if c.KafkaSASL == saslPlain && !c.KafkaTLS {
			// PLAIN sends the password as it is: not over plain TCP.
			errs = append(errs, errors.New("kafka_sasl plain needs kafka_tls (it sends the password in the clear)"))
		}
	default:
		errs = append(errs, fmt.Errorf("kafka_sasl %q is not one of %s, %s, %s", c.KafkaSASL, saslSCRAM256, saslSCRAM512, saslPlain))
	}
	for _, s := range []struct{ name, v string }{{"topic", c.Topic}, {"group", c.Group}, {"counted_topic", c.CountedTopic}} {
		if s.v == "" {
			errs = append(errs, fmt.Errorf("%s is empty", s.name))
		}
	}
	if c.Topic != "" && (c.CountedTopic == c.Topic || c.deadLetterTopic() == c.Topic) {
		errs = append(errs, fmt.Errorf("topic %q is also the counted or dead-letter topic", c.Topic))
	}
	if c.Partitions < 1 || c.Partitions > maxPartitions {
		errs = append(errs, fmt.Errorf("partitions %d is not in [1, %d]", c.Partitions, maxPartitions))
	}
	// dedupe.New checks the lease too; checked here so that a bad value
	// is a configuration error, before anything is opened.
	if c.DedupeLease < time.Second {
		errs = append(errs, fmt.Errorf("dedupe_lease %v is below 1s", c.DedupeLease))
	}
	if c.MaxPollRecords < 1 {
		errs = append(errs, fmt.Errorf("max_poll_records %d is below 1", c.MaxPollRecords))
	}
	// The lifecycle checks the durations against the grace period itself.
	return errors.Join(errs...)
}

// maxPartitions bounds the partitions setting, which Kafka takes as an
// int32.
const maxPartitions = 100_000

// deadLetterTopic is dead_letter_topic, or the subscriber's default.
func (c *Config) deadLetterTopic() string {
	if c.DeadLetterTopic != "" {
		return c.DeadLetterTopic
	}
	return c.Topic + kafka.DefaultDeadLetterSuffix
}

func splitList(s string) []string {
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
	key  string // json name: the key in the config tree
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
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
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

// environ returns the worker's variables, and only those, from getenv, in
// the form config.Env reads.
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

// loadConfig builds the configuration store: defaults, then the
// environment, then the flags, validated before use.
func loadConfig(ctx context.Context, flags map[string]any, getenv func(string) string, log *slog.Logger) (*config.Store[Config], error) {
	return config.New(ctx, config.Options[Config]{
		Defaults: defaults(),
		Sources:  []config.Source{config.Env(EnvPrefix, environ(getenv)), config.Map("flags", flags)},
		Logger:   log,
	})
}

// The SASL mechanisms kafka_sasl names.
const (
	saslPlain    = "plain"
	saslSCRAM256 = "scram-sha-256"
	saslSCRAM512 = "scram-sha-512"
)

// redisOptions returns the Redis client's options from the configuration.
// The timeouts bound every call, so that an outage fails readiness and
// holds the partitions within them rather than after go-redis's defaults
// (a 5s dial, 3s reads, 3 retries).
func redisOptions(c Config) *redis.UniversalOptions {
	o := &redis.UniversalOptions{
		Addrs:        splitList(c.RedisAddr),
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

// kafkaOpts returns the franz-go options every Kafka client of the worker
// takes (the admin client, the publisher, the subscriber's): TLS and SASL.
func kafkaOpts(c Config) []kgo.Opt {
	var opts []kgo.Opt
	if c.KafkaTLS {
		opts = append(opts, kgo.DialTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
	}
	user, pass := c.KafkaUsername, c.KafkaPassword.Reveal()
	switch c.KafkaSASL {
	case saslPlain:
		opts = append(opts, kgo.SASL(plain.Auth{User: user, Pass: pass}.AsMechanism()))
	case saslSCRAM256:
		opts = append(opts, kgo.SASL(scram.Auth{User: user, Pass: pass}.AsSha256Mechanism()))
	case saslSCRAM512:
		opts = append(opts, kgo.SASL(scram.Auth{User: user, Pass: pass}.AsSha512Mechanism()))
	}
	return opts
}
