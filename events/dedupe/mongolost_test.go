package dedupe_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
)

// lossyMongoConn drops the connection instead of delivering the reply to
// the first command named cmd written while lose is set: the server ran it,
// the client never hears of it.
type lossyMongoConn struct {
	net.Conn
	cmd   []byte // "\x02<name>\x00": the command's first element
	lose  *atomic.Bool
	armed bool
}

func (c *lossyMongoConn) Write(p []byte) (int, error) {
	if bytes.Contains(p, c.cmd) && c.lose.CompareAndSwap(true, false) {
		c.armed = true
	}
	return c.Conn.Write(p)
}

func (c *lossyMongoConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.armed {
		_ = c.Conn.Close()
		return 0, io.EOF
	}
	return n, err
}

// lossyMongo returns a collection of db through a client whose reply to the
// next command named cmd is lost once lose is set.
func lossyMongo(t *testing.T, db *mongo.Database, coll, cmd string) (*mongo.Collection, *atomic.Bool) {
	lose := &atomic.Bool{}
	var d net.Dialer
	dial := dialerFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &lossyMongoConn{Conn: conn, cmd: []byte("\x02" + cmd + "\x00"), lose: lose}, nil
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
	return c.Database(db.Name()).Collection(coll), lose
}

type dialerFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func (f dialerFunc) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return f(ctx, network, addr)
}

// TestMongoClaimLostReply: a claim whose write ran but whose reply was lost
// (a connection reset, a failover, ctx ending in flight) left a document
// holding a token nobody knows, so every later claim of the event, the
// subscriber's retry included, found it busy for the whole lease, while
// RedisStore gives such a claim back. The store now deletes the claim of its
// own token when its insert, or its takeover of a claim whose lease ended,
// failed for any other reason than a duplicate key.
func TestMongoClaimLostReply(t *testing.T) {
	for _, cmd := range []string{"insert", "update"} {
		t.Run(cmd, func(t *testing.T) {
			db := testenv.MongoDatabase(t, testenv.Mongo(t))
			clk := &clock{now: time.Now().Truncate(time.Millisecond)}
			lossy, lose := lossyMongo(t, db, "dedupe", cmd)
			s, err := dedupe.NewMongoStore(lossy, dedupe.MongoConfig{Now: clk.Now})
			if err != nil {
				t.Fatal(err)
			}
			healthy, err := dedupe.NewMongoStore(db.Collection("dedupe"), dedupe.MongoConfig{Now: clk.Now})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if cmd == "update" {
				// A claim whose claimer died: the next one takes it
				// over with an update.
				if c, err := healthy.Claim(ctx, "g", "e", time.Hour); err != nil || c.Status != dedupe.Claimed {
					t.Fatalf("first Claim: %+v, %v", c, err)
				}
				clk.Add(2 * time.Hour)
			}
			lose.Store(true)
			c, err := s.Claim(ctx, "g", "e", time.Hour)
			if lose.Load() {
				t.Fatalf("no %s was sent", cmd)
			}
			if err == nil && c.Status == dedupe.Claimed {
				return // the driver retried the write, and the store knew its own claim
			}
			t.Logf("Claim with its %s's reply lost: %+v, %v", cmd, c, err)
			next, err := healthy.Claim(ctx, "g", "e", time.Hour)
			if err != nil || next.Status != dedupe.Claimed {
				t.Fatalf("Claim after a claim whose %s's reply was lost: %+v, %v; want claimed at once", cmd, next, err)
			}
		})
	}
}
