package dedupe_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
)

// hookedMongoConn calls before with every message the client writes, before
// writing it; when before returns an error, the connection is closed and the
// message is never sent.
type hookedMongoConn struct {
	net.Conn
	before func(p []byte) error
}

func (c *hookedMongoConn) Write(p []byte) (int, error) {
	if err := c.before(p); err != nil {
		_ = c.Conn.Close()
		return 0, err
	}
	return c.Conn.Write(p)
}

// hookedMongo returns the collection coll of db through a client whose
// connections call before with every message they write (see
// hookedMongoConn). before may be called from several goroutines at once.
func hookedMongo(t *testing.T, db *mongo.Database, coll string, before func(p []byte) error) *mongo.Collection {
	var d net.Dialer
	dial := dialerFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &hookedMongoConn{Conn: conn, before: before}, nil
	})
	c, err := mongo.Connect(options.Client().ApplyURI(testenv.MongoURI(t)).SetDialer(dial))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.Disconnect(ctx)
	})
	return c.Database(db.Name()).Collection(coll)
}

// isCommand reports whether the message p carries the command name (its
// first element, a string).
func isCommand(p []byte, name string) bool {
	return bytes.Contains(p, []byte("\x02"+name+"\x00"))
}

// TestMongoClaimBatchSettleFails: when ClaimBatch's settle step (the events
// whose documents existed when the batch inserted its claims) failed part
// way, the batch gave back only the claims of its own token, not the ones
// settle had made one by one, under tokens of their own, for events whose
// documents vanished between the insert and the read. ClaimBatch returned
// the error, so nobody knew those tokens, and the events stayed busy on every
// instance for a whole lease. Here settle claims "gone" on its own (its
// document is deleted just before the find), then fails to take over
// "stale" (every update refused): every ID of the batch must be claimable at
// once by another claimer.
func TestMongoClaimBatchSettleFails(t *testing.T) {
	db := testenv.MongoDatabase(t, testenv.Mongo(t))
	clk := &clock{now: time.Now().Truncate(time.Millisecond)}
	healthy, err := dedupe.NewMongoStore(db.Collection("dedupe"), dedupe.MongoConfig{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	gone, err := healthy.Claim(ctx, "g", "gone", time.Hour)
	if err != nil || gone.Status != dedupe.Claimed {
		t.Fatalf("Claim gone: %+v, %v", gone, err)
	}
	if c, err := healthy.Claim(ctx, "g", "stale", time.Minute); err != nil || c.Status != dedupe.Claimed {
		t.Fatalf("Claim stale: %+v, %v", c, err)
	}
	clk.Add(2 * time.Minute) // stale's lease ends; gone's holds

	var armed, released, refuse atomic.Bool
	errRefused := errors.New("update refused by the test")
	hooked := hookedMongo(t, db, "dedupe", func(p []byte) error {
		switch {
		case isCommand(p, "find") && armed.CompareAndSwap(true, false):
			// Between the batch's insert and its find, gone's claimer
			// releases it: settle claims it on its own.
			if err := healthy.Release(ctx, gone); err != nil {
				t.Errorf("Release gone: %v", err)
			}
			released.Store(true)
		case isCommand(p, "update") && refuse.Load():
			return errRefused
		}
		return nil
	})
	s, err := dedupe.NewMongoStore(hooked, dedupe.MongoConfig{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{"gone", "stale", "new"}
	armed.Store(true)
	refuse.Store(true)
	cs, err := s.ClaimBatch(ctx, "g", ids, time.Hour)
	refuse.Store(false)
	if !released.Load() {
		t.Fatal("the batch sent no find")
	}
	if err == nil {
		t.Fatalf("ClaimBatch with its takeover refused: %+v, nil error", cs)
	}
	t.Logf("ClaimBatch with its takeover refused: %v", err)
	for _, id := range ids {
		c, err := healthy.Claim(ctx, "g", id, time.Hour)
		if err != nil || c.Status != dedupe.Claimed {
			t.Errorf("Claim %s after a failed ClaimBatch: %+v, %v; want claimed at once", id, c, err)
		}
	}
}

// TestMongoDoneBatchTakenOver: MongoStore.DoneBatch read the claims'
// documents, then marked done those it had found held with one update on
// their IDs alone, so a claim whose lease ended and which another claimer
// took over between the read and the update was reported done (nil) where
// ErrLeaseLost is due, as RedisStore's DoneBatch and Done answer: the caller
// was not told that the effect may have run twice. The update is now
// conditional on the token and the lease, and the claims it did not mark are
// reported ErrLeaseLost and, as the documents found lost by the read, marked
// done all the same (the effect happened). Both moments of the takeover are
// checked: before the read (the case the store always handled) and between
// the read and the update.
func TestMongoDoneBatchTakenOver(t *testing.T) {
	for _, when := range []string{"before the read", "between the read and the update"} {
		t.Run(when, func(t *testing.T) {
			db := testenv.MongoDatabase(t, testenv.Mongo(t))
			clk := &clock{now: time.Now().Truncate(time.Millisecond)}
			other, err := dedupe.NewMongoStore(db.Collection("dedupe"), dedupe.MongoConfig{Now: clk.Now})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			var armed atomic.Bool
			var taken atomic.Pointer[dedupe.Claim]
			takeOver := func() {
				clk.Add(2 * time.Minute) // lost's lease ends; held's holds
				c, err := other.Claim(ctx, "g", "lost", time.Hour)
				if err != nil || c.Status != dedupe.Claimed {
					t.Errorf("takeover of lost: %+v, %v", c, err)
				}
				taken.Store(&c)
			}
			hooked := hookedMongo(t, db, "dedupe", func(p []byte) error {
				if isCommand(p, "update") && armed.CompareAndSwap(true, false) {
					takeOver()
				}
				return nil
			})
			s, err := dedupe.NewMongoStore(hooked, dedupe.MongoConfig{Now: clk.Now})
			if err != nil {
				t.Fatal(err)
			}
			held, err := s.Claim(ctx, "g", "held", time.Hour)
			if err != nil || held.Status != dedupe.Claimed {
				t.Fatalf("Claim held: %+v, %v", held, err)
			}
			lost, err := s.Claim(ctx, "g", "lost", time.Minute)
			if err != nil || lost.Status != dedupe.Claimed {
				t.Fatalf("Claim lost: %+v, %v", lost, err)
			}
			if when == "before the read" {
				takeOver()
			} else {
				armed.Store(true)
			}
			res, err := s.DoneBatch(ctx, []dedupe.Claim{held, lost})
			if armed.Load() || taken.Load() == nil {
				t.Fatal("DoneBatch sent no update")
			}
			if err != nil {
				t.Fatal(err)
			}
			if res[0] != nil {
				t.Errorf("DoneBatch of the claim still held: %v, want nil", res[0])
			}
			if !errors.Is(res[1], dedupe.ErrLeaseLost) {
				t.Errorf("DoneBatch of a claim another claimer took over %s: %v, want ErrLeaseLost", when, res[1])
			}
			for _, id := range []string{"held", "lost"} {
				if c, err := other.Claim(ctx, "g", id, time.Hour); err != nil || c.Status != dedupe.Done {
					t.Errorf("Claim %s after DoneBatch: %+v, %v; want done", id, c, err)
				}
			}
		})
	}
}
