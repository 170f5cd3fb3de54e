package testenv

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go/wait"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// kafkaContainer is a one-node Redpanda that advertises the host port Docker
// maps, so clients outside the container can reach it.
var kafkaContainer = containerSpec{
	key:   "kafka",
	image: "docker.redpanda.com/redpandadata/redpanda:v24.2.18",
	ports: []string{"9092/tcp"},
	fixed: true,
	cmd: func(hp map[string]string) []string {
		return []string{"redpanda", "start", "--mode", "dev-container", "--smp", "1", "--overprovisioned",
			"--kafka-addr", "PLAINTEXT://0.0.0.0:9092",
			"--advertise-kafka-addr", "PLAINTEXT://127.0.0.1:" + hp["9092/tcp"]}
	},
	wait: wait.ForLog("Successfully started Redpanda"),
}

// KafkaBrokers returns the seed brokers of a real Kafka-protocol cluster:
// ACTIVEKIT_KAFKA_BROKERS, else a Redpanda container. It checks that a broker
// answers. For an in-process cluster with fault injection, use KFake.
func KafkaBrokers(t testing.TB) []string {
	t.Helper()
	return env(os.Getenv).kafkaBrokers(t)
}

func (e env) kafkaBrokers(t testing.TB) []string {
	t.Helper()
	brokers, ok := e.lookupAddrList(t, EnvKafkaBrokers)
	if !ok {
		host, ports, up, why := container(t, kafkaContainer)
		if !up {
			e.unavailable(t, EnvKafkaBrokers, "not set, and no container: %s (KFake gives an in-process cluster)", why)
			return nil
		}
		brokers = []string{net.JoinHostPort(host, ports["9092/tcp"])}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatalf("testenv: %s=%v: %v", EnvKafkaBrokers, brokers, err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cl.Ping(ctx); err != nil {
		e.unavailable(t, EnvKafkaBrokers, "no broker of %v answers: %v", brokers, err)
	}
	return brokers
}

// KFake starts an in-process Kafka-protocol cluster of three brokers (kfake)
// for the test, closed at its end. opts are added after the defaults, so
// kfake.NumBrokers overrides the count. The cluster is returned so the test
// can inject faults with ControlKey.
func KFake(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	all := append([]kfake.Opt{kfake.NumBrokers(3)}, opts...)
	c, err := kfake.NewCluster(all...)
	if err != nil {
		t.Fatalf("testenv: starting kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// KafkaCapability is a cluster feature a test may need.
type KafkaCapability string

// KafkaReplication means records are copied to at least three brokers, so
// min.insync.replicas=2 and losing a broker are meaningful. kfake reports
// replicas but writes only to the leader.
const KafkaReplication KafkaCapability = "replication"

// RequireKafka skips the test, with the reason, when the cluster at brokers
// lacks one of caps, even under ACTIVEKIT_REQUIRE_INTEGRATION=1.
func RequireKafka(t testing.TB, brokers []string, caps ...KafkaCapability) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatalf("testenv: kafka client: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	meta, err := kadm.NewClient(cl).BrokerMetadata(ctx)
	if err != nil {
		t.Fatalf("testenv: kafka metadata: %v", err)
	}
	for _, c := range caps {
		switch c {
		case KafkaReplication:
			if meta.Cluster == "kfake" {
				t.Skipf("testenv: the Kafka cluster is kfake (cluster id %q), which does not replicate records; this test needs a real Kafka cluster of three brokers", meta.Cluster)
			}
			if len(meta.Brokers) < 3 {
				t.Skipf("testenv: the Kafka cluster has %d broker(s); replication needs three", len(meta.Brokers))
			}
		default:
			t.Fatalf("testenv: unknown Kafka capability %q", c)
		}
	}
}

// CreateTopic creates topic with the given partition count on the cluster at
// brokers, deleting it at the end of the test. Replication is the cluster's
// default.
func CreateTopic(t testing.TB, brokers []string, topic string, partitions int32) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatalf("testenv: kafka client: %v", err)
	}
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := adm.CreateTopic(ctx, partitions, -1, nil, topic)
	if err == nil {
		err = res.Err
	}
	if err != nil {
		cl.Close()
		t.Fatalf("testenv: creating topic %s: %v", topic, err)
	}
	t.Cleanup(func() {
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = adm.DeleteTopics(ctx, topic)
	})
}
