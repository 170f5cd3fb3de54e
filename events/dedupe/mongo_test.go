package dedupe_test

import (
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
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
