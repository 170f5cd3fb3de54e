package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

// Durable topic settings: three copies, two of which must have a write
// before it is acknowledged, and never a leader that missed writes.
const (
	DurableReplicationFactor = 3
	DurableMinInsyncReplicas = 2
)

// Topic configuration keys the preflight reads.
const (
	ConfigMinInsyncReplicas     = "min.insync.replicas"
	ConfigUncleanLeaderElection = "unclean.leader.election.enable"
)

// ErrWeakTopic is matched by Report.Err when a topic could lose
// acknowledged events.
var ErrWeakTopic = errors.New("kafka: topic could lose acknowledged events")

// TopicReport is what the preflight found about one topic.
type TopicReport struct {
	Topic      string
	Exists     bool
	Partitions int
	// ReplicationFactor is the smallest replica count of its partitions.
	ReplicationFactor int
	// MinInsyncReplicas is the topic's min.insync.replicas; 0 when the
	// cluster did not report it.
	MinInsyncReplicas int
	// UncleanLeaderElection is the topic's unclean.leader.election.enable.
	UncleanLeaderElection bool
	// UncleanReported says whether the cluster reported that setting at
	// all; when it did not, UncleanLeaderElection is Kafka's default,
	// false.
	UncleanReported bool
	// Problems lists every shortfall, in words; empty means durable.
	Problems []string
}

// Report is the preflight's finding for every topic asked about.
type Report struct{ Topics []TopicReport }

// OK reports whether no topic has a problem.
func (r Report) OK() bool { return r.Err() == nil }

// Err returns nil when every topic is durable, else an error matching
// ErrWeakTopic that lists the problems.
func (r Report) Err() error {
	var b strings.Builder
	for _, t := range r.Topics {
		for _, p := range t.Problems {
			if b.Len() > 0 {
				b.WriteString("; ")
			}
			b.WriteString(t.Topic + ": " + p)
		}
	}
	if b.Len() == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrWeakTopic, b.String())
}

// Preflight asks the cluster how topics are replicated and configured and
// reports every shortfall from durable settings: a replication factor under
// 3, min.insync.replicas under 2 (with acks=all, a write acknowledged by a
// single replica is lost with that broker), unclean leader election on, or a
// missing topic. The error is for failing to ask, not for what was found.
func Preflight(ctx context.Context, adm *kadm.Client, topics ...string) (Report, error) {
	details, err := adm.ListTopics(ctx, topics...)
	if err != nil {
		return Report{}, fmt.Errorf("kafka: preflight metadata: %w", err)
	}
	var existing []string
	for _, t := range topics {
		if d, ok := details[t]; ok && d.Err == nil {
			existing = append(existing, t)
		}
	}
	configs := kadm.ResourceConfigs{}
	if len(existing) > 0 {
		configs, err = adm.DescribeTopicConfigs(ctx, existing...)
		if err != nil {
			return Report{}, fmt.Errorf("kafka: preflight configs: %w", err)
		}
	}
	var rep Report
	for _, t := range topics {
		tr := TopicReport{Topic: t}
		d, ok := details[t]
		if !ok || d.Err != nil {
			why := "does not exist"
			if ok && !errors.Is(d.Err, kerr.UnknownTopicOrPartition) {
				why = "cannot be described: " + d.Err.Error()
			}
			tr.Problems = append(tr.Problems, why)
			rep.Topics = append(rep.Topics, tr)
			continue
		}
		tr.Exists = true
		tr.Partitions = len(d.Partitions)
		tr.ReplicationFactor = -1
		for _, p := range d.Partitions {
			if n := len(p.Replicas); tr.ReplicationFactor < 0 || n < tr.ReplicationFactor {
				tr.ReplicationFactor = n
			}
		}
		if tr.ReplicationFactor < DurableReplicationFactor {
			tr.Problems = append(tr.Problems, fmt.Sprintf("replication factor %d, want at least %d", tr.ReplicationFactor, DurableReplicationFactor))
		}
		rc, err := configs.On(t, nil)
		if err == nil && rc.Err != nil {
			err = rc.Err
		}
		if err != nil {
			tr.Problems = append(tr.Problems, "configs cannot be described: "+err.Error())
			rep.Topics = append(rep.Topics, tr)
			continue
		}
		for _, c := range rc.Configs {
			if c.Value == nil {
				continue
			}
			switch c.Key {
			case ConfigMinInsyncReplicas:
				tr.MinInsyncReplicas, _ = strconv.Atoi(*c.Value)
			case ConfigUncleanLeaderElection:
				tr.UncleanReported = true
				tr.UncleanLeaderElection = *c.Value == "true"
			}
		}
		switch {
		case tr.MinInsyncReplicas == 0:
			tr.Problems = append(tr.Problems, "min.insync.replicas not reported")
		case tr.MinInsyncReplicas < DurableMinInsyncReplicas:
			tr.Problems = append(tr.Problems, fmt.Sprintf("min.insync.replicas %d, want at least %d", tr.MinInsyncReplicas, DurableMinInsyncReplicas))
		case tr.ReplicationFactor > 0 && tr.MinInsyncReplicas >= tr.ReplicationFactor:
			tr.Problems = append(tr.Problems, fmt.Sprintf("min.insync.replicas %d leaves no replica to lose (replication factor %d)", tr.MinInsyncReplicas, tr.ReplicationFactor))
		}
		if tr.UncleanLeaderElection {
			tr.Problems = append(tr.Problems, "unclean.leader.election.enable is true")
		}
		rep.Topics = append(rep.Topics, tr)
	}
	return rep, nil
}

