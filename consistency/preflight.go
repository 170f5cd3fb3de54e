package consistency

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
)

// Topology is the kind of deployment a client is connected to.
type Topology string

// Topologies.
const (
	Standalone Topology = "standalone"
	ReplicaSet Topology = "replica set"
	Sharded    Topology = "sharded"
)

// Server flavours.
const (
	FlavourMongoDB  = "mongodb"
	FlavourFerretDB = "ferretdb"
)

// PreflightOptions says what Preflight checks beyond the deployment itself.
// The zero value checks the deployment only.
type PreflightOptions struct {
	// Collections are namespaces ("db.collection") whose sharding is
	// reported on a sharded cluster.
	Collections []string
}

// CollectionReport is what Preflight found of a named collection on a
// sharded cluster.
type CollectionReport struct {
	Namespace string
	Sharded   bool
	Key       bson.D // the shard key; nil when not sharded
	Unique    bool   // the shard key is unique
}

// Report is what Preflight found. Problems lists, in plain words, what
// stops the deployment from giving durable, failover-safe consistency;
// Notes lists what could not be checked. Supports says whether a level can
// be had.
type Report struct {
	Flavour    string   // FlavourMongoDB or FlavourFerretDB
	Version    string   // the server's version (FerretDB reports the MongoDB version it emulates)
	Topology   Topology // standalone, replica set or sharded
	ReplicaSet string   // the replica set name

	// VotingMembers is the number of members with a vote, arbiters
	// included; DataBearingVoters excludes arbiters. Zero when unknown.
	VotingMembers     int
	DataBearingVoters int
	// WriteMajority is how many data-bearing voters must acknowledge a
	// w=majority write; HealthyDataVoters how many are up (primary or
	// secondary) now. Zero when unknown.
	WriteMajority     int
	HealthyDataVoters int
	// MajorityWritable reports whether a w=majority write can be
	// acknowledged now.
	MajorityWritable bool

	Transactions    bool // multi-document transactions are available
	RetryableWrites bool // sessions and a replica set or mongos (never FerretDB)
	ClusterTimes    bool // the server gossips $clusterTime: causal sessions work across instances

	Collections []CollectionReport
	Problems    []string
	Notes       []string
}

// UnsupportedError is the error Report.Supports returns. It matches
// ErrLevelUnsupported.
type UnsupportedError struct {
	Level   Level
	Reasons []string
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("consistency: the deployment cannot give level %s: %s", e.Level, strings.Join(e.Reasons, "; "))
}

// Is makes errors.Is(err, ErrLevelUnsupported) true.
func (e *UnsupportedError) Is(target error) bool { return target == ErrLevelUnsupported }

// Supports returns nil when the deployment can give level l's guarantees,
// and otherwise an *UnsupportedError saying why. Fast is supported
// everywhere; Strong needs a replica set or sharded cluster whose majority
// can acknowledge; Causal needs that and cluster times.
func (r Report) Supports(l Level) error {
	if err := l.Validate(); err != nil {
		return err
	}
	if l == Fast {
		return nil
	}
	var why []string
	if r.Topology == Standalone {
		why = append(why, "it is not a replica set: a standalone server has no failover and no majority to acknowledge writes")
	}
	if r.Topology != Standalone && !r.MajorityWritable {
		why = append(why, fmt.Sprintf("no majority can acknowledge writes (%d of %d data-bearing voting members are healthy, %d needed)", r.HealthyDataVoters, r.DataBearingVoters, r.WriteMajority))
	}
	if l == Causal && !r.ClusterTimes {
		why = append(why, "the server sends no cluster times, so causal sessions cannot carry a position between instances")
	}
	if r.Flavour == FlavourFerretDB {
		why = append(why, "FerretDB does not implement replication, majority acknowledgement or causal consistency")
	}
	if len(why) == 0 {
		return nil
	}
	return &UnsupportedError{Level: l, Reasons: why}
}

// flavour returns FlavourFerretDB when a buildInfo reply has FerretDB's
// own fields (ferretdbVersion, ferretdbFeatures), else FlavourMongoDB.
func flavour(build bson.Raw) string {
	if elems, err := build.Elements(); err == nil {
		for _, e := range elems {
			if strings.HasPrefix(strings.ToLower(e.Key()), "ferretdb") {
				return FlavourFerretDB
			}
		}
	}
	return FlavourMongoDB
}

// hello is the part of the hello reply Preflight and Transactor use.
type hello struct {
	setName        string
	mongos         bool
	sessions       bool // logicalSessionTimeoutMinutes present
	clusterTime    bool
	hosts, arbiter int
}

