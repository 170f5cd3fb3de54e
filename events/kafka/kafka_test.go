package kafka_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/eventstest"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/retry"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const partitions = 6

// cluster is a kfake cluster of three brokers and an admin client on it.
type cluster struct {
	c       *kfake.Cluster
	brokers []string
	adm     *kadm.Client
}

func newCluster(t testing.TB, opts ...kfake.Opt) *cluster {
	t.Helper()
	c := testenv.KFake(t, opts...)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &cluster{c: c, brokers: c.ListenAddrs(), adm: kadm.NewClient(cl)}
}

// topics creates topic and its dead-letter topic, durable, if missing.
func (c *cluster) topics(t testing.TB, topic string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := kafka.CreateTopics(ctx, c.adm, kafka.TopicSpec{Partitions: partitions}, topic, topic+kafka.DefaultDeadLetterSuffix); err != nil {
		t.Fatalf("creating topics: %v", err)
	}
}

func fastRetrier(t testing.TB, attempts int) *retry.Retrier {
	r, err := retry.New(retry.Policy{InitialInterval: 5 * time.Millisecond, MaxInterval: 50 * time.Millisecond, MaxAttempts: attempts, Jitter: retry.NoJitter})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (c *cluster) publisher(t testing.TB, topic string, opts ...kgo.Opt) *kafka.Publisher {
	t.Helper()
	p, err := kafka.NewPublisher(kafka.PublisherConfig{Topic: topic, Brokers: c.brokers, ClientOpts: opts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func (c *cluster) subscriber(t testing.TB, group string, opts ...kgo.Opt) *kafka.Subscriber {
	t.Helper()
	s, err := kafka.NewSubscriber(kafka.SubscriberConfig{Brokers: c.brokers, Group: group, Retrier: fastRetrier(t, 5), ClientOpts: opts})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var features = eventstest.Features{OrderingPerKey: true, Persistence: true, ConsumerGroups: true, RedeliveryAfterCrash: true}

func (c *cluster) constructor() eventstest.Constructor {
	return func(t *testing.T, topic, group string) (events.Publisher, events.Subscriber) {
		c.topics(t, topic)
		return c.publisher(t, topic), c.subscriber(t, group)
	}
}

// stallPublish implements eventstest.Features.StallPublish: kfake holds
// the next produce request to topic until release.
func (c *cluster) stallPublish(t *testing.T, topic string) (<-chan struct{}, func()) {
	// Produce v13 names the topic by its ID.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	details, err := c.adm.ListTopics(ctx, topic)
	if err != nil || details[topic].Err != nil {
		t.Fatalf("listing topic %s: %v %v", topic, err, details[topic].Err)
	}
	id := [16]byte(details[topic].ID)
	held := make(chan struct{}, 1)
	release := make(chan struct{})
	var once sync.Once
	c.c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		mine := false
		for _, tp := range req.(*kmsg.ProduceRequest).Topics {
			mine = mine || tp.Topic == topic || tp.TopicID == id
		}
		if !mine {
			c.c.KeepControl() // wait for a request to topic
			return nil, nil, false
		}
		held <- struct{}{}
		c.c.SleepControl(func() { <-release })
		return nil, nil, false
	})
	return held, func() { once.Do(func() { close(release) }) }
}

func TestConformance(t *testing.T) {
	c := newCluster(t)
	f := features
	f.StallPublish = c.stallPublish
	eventstest.Run(t, f, c.constructor())
}

func TestStress(t *testing.T) {
	c := newCluster(t)
	eventstest.Stress(t, features, c.constructor(), 5000)
}

func TestPublisherRefusesWeakDurability(t *testing.T) {
	c := newCluster(t)
	for name, opt := range map[string]kgo.Opt{
		"leader acks":            kgo.RequiredAcks(kgo.LeaderAck()),
		"no idempotence":         kgo.DisableIdempotentWrite(),
		"cancellable idempotent": kgo.AllowIdempotentProduceCancellation(),
	} {
		t.Run(name, func(t *testing.T) {
			opts := []kgo.Opt{opt}
			if name == "leader acks" {
				opts = append(opts, kgo.DisableIdempotentWrite()) // kgo requires it for acks != all
			}
			_, err := kafka.NewPublisher(kafka.PublisherConfig{Topic: "t", Brokers: c.brokers, ClientOpts: opts})
			if !errors.Is(err, kafka.ErrWeakDurability) {
				t.Fatalf("NewPublisher: %v, want ErrWeakDurability", err)
			}
			p, err := kafka.NewPublisher(kafka.PublisherConfig{Topic: "t", Brokers: c.brokers, ClientOpts: opts, AllowWeakDurability: true})
			if err != nil {
				t.Fatalf("NewPublisher with AllowWeakDurability: %v", err)
			}
			_ = p.Close()
		})
	}
	// A caller's client is checked too, and not closed by Close.
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.RequiredAcks(kgo.LeaderAck()), kgo.DisableIdempotentWrite())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := kafka.NewPublisher(kafka.PublisherConfig{Topic: "t", Client: cl}); !errors.Is(err, kafka.ErrWeakDurability) {
		t.Fatalf("NewPublisher with a weak client: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	for name, cfg := range map[string]kafka.PublisherConfig{
		"no topic":          {Brokers: []string{"127.0.0.1:1"}},
		"no brokers":        {Topic: "t"},
		"negative timeout":  {Topic: "t", Brokers: []string{"127.0.0.1:1"}, CloseTimeout: -1},
		"client and broker": {Topic: "t", Brokers: []string{"127.0.0.1:1"}, Client: &kgo.Client{}},
	} {
		if _, err := kafka.NewPublisher(cfg); !errors.Is(err, kafka.ErrConfig) {
			t.Errorf("%s: NewPublisher: %v, want ErrConfig", name, err)
		}
	}
	for name, cfg := range map[string]kafka.SubscriberConfig{
		"no brokers":   {Group: "g"},
		"no group":     {Brokers: []string{"127.0.0.1:1"}},
		"negative max": {Brokers: []string{"127.0.0.1:1"}, Group: "g", MaxPollRecords: -1},
	} {
		if _, err := kafka.NewSubscriber(cfg); !errors.Is(err, kafka.ErrConfig) {
			t.Errorf("%s: NewSubscriber: %v, want ErrConfig", name, err)
		}
	}
	s, err := kafka.NewSubscriber(kafka.SubscriberConfig{Brokers: []string{"127.0.0.1:1"}, Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Subscribe(context.Background(), "", nil); !errors.Is(err, kafka.ErrConfig) {
		t.Errorf("Subscribe with no topic: %v", err)
	}
}

func TestPreflight(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	weak := testenv.Name(t)
	if _, err := c.adm.CreateTopic(ctx, 3, 1, nil, weak); err != nil {
		t.Fatal(err)
	}
	defaults := testenv.Name(t)
	if _, err := c.adm.CreateTopic(ctx, 3, -1, nil, defaults); err != nil {
		t.Fatal(err)
	}
	durable := testenv.Name(t)
	missing := testenv.Name(t)
	rep, err := kafka.CreateTopics(ctx, c.adm, kafka.TopicSpec{Partitions: 4}, durable)
	if err != nil {
		t.Fatalf("CreateTopics: %v", err)
	}
	if !rep.OK() {
		t.Fatalf("a topic CreateTopics made is not durable: %v", rep.Err())
	}
	d := rep.Topics[0]
	if d.Partitions != 4 || d.ReplicationFactor != 3 || d.MinInsyncReplicas != 2 || d.UncleanLeaderElection {
		t.Fatalf("durable topic report %+v", d)
	}
	// kfake does not know unclean.leader.election.enable; the report says so.
	if d.UncleanReported {
		t.Logf("the cluster reported unclean.leader.election.enable")
	}

	rep, err = kafka.Preflight(ctx, c.adm, weak, defaults, durable, missing)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		weak:     {"replication factor 1, want at least 3", "min.insync.replicas 1, want at least 2"},
		defaults: {"min.insync.replicas 1, want at least 2"}, // kfake's defaults: 3 replicas, min.insync.replicas 1
		durable:  nil,
		missing:  {"does not exist"},
	}
	for _, tr := range rep.Topics {
		if got, w := tr.Problems, want[tr.Topic]; len(got) != len(w) || (len(w) > 0 && got[0] != w[0]) || (len(w) > 1 && got[1] != w[1]) {
			t.Errorf("topic %s: problems %q, want %q", tr.Topic, got, w)
		}
	}
	if err := rep.Err(); !errors.Is(err, kafka.ErrWeakTopic) {
		t.Fatalf("Report.Err: %v", err)
	}
	t.Logf("report: %v", rep.Err())
}