// TopicSpec says how CreateTopics makes topics. Zero fields mean the durable
// defaults.
type TopicSpec struct {
	Partitions        int32 // zero means the broker's default
	ReplicationFactor int16 // zero means 3
	MinInsyncReplicas int   // zero means 2
}

// CreateTopics creates the topics that do not exist yet with durable
// settings (replication factor 3, min.insync.replicas 2, unclean leader
// election off), leaves existing ones alone, and returns the Preflight
// report of all of them, so a topic made earlier with weaker settings shows
// up. When the cluster does not know unclean.leader.election.enable as a
// topic setting (kfake), topics are created without it, which on Kafka means
// the default, off; the report says it was not reported.
func CreateTopics(ctx context.Context, adm *kadm.Client, spec TopicSpec, topics ...string) (Report, error) {
	if spec.Partitions == 0 {
		spec.Partitions = -1
	}
	if spec.ReplicationFactor == 0 {
		spec.ReplicationFactor = DurableReplicationFactor
	}
	if spec.MinInsyncReplicas == 0 {
		spec.MinInsyncReplicas = DurableMinInsyncReplicas
	}
	cfg := map[string]*string{
		ConfigMinInsyncReplicas:     kadm.StringPtr(strconv.Itoa(spec.MinInsyncReplicas)),
		ConfigUncleanLeaderElection: kadm.StringPtr("false"),
	}
	create := func(cfg map[string]*string, topics []string) ([]string, error) {
		res, err := adm.CreateTopics(ctx, spec.Partitions, spec.ReplicationFactor, cfg, topics...)
		if err != nil {
			return nil, fmt.Errorf("kafka: create topics: %w", err)
		}
		var invalidConfig []string
		for _, t := range topics {
			r := res[t]
			switch {
			case r.Err == nil, errors.Is(r.Err, kerr.TopicAlreadyExists):
			case errors.Is(r.Err, kerr.InvalidConfig):
				invalidConfig = append(invalidConfig, t)
			default:
				return nil, fmt.Errorf("kafka: create topic %s: %w", t, r.Err)
			}
		}
		return invalidConfig, nil
	}
	retryWithout, err := create(cfg, topics)
	if err != nil {
		return Report{}, err
	}
	if len(retryWithout) > 0 {
		delete(cfg, ConfigUncleanLeaderElection)
		again, err := create(cfg, retryWithout)
		if err != nil {
			return Report{}, err
		}
		if len(again) > 0 {
			return Report{}, fmt.Errorf("kafka: create topics %v: %w", again, kerr.InvalidConfig)
		}
	}
	return Preflight(ctx, adm, slices.Clone(topics)...)
}