func parseHello(raw bson.Raw) hello {
	var h hello
	if v, err := raw.LookupErr("setName"); err == nil {
		h.setName, _ = v.StringValueOK()
	}
	if v, err := raw.LookupErr("msg"); err == nil {
		s, _ := v.StringValueOK()
		h.mongos = s == "isdbgrid"
	}
	if v, err := raw.LookupErr("logicalSessionTimeoutMinutes"); err == nil && v.Type != bson.TypeNull {
		h.sessions = true
	}
	_, err := raw.LookupErr("$clusterTime")
	h.clusterTime = err == nil
	if v, err := raw.LookupErr("hosts"); err == nil {
		if a, ok := v.ArrayOK(); ok {
			vals, _ := a.Values()
			h.hosts = len(vals)
		}
	}
	if v, err := raw.LookupErr("arbiters"); err == nil {
		if a, ok := v.ArrayOK(); ok {
			vals, _ := a.Values()
			h.arbiter = len(vals)
		}
	}
	return h
}

// Preflight asks the deployment behind client what it is and what it can
// guarantee: buildInfo, hello, and on a replica set replSetGetConfig and
// replSetGetStatus (which need the clusterMonitor role; without it the
// member counts come from hello and the report says so in Notes), and on a
// sharded cluster config.collections for opts.Collections.
//
// It returns an error only when the server cannot be asked at all; what
// the deployment lacks goes in Report.Problems. Run it at start-up and
// refuse to start, or warn, when Supports(level) fails.
func Preflight(ctx context.Context, client *mongo.Client, opts PreflightOptions) (Report, error) {
	admin := client.Database("admin")
	var r Report

	build, err := admin.RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Raw()
	if err != nil {
		return r, fmt.Errorf("consistency: preflight: buildInfo: %w", err)
	}
	r.Flavour = flavour(build)
	if v, err := build.LookupErr("version"); err == nil {
		r.Version, _ = v.StringValueOK()
	}

	hraw, err := admin.RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Raw()
	if err != nil {
		return r, fmt.Errorf("consistency: preflight: hello: %w", err)
	}
	h := parseHello(hraw)
	r.ClusterTimes = h.clusterTime
	switch {
	case h.mongos:
		r.Topology = Sharded
	case h.setName != "":
		r.Topology = ReplicaSet
		r.ReplicaSet = h.setName
	default:
		r.Topology = Standalone
	}
	r.Transactions = r.Topology != Standalone && r.Flavour == FlavourMongoDB
	// FerretDB started with --repl-set-name answers hello with a set name
	// and session support, but keeps no record of the writes it applied:
	// a retried write is not applied at most once.
	r.RetryableWrites = r.Topology != Standalone && h.sessions && r.Flavour == FlavourMongoDB

	switch r.Topology {
	case Standalone:
		r.Problems = append(r.Problems, "not a replica set: a standalone server has no failover, no majority acknowledgement, no transactions, no retryable writes and no causal cluster times")
	case ReplicaSet:
		r.members(ctx, admin, h)
		if !r.MajorityWritable {
			r.Problems = append(r.Problems, fmt.Sprintf("no majority can acknowledge writes: %d of %d data-bearing voting members are healthy, %d needed", r.HealthyDataVoters, r.DataBearingVoters, r.WriteMajority))
		}
	case Sharded:
		r.MajorityWritable = true
		r.Notes = append(r.Notes, "the majority of each shard's replica set is not checked through mongos")
		if err := r.collections(ctx, client, opts.Collections); err != nil {
			r.Notes = append(r.Notes, "sharding of the named collections unknown: "+err.Error())
		}
	}
	if r.Flavour == FlavourFerretDB {
		r.Problems = append(r.Problems, "FerretDB: no replication, transactions, retryable writes, change streams or causal cluster times, and concurrent compare-and-set is not isolated")
	}
	if r.Topology != Standalone && !r.ClusterTimes {
		r.Problems = append(r.Problems, "the server sends no cluster times: causal tokens cannot be issued")
	}
	if len(opts.Collections) > 0 && r.Topology != Sharded {
		for _, ns := range opts.Collections {
			r.Collections = append(r.Collections, CollectionReport{Namespace: ns})
		}
	}
	return r, nil
}

