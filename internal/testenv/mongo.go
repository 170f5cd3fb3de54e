package testenv

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go/wait"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// mongoContainer is a single-node replica set, so transactions, change
// streams and causal cluster times work. The driver connects directly to the
// one member, so the member's host name inside Docker never matters.
var mongoContainer = containerSpec{
	key:   "mongo",
	image: "mongo:7.0",
	ports: []string{"27017/tcp"},
	cmd:   func(map[string]string) []string { return []string{"--replSet", "rs0", "--bind_ip_all"} },
	wait:  wait.ForLog("Waiting for connections"),
	postRun: func(ctx context.Context, host string, ports map[string]string) error {
		uri := mongoContainerURI(host, ports)
		c, err := mongo.Connect(options.Client().ApplyURI(uri))
		if err != nil {
			return err
		}
		defer c.Disconnect(context.Background())
		cfg := bson.D{{Key: "_id", Value: "rs0"}, {Key: "members", Value: bson.A{bson.D{{Key: "_id", Value: 0}, {Key: "host", Value: "localhost:27017"}}}}}
		if err := c.Database("admin").RunCommand(ctx, bson.D{{Key: "replSetInitiate", Value: cfg}}).Err(); err != nil {
			return fmt.Errorf("replSetInitiate: %w", err)
		}
		for {
			var hello struct {
				IsWritablePrimary bool `bson:"isWritablePrimary"`
			}
			if err := c.Database("admin").RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Decode(&hello); err == nil && hello.IsWritablePrimary {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("replica set has no primary: %w", ctx.Err())
			case <-time.After(200 * time.Millisecond):
			}
		}
	},
}

func mongoContainerURI(host string, ports map[string]string) string {
	return "mongodb://" + net.JoinHostPort(host, ports["27017/tcp"]) + "/?directConnection=true"
}

// MongoURI returns a MongoDB connection string: ACTIVEKIT_MONGO_URI, else a
// container running a single-node replica set. It checks that the server
// answers ping.
func MongoURI(t testing.TB) string {
	t.Helper()
	return env(os.Getenv).mongoURI(t)
}

func (e env) mongoURI(t testing.TB) string {
	t.Helper()
	uri := e(EnvMongoURI)
	if uri != "" {
		if err := checkMongoURI(uri); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	} else {
		host, ports, up, why := container(t, mongoContainer)
		if !up {
			e.unavailable(t, EnvMongoURI, "not set, and no container: %s", why)
			return ""
		}
		uri = mongoContainerURI(host, ports)
	}
	c, err := mongo.Connect(options.Client().ApplyURI(uri).SetServerSelectionTimeout(3 * time.Second))
	if err != nil {
		e.unavailable(t, EnvMongoURI, "%q: %v", redactURI(uri), err)
		return ""
	}
	defer c.Disconnect(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx, nil); err != nil {
		e.unavailable(t, EnvMongoURI, "MongoDB at %q does not answer: %v", redactURI(uri), err)
	}
	return uri
}

func checkMongoURI(uri string) error {
	u, err := url.Parse(uri)
	if err != nil || (u.Scheme != "mongodb" && u.Scheme != "mongodb+srv") || u.Host == "" {
		return fmt.Errorf("%s=%q is not a mongodb:// or mongodb+srv:// connection string", EnvMongoURI, redactURI(uri))
	}
	if err := options.Client().ApplyURI(uri).Validate(); err != nil {
		return fmt.Errorf("%s=%q: %w", EnvMongoURI, redactURI(uri), err)
	}
	return nil
}

