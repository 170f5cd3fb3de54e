package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/health"
	"github.com/activekit/activekit/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait bounds every wait of the tests for something the fleet does.
const wait = 30 * time.Second

// logSink is the stdout of an in-process instance: it keeps the JSON log
// lines and reports the address the instance listens on.
type logSink struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines []map[string]any
	addr  chan string // receives the "listening" address once
}

func newSink() *logSink { return &logSink{addr: make(chan string, 1)} }

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	for {
		line, err := s.buf.ReadBytes('\n')
		if err != nil { // an incomplete line: keep it for the next write
			s.buf.Write(line)
			return len(p), nil
		}
		var m map[string]any
		if json.Unmarshal(line, &m) != nil {
			m = map[string]any{"raw": string(line)}
		}
		s.lines = append(s.lines, m)
		if m["msg"] == "listening" {
			if a, ok := m["addr"].(string); ok {
				select {
				case s.addr <- a:
				default:
				}
			}
		}
	}
}

// count returns how many log lines have msg.
func (s *logSink) count(msg string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.lines {
		if l["msg"] == msg {
			n++
		}
	}
	return n
}

// errors returns the log lines at level ERROR.
func (s *logSink) errors() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range s.lines {
		if l["level"] == "ERROR" {
			out = append(out, l)
		}
	}
	return out
}

// fixture is one test's Kafka (kfake, in-process), Redis key prefix and
// topics, and the environment of its instances.
type fixture struct {
	kf        *kfake.Cluster
	brokers   []string
	adm       *kadm.Client
	redisAddr string // ACTIVEKIT_REDIS_ADDR of the instances
	rdb       redis.UniversalClient
	prefix    string // of every Redis key the instances write
	topic     string
	group     string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureOn(t, false)
}

// newFixtureOn is newFixture with the instances on a Redis Cluster when
// cluster is set (ACTIVEKIT_REDIS_CLUSTER), else on a standalone Redis.
func newFixtureOn(t *testing.T, cluster bool) *fixture {
	t.Helper()
	kf := testenv.KFake(t)
	brokers := kf.ListenAddrs()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	name := testenv.Name(t)
	f := &fixture{
		kf: kf, brokers: brokers, adm: kadm.NewClient(cl),
		prefix: name + ":", topic: name, group: name + "-g",
	}
	if cluster {
		f.redisAddr, f.rdb = strings.Join(testenv.RedisClusterAddrs(t), ","), testenv.RedisCluster(t)
	} else {
		f.redisAddr, f.rdb = testenv.RedisAddr(t), testenv.Redis(t)
	}
	testenv.CleanupRedisPrefix(t, f.rdb, f.prefix)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := kafka.CreateTopics(ctx, f.adm, kafka.TopicSpec{Partitions: 6}, f.topic, f.dlq(), f.counted()); err != nil {
		t.Fatalf("creating topics: %v", err)
	}
	return f
}

func (f *fixture) dlq() string     { return f.topic + kafka.DefaultDeadLetterSuffix }
func (f *fixture) counted() string { return f.topic + ".counted" }

// env is the whole environment of an instance of the fixture.
func (f *fixture) env(t *testing.T, instanceID string) map[string]string {
	return map[string]string{
		"ACTIVEKIT_INSTANCE_ID":   instanceID,
		"ACTIVEKIT_LISTEN":        "127.0.0.1:0",
		"ACTIVEKIT_REDIS_ADDR":    f.redisAddr,
		"ACTIVEKIT_REDIS_PREFIX":  f.prefix,
		"ACTIVEKIT_KAFKA_BROKERS": strings.Join(f.brokers, ","),
		"ACTIVEKIT_TOPIC":         f.topic,
		"ACTIVEKIT_GROUP":         f.group,
		"ACTIVEKIT_COUNTED_TOPIC": f.counted(),
		"ACTIVEKIT_LOG_LEVEL":     "info",
	}
}

// publish publishes orders to the fixture's topic.
func (f *fixture) publish(t *testing.T, es ...events.Event) {
	t.Helper()
	if err := f.publishErr(es...); err != nil {
		t.Fatalf("publishing orders: %v", err)
	}
}

// publishErr is publish for a goroutine other than the test's.
func (f *fixture) publishErr(es ...events.Event) error {
	p, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: f.brokers, Topic: f.topic})
	if err != nil {
		return err
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for len(es) > 0 {
		b := es[:min(500, len(es))]
		es = es[len(b):]
		if err := p.Publish(ctx, b...); err != nil {
			return err
		}
	}
	return nil
}

