package kafka_test

import (
	"context"
	"testing"
	"time"

	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestPreflightBrokerDown: with the first seed broker down (nothing listens
// at its address), Preflight and CreateTopics answer through the others,
// and report a durable topic as durable. (kfake cannot keep a dead broker in
// its metadata: closing its connections makes franz-go suspect TLS or SASL
// and give up at once, unlike a refused dial.)
func TestPreflightBrokerDown(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	cl, err := kgo.NewClient(kgo.SeedBrokers(append([]string{testenv.FreeAddr(t)}, c.brokers...)...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for range 5 {
		rep, err := kafka.Preflight(ctx, adm, topic)
		if err != nil {
			t.Fatalf("Preflight: %v", err)
		}
		if !rep.OK() {
			t.Fatalf("Preflight: %v", rep.Err())
		}
	}
	other := testenv.Name(t)
	rep, err := kafka.CreateTopics(ctx, adm, kafka.TopicSpec{Partitions: 3}, other)
	if err != nil {
		t.Fatalf("CreateTopics: %v", err)
	}
	t.Logf("CreateTopics with a broker down: %+v", rep)
}
