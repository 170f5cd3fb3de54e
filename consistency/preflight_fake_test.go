package consistency_test

import (
	"context"
	"errors"
	"testing"

	"github.com/activekit/activekit/consistency"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// TestPreflightReplicaSetMembers runs Preflight against a scripted
// three-member replica set, as replSetGetConfig and replSetGetStatus
// describe it, with members down and with the commands refused.
func TestPreflightReplicaSetMembers(t *testing.T) {
	config := okReply(bson.E{Key: "config", Value: bson.D{{Key: "members", Value: bson.A{
		bson.D{{Key: "_id", Value: int32(0)}, {Key: "host", Value: "a:27017"}, {Key: "votes", Value: int32(1)}},
		bson.D{{Key: "_id", Value: int32(1)}, {Key: "host", Value: "b:27017"}, {Key: "votes", Value: int32(1)}},
		bson.D{{Key: "_id", Value: int32(2)}, {Key: "host", Value: "c:27017"}, {Key: "votes", Value: int32(1)}, {Key: "arbiterOnly", Value: true}},
		bson.D{{Key: "_id", Value: int32(3)}, {Key: "host", Value: "d:27017"}, {Key: "votes", Value: int32(0)}},
	}}}})
	status := func(states ...int32) bson.D {
		var ms bson.A
		for i, s := range states {
			health := 1.0
			if s == 8 { // DOWN
				health = 0
			}
			ms = append(ms, bson.D{{Key: "_id", Value: int32(i)}, {Key: "health", Value: health}, {Key: "state", Value: s}})
		}
		return okReply(bson.E{Key: "writeMajorityCount", Value: int32(2)}, bson.E{Key: "members", Value: ms})
	}
	unauthorized := errReply(13, "Unauthorized")
	tests := []struct {
		name     string
		cfg, st  bson.D
		writable bool
		healthy  int
		notes    bool
	}{
		{"all up", config, status(1, 2, 7, 2), true, 2, false},
		{"one data member down", config, status(1, 8, 7, 2), false, 1, false},
		{"refused: counts from hello", unauthorized, unauthorized, true, 1, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client, _ := fakeClient(t, nil, newScript(map[string][]bson.D{
				"buildInfo":        {okReply(bson.E{Key: "version", Value: "7.0.12"})},
				"replSetGetConfig": {tc.cfg},
				"replSetGetStatus": {tc.st},
			}).reply)
			r, err := consistency.Preflight(context.Background(), client, consistency.PreflightOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if r.Topology != consistency.ReplicaSet || r.ReplicaSet != "rs0" || r.Flavour != consistency.FlavourMongoDB || r.Version != "7.0.12" || !r.Transactions || !r.RetryableWrites {
				t.Fatalf("report %+v", r)
			}
			if !tc.notes && (r.VotingMembers != 3 || r.DataBearingVoters != 2 || r.WriteMajority != 2) {
				t.Errorf("voting %d, data-bearing voters %d, majority %d; want 3, 2, 2", r.VotingMembers, r.DataBearingVoters, r.WriteMajority)
			}
			if r.MajorityWritable != tc.writable || r.HealthyDataVoters != tc.healthy || (len(r.Notes) > 0) != tc.notes {
				t.Errorf("writable %v, healthy %d, notes %q; want %v, %d, notes %v", r.MajorityWritable, r.HealthyDataVoters, r.Notes, tc.writable, tc.healthy, tc.notes)
			}
			err = r.Supports(consistency.Strong)
			if tc.writable != (err == nil) || !tc.writable && !errors.Is(err, consistency.ErrLevelUnsupported) {
				t.Errorf("Supports(strong) = %v with majority writable %v", err, tc.writable)
			}
			// The fake gossips no cluster time: Causal is refused for that.
			if err := r.Supports(consistency.Causal); err == nil {
				t.Error("Supports(causal) without cluster times")
			}
		})
	}
}

// TestPreflightFerretDBWithSetName: FerretDB started with --repl-set-name
// answers hello with a set name and session support, but has no replication
// and no transaction table: its writes are not retryable (at most once
// across a failover) any more than its transactions exist.
func TestPreflightFerretDBWithSetName(t *testing.T) {
	unsupported := errReply(59, "CommandNotFound")
	client, _ := fakeClient(t, nil, newScript(map[string][]bson.D{
		"buildInfo":        {okReply(bson.E{Key: "version", Value: "7.0.42"}, bson.E{Key: "ferretdbVersion", Value: "v1.24.2"})},
		"replSetGetConfig": {unsupported},
		"replSetGetStatus": {unsupported},
	}).reply)
	r, err := consistency.Preflight(context.Background(), client, consistency.PreflightOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Flavour != consistency.FlavourFerretDB {
		t.Fatalf("flavour %q, want ferretdb", r.Flavour)
	}
	if r.Transactions || r.RetryableWrites {
		t.Errorf("FerretDB reported with transactions %v, retryable writes %v; want neither", r.Transactions, r.RetryableWrites)
	}
	for _, l := range []consistency.Level{consistency.Strong, consistency.Causal} {
		if err := r.Supports(l); !errors.Is(err, consistency.ErrLevelUnsupported) {
			t.Errorf("Supports(%s) = %v, want ErrLevelUnsupported", l, err)
		}
	}
}