// orders returns n order events for customers customers, with the count of
// orders each customer should end with.
func orders(n, customers int) ([]events.Event, map[string]int) {
	es := make([]events.Event, n)
	want := map[string]int{}
	for i := range es {
		o := Order{Order: "o-" + strconv.Itoa(i), Customer: "c-" + strconv.Itoa(i%customers)}
		data, _ := json.Marshal(o)
		es[i] = events.New("/shop", TypeOrderPlaced, data)
		es[i].Subject = o.Customer
		es[i].DataContentType = "application/json"
		want[o.Customer]++
	}
	return es, want
}

// counters returns the counter of each customer of want, as the instances
// left it in Redis.
func (f *fixture) counters(t *testing.T, want map[string]int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for c := range want {
		n, err := f.rdb.Get(context.Background(), counterKey(f.prefix, c)).Int()
		if err != nil && err != redis.Nil {
			t.Fatal(err)
		}
		got[c] = n
	}
	return got
}

// waitCounted waits until every counter of want is reached, and fails
// when one is above it or when they are not reached within wait.
func (f *fixture) waitCounted(t *testing.T, want map[string]int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		got := f.counters(t, want)
		done := true
		for c, n := range want {
			if got[c] > n {
				t.Fatalf("customer %s counted %d orders, want %d: an order was counted twice", c, got[c], n)
			}
			done = done && got[c] == n
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("counters not reached within %v: got %v, want %v", wait, got, want)
		}
		time.Sleep(20 * time.Millisecond) // polling Redis, which has no change feed
	}
}

// readAll reads every record of topic, up to its end offsets now.
func (f *fixture) readAll(t *testing.T, topic string) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ends, err := f.adm.ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	ends.Each(func(o kadm.ListedOffset) { total += o.Offset })
	cl, err := kgo.NewClient(kgo.SeedBrokers(f.brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	for int64(len(out)) < total {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records of %s", len(out), total, topic)
		}
		out = append(out, fs.Records()...)
	}
	return out
}

// followUps decodes the follow-up events of the fixture, by ID, with how
// many records each has.
func (f *fixture) followUps(t *testing.T) (map[string]events.Event, int) {
	t.Helper()
	rs := f.readAll(t, f.counted())
	out := map[string]events.Event{}
	for _, r := range rs {
		e, err := kafka.Decode(r)
		if err != nil {
			t.Fatalf("follow-up at offset %d: %v", r.Offset, err)
		}
		out[e.ID] = e
	}
	return out, len(rs)
}

// checkFollowUps checks that every order has its follow-up, with the ID
// derived from the order's, and nothing else is there.
func (f *fixture) checkFollowUps(t *testing.T, es []events.Event) (records int) {
	t.Helper()
	got, records := f.followUps(t)
	for _, e := range es {
		fu, ok := got[countedID(e.Source, e.ID)]
		if !ok {
			t.Fatalf("order event %s has no follow-up", e.ID)
		}
		var o, fo Order
		_ = json.Unmarshal(e.Data, &o)
		if err := json.Unmarshal(fu.Data, &fo); err != nil || fo != o || fu.Type != TypeOrderCounted || fu.Subject != o.Customer {
			t.Fatalf("follow-up of %s: %s %s %s, want %s of %+v", e.ID, fu.Type, fu.Subject, fu.Data, TypeOrderCounted, o)
		}
	}
	if len(got) != len(es) {
		t.Fatalf("%d distinct follow-ups for %d orders", len(got), len(es))
	}
	return records
}

// instance is one worker run in-process by run.
type instance struct {
	log    *logSink
	base   string
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// stop cancels the instance's context (its SIGTERM) and returns what serve
// returned.
func (in *instance) stop() error {
	in.once.Do(func() {
		in.cancel()
		in.err = <-in.done
	})
	return in.err
}

// get returns the status and body of GET url.
func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp.StatusCode, body
}

// healthOf returns the status code and decoded body of a health view.
func healthOf(t *testing.T, url string) (int, health.Response) {
	t.Helper()
	code, body := get(t, url)
	var r health.Response
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("GET %s: %d %q: %v", url, code, body, err)
	}
	return code, r
}

// eventually polls cond every 10ms until it is true, or fails after d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(d)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%s: not within %v", what, d)
		}
	}
}

func fmtChecks(r health.Response) string {
	var b bytes.Buffer
	for name, cs := range r.Checks {
		fmt.Fprintf(&b, " %s=%s", name, cs[0].Status)
		if cs[0].Output != "" {
			fmt.Fprintf(&b, "(%s)", cs[0].Output)
		}
	}
	return b.String()
}