// members fills in the member counts of a replica set, from
// replSetGetConfig and replSetGetStatus, or from hello when those are
// refused.
func (r *Report) members(ctx context.Context, admin *mongo.Database, h hello) {
	cfg, cerr := admin.RunCommand(ctx, bson.D{{Key: "replSetGetConfig", Value: 1}}).Raw()
	st, serr := admin.RunCommand(ctx, bson.D{{Key: "replSetGetStatus", Value: 1}}).Raw()
	if cerr != nil || serr != nil {
		// hello lists electable and data-bearing members in hosts (passives
		// and hidden members aside): count them all as healthy voters.
		r.Notes = append(r.Notes, "member votes and health taken from hello: "+errors.Join(cerr, serr).Error())
		r.VotingMembers = h.hosts + h.arbiter
		r.DataBearingVoters = h.hosts
		r.HealthyDataVoters = h.hosts
		r.WriteMajority = min(r.VotingMembers/2+1, r.DataBearingVoters)
		r.MajorityWritable = r.DataBearingVoters > 0 && r.HealthyDataVoters >= r.WriteMajority
		return
	}
	var config struct {
		Config struct {
			Members []struct {
				ID          int    `bson:"_id"`
				Host        string `bson:"host"`
				Votes       *int   `bson:"votes"`
				ArbiterOnly bool   `bson:"arbiterOnly"`
			} `bson:"members"`
		} `bson:"config"`
	}
	var status struct {
		WriteMajorityCount int `bson:"writeMajorityCount"`
		Members            []struct {
			ID     int     `bson:"_id"`
			Health float64 `bson:"health"`
			State  int     `bson:"state"`
		} `bson:"members"`
	}
	if err := bson.Unmarshal(cfg, &config); err != nil {
		r.Notes = append(r.Notes, "replSetGetConfig: "+err.Error())
		return
	}
	if err := bson.Unmarshal(st, &status); err != nil {
		r.Notes = append(r.Notes, "replSetGetStatus: "+err.Error())
		return
	}
	healthy := make(map[int]bool, len(status.Members))
	for _, m := range status.Members {
		healthy[m.ID] = m.Health == 1 && (m.State == 1 || m.State == 2) // PRIMARY, SECONDARY
	}
	for _, m := range config.Config.Members {
		if m.Votes != nil && *m.Votes == 0 {
			continue
		}
		r.VotingMembers++
		if m.ArbiterOnly {
			continue
		}
		r.DataBearingVoters++
		if healthy[m.ID] {
			r.HealthyDataVoters++
		}
	}
	r.WriteMajority = status.WriteMajorityCount
	if r.WriteMajority == 0 {
		r.WriteMajority = min(r.VotingMembers/2+1, r.DataBearingVoters)
	}
	r.MajorityWritable = r.DataBearingVoters > 0 && r.HealthyDataVoters >= r.WriteMajority
}

// collections reports the sharding of the named collections from
// config.collections.
func (r *Report) collections(ctx context.Context, client *mongo.Client, names []string) error {
	if len(names) == 0 {
		return nil
	}
	cur, err := client.Database("config").Collection("collections").Find(ctx,
		bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: names}}}})
	if err != nil {
		return err
	}
	var docs []struct {
		ID      string `bson:"_id"`
		Key     bson.D `bson:"key"`
		Unique  bool   `bson:"unique"`
		Dropped bool   `bson:"dropped"`
	}
	if err := cur.All(ctx, &docs); err != nil {
		return err
	}
	found := make(map[string]CollectionReport, len(docs))
	for _, d := range docs {
		if !d.Dropped {
			found[d.ID] = CollectionReport{Namespace: d.ID, Sharded: true, Key: d.Key, Unique: d.Unique}
		}
	}
	for _, ns := range names {
		c, ok := found[ns]
		if !ok {
			c = CollectionReport{Namespace: ns}
		}
		r.Collections = append(r.Collections, c)
	}
	return nil
}

// ErrNotWritablePrimary is the error HealthCheck returns when the member
// it reached answers but is not a writable primary.
var ErrNotWritablePrimary = errors.New("consistency: mongodb: the member reached is not a writable primary")

// HealthCheck returns a check for the health package (or any
// func(ctx) error registry): it asks the primary (hello) whether it takes
// writes, so it fails when no writable primary can be reached, which is
// when writes cannot be acknowledged. Register it as a readiness check,
// never liveness: a failover is not a reason to restart an instance.
//
// It checks the answer rather than trusting server selection: a client
// connected directly to one member (directConnection=true) sends even
// primary-only commands to that member, which may be a secondary or a
// primary that just stepped down; a ping would pass there.
func HealthCheck(client *mongo.Client) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		var h struct {
			IsWritablePrimary bool `bson:"isWritablePrimary"`
			IsMaster          bool `bson:"ismaster"` // servers before 4.4.2 and some emulators
		}
		err := client.Database("admin").RunCommand(ctx, bson.D{{Key: "hello", Value: 1}},
			options.RunCmd().SetReadPreference(readpref.Primary())).Decode(&h)
		if err != nil {
			return fmt.Errorf("consistency: mongodb primary: %w", err)
		}
		if !h.IsWritablePrimary && !h.IsMaster {
			return ErrNotWritablePrimary
		}
		return nil
	}
}