// redactURI hides a password in a connection string before it is printed.
func redactURI(uri string) string {
	u, err := url.Parse(uri)
	if err != nil || u.User == nil {
		return uri
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// Mongo returns a client of the MongoDB from MongoURI, disconnected at the
// end of the test.
func Mongo(t testing.TB) *mongo.Client {
	t.Helper()
	c, err := mongo.Connect(options.Client().ApplyURI(MongoURI(t)))
	if err != nil {
		t.Fatalf("testenv: mongo connect: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.Disconnect(ctx)
	})
	return c
}

// MongoDatabase returns a database of its own for the test, dropped at the end
// of the test.
func MongoDatabase(t testing.TB, c *mongo.Client) *mongo.Database {
	t.Helper()
	name := strings.ReplaceAll(Name(t), "-", "_")
	if len(name) > 60 {
		name = name[len(name)-60:]
	}
	db := c.Database(name)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := db.Drop(ctx); err != nil {
			t.Logf("testenv: dropping database %s: %v", name, err)
		}
	})
	return db
}

// MongoCapability is a server feature a test may need.
type MongoCapability string

// Capabilities that differ between a MongoDB replica set, a standalone
// MongoDB and FerretDB.
const (
	MongoTransactions      MongoCapability = "transactions"
	MongoChangeStreams     MongoCapability = "change streams"
	MongoTTLIndexes        MongoCapability = "TTL indexes"
	MongoCausalClusterTime MongoCapability = "causal cluster times"
)

// MongoServer is what a MongoDB-protocol server says of itself.
type MongoServer struct {
	Flavour     string // "mongodb" or "ferretdb"
	Version     string // the server's version
	ReplicaSet  string // the replica set name; empty when not a replica set
	Sharded     bool   // a mongos router
	ClusterTime bool   // hello carried $clusterTime
}

// Has reports whether the server offers capability c.
func (s MongoServer) Has(c MongoCapability) bool {
	if s.Flavour != "mongodb" {
		return false // FerretDB v1 has none of them
	}
	switch c {
	case MongoTransactions, MongoChangeStreams:
		return s.ReplicaSet != "" || s.Sharded
	case MongoCausalClusterTime:
		return s.ClusterTime
	case MongoTTLIndexes:
		return true
	}
	return false
}

// ProbeMongo asks the server (hello and buildInfo) what it is.
func ProbeMongo(ctx context.Context, c *mongo.Client) (MongoServer, error) {
	admin := c.Database("admin")
	var build bson.M
	if err := admin.RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Decode(&build); err != nil {
		return MongoServer{}, fmt.Errorf("buildInfo: %w", err)
	}
	s := MongoServer{Flavour: "mongodb"}
	if v, ok := build["version"].(string); ok {
		s.Version = v
	}
	// FerretDB answers buildInfo with ferretdbVersion (v1) or a ferretdb
	// document (v2) beside the MongoDB version it imitates.
	if _, ok := build["ferretdbVersion"]; ok {
		s.Flavour = "ferretdb"
	} else if _, ok := build["ferretdb"]; ok {
		s.Flavour = "ferretdb"
	}
	raw, err := admin.RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Raw()
	if err != nil {
		return MongoServer{}, fmt.Errorf("hello: %w", err)
	}
	if v, err := raw.LookupErr("setName"); err == nil {
		s.ReplicaSet, _ = v.StringValueOK()
	}
	if v, err := raw.LookupErr("msg"); err == nil {
		msg, _ := v.StringValueOK()
		s.Sharded = msg == "isdbgrid"
	}
	_, err = raw.LookupErr("$clusterTime")
	s.ClusterTime = err == nil
	return s, nil
}

// RequireMongo skips the test, with the reason, when the server lacks one of
// caps. It skips even under ACTIVEKIT_REQUIRE_INTEGRATION=1: the server was
// found; it just cannot do this.
func RequireMongo(t testing.TB, c *mongo.Client, caps ...MongoCapability) MongoServer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := ProbeMongo(ctx, c)
	if err != nil {
		t.Fatalf("testenv: probing MongoDB: %v", err)
	}
	for _, cp := range caps {
		if !s.Has(cp) {
			t.Skipf("testenv: the MongoDB server (%s %s, replica set %q, sharded %v) has no %s; this test needs a MongoDB replica set (it runs through testcontainers where Docker answers)", s.Flavour, s.Version, s.ReplicaSet, s.Sharded, cp)
		}
	}
	return s
}
