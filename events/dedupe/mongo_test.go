package dedupe_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// clock is a settable clock for MongoStore leases.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// mongoStore runs on any MongoDB-protocol server, FerretDB included: these
// are single-client API tests, not concurrency claims.
func mongoStore(t *testing.T) (dedupe.Store, func()) {
	db := testenv.MongoDatabase(t, testenv.Mongo(t))
	clk := &clock{now: time.Now().Truncate(time.Millisecond)}
	s, err := dedupe.NewMongoStore(db.Collection("dedupe"), dedupe.MongoConfig{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return s, func() { clk.Add(time.Hour) }
}

// TestMongoCreateIndexes: on a server with TTL indexes, CreateIndexes makes
// the TTL index on the expiry and is safe to repeat (every instance calls it
// at start). On one without (FerretDB answers NotImplemented), it reports
// the server's refusal instead of pretending, and the store still works
// without the index.
func TestMongoCreateIndexes(t *testing.T) {
	mc := testenv.Mongo(t)
	coll := testenv.MongoDatabase(t, mc).Collection("dedupe")
	s, err := dedupe.NewMongoStore(coll, dedupe.MongoConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := testenv.ProbeMongo(ctx, mc)
	if err != nil {
		t.Fatal(err)
	}
	if !srv.Has(testenv.MongoTTLIndexes) {
		err := s.CreateIndexes(ctx)
		var se mongo.ServerError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), "expireAfterSeconds") {
			t.Fatalf("CreateIndexes on %s %s: %v, want the server's refusal of the TTL option", srv.Flavour, srv.Version, err)
		}
		t.Logf("%s refuses the TTL index, as expected: %v", srv.Flavour, err)
	} else {
		for range 2 {
			if err := s.CreateIndexes(ctx); err != nil {
				t.Fatalf("CreateIndexes: %v", err)
			}
		}
		specs, err := coll.Indexes().ListSpecifications(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ttl *mongo.IndexSpecification
		for _, sp := range specs {
			if sp.Name == "dedupe_expires_ttl" {
				ttl = &sp
			}
		}
		if ttl == nil {
			t.Fatalf("no dedupe_expires_ttl index among %d: %+v", len(specs), specs)
		}
		var keys bson.D
		if err := bson.Unmarshal(ttl.KeysDocument, &keys); err != nil {
			t.Fatal(err)
		}
		if len(keys) != 1 || keys[0].Key != "expires" {
			t.Errorf("TTL index keys %v, want expires", keys)
		}
		if ttl.ExpireAfterSeconds == nil || *ttl.ExpireAfterSeconds != 0 {
			t.Errorf("TTL index expireAfterSeconds %v, want 0", ttl.ExpireAfterSeconds)
		}
	}
	c, err := s.Claim(ctx, "g", "e", time.Minute)
	if err != nil || c.Status != dedupe.Claimed {
		t.Fatalf("Claim: %+v, %v", c, err)
	}
	if err := s.Done(ctx, c); err != nil {
		t.Fatal(err)
	}
}

// TestMongoTTLRemovesExpired: the server removes a claim whose lease ended,
// so the collection does not grow without bound. It needs a server that
// enforces TTL indexes (MongoDB; FerretDB accepts the index and does not),
// whose TTL monitor runs once a minute.
func TestMongoTTLRemovesExpired(t *testing.T) {
	mc := testenv.Mongo(t)
	testenv.RequireMongo(t, mc, testenv.MongoTTLIndexes)
	coll := testenv.MongoDatabase(t, mc).Collection("dedupe")
	past := func() time.Time { return time.Now().Add(-time.Hour) }
	s, err := dedupe.NewMongoStore(coll, dedupe.MongoConfig{Now: past})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := s.CreateIndexes(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, "g", "expired", time.Second); err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(time.Second) // polling the server's TTL monitor
	defer tick.Stop()
	for {
		n, err := coll.CountDocuments(ctx, bson.D{})
		if err != nil {
			t.Fatalf("the expired claim was not removed: %v", err)
		}
		if n == 0 {
			return
		}
		<-tick.C
	}
}
