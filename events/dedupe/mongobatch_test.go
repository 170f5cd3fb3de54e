package dedupe_test

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
)

// TestMongoBatch: MongoStore's batch calls settle every state a batch meets
// (new, done, busy, a lease that ended, a repeated ID) as Claim, Done and
// Release would, in a fixed number of commands whatever the batch's size:
// one insertMany, one find of the events already known and an update per
// lease taken over to claim, a find and a bulk update to mark done, one bulk
// delete to release.
func TestMongoBatch(t *testing.T) {
	var cmds atomic.Int32
	mon := &event.CommandMonitor{Started: func(_ context.Context, e *event.CommandStartedEvent) {
		switch e.CommandName {
		case "insert", "find", "getMore", "update", "delete":
			cmds.Add(1)
		}
	}}
	mc, err := mongo.Connect(options.Client().ApplyURI(testenv.MongoURI(t)).SetMonitor(mon))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mc.Disconnect(context.Background()) })
	db := testenv.MongoDatabase(t, mc)
	clk := &clock{now: time.Now().Truncate(time.Millisecond)}
	s, err := dedupe.NewMongoStore(db.Collection("dedupe"), dedupe.MongoConfig{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	done, _ := s.Claim(ctx, "g", "done", time.Minute)
	if err := s.Done(ctx, done); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, "g", "busy", time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, "g", "stale", time.Second); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Second) // stale's lease ends; busy's holds

	ids := []string{"done", "busy", "stale", "new-0", "new-0"}
	for i := 1; i < 300; i++ {
		ids = append(ids, "new-"+strconv.Itoa(i))
	}
	cmds.Store(0)
	cs, err := s.ClaimBatch(ctx, "g", ids, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	want := []dedupe.Status{dedupe.Done, dedupe.Busy, dedupe.Claimed, dedupe.Claimed, dedupe.Busy}
	for i, w := range want {
		if cs[i].Status != w || cs[i].ID != ids[i] {
			t.Fatalf("claim %d (%s): %+v, want %v", i, ids[i], cs[i], w)
		}
	}
	for i := 5; i < len(cs); i++ {
		if cs[i].Status != dedupe.Claimed {
			t.Fatalf("claim %d (%s): %v, want claimed", i, ids[i], cs[i].Status)
		}
	}
	// One insertMany, one find of the three known IDs, one update to take
	// the stale one over.
	if n := cmds.Load(); n != 3 {
		t.Fatalf("ClaimBatch of %d IDs: %d commands, want 3", len(ids), n)
	}

	// Mark done what the batch claimed, except new-1, released instead;
	// the stale one was taken over by the batch, so it is held.
	var held, rel []dedupe.Claim
	for i, c := range cs {
		if c.Status != dedupe.Claimed {
			continue
		}
		if ids[i] == "new-1" {
			rel = append(rel, c)
		} else {
			held = append(held, c)
		}
	}
	cmds.Store(0)
	res, err := s.DoneBatch(ctx, held)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range res {
		if e != nil {
			t.Fatalf("DoneBatch %s: %v", held[i].ID, e)
		}
	}
	if n := cmds.Load(); n != 2 {
		t.Fatalf("DoneBatch of %d claims: %d commands, want 2 (find, update of many)", len(held), n)
	}
	cmds.Store(0)
	if err := s.ReleaseBatch(ctx, append(rel, cs[0], cs[1])); err != nil { // done and busy ones are ignored
		t.Fatal(err)
	}
	if n := cmds.Load(); n != 1 {
		t.Fatalf("ReleaseBatch: %d commands, want 1", n)
	}
	for _, id := range []string{"stale", "new-0", "new-299"} {
		if c, _ := s.Claim(ctx, "g", id, time.Minute); c.Status != dedupe.Done {
			t.Fatalf("%s after DoneBatch: %v, want done", id, c.Status)
		}
	}
	if c, _ := s.Claim(ctx, "g", "new-1", time.Minute); c.Status != dedupe.Claimed {
		t.Fatalf("new-1 after ReleaseBatch: %v, want claimed", c.Status)
	}
	if c, _ := s.Claim(ctx, "g", "busy", time.Minute); c.Status != dedupe.Busy {
		t.Fatalf("busy after a batch: %v, want still busy", c.Status)
	}

	// A claim whose lease ended before DoneBatch is reported lost, and
	// marked done all the same (its effect happened).
	late, err := s.ClaimBatch(ctx, "g", []string{"late"}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Second)
	res, err = s.DoneBatch(ctx, late)
	if err != nil || !errors.Is(res[0], dedupe.ErrLeaseLost) {
		t.Fatalf("DoneBatch after the lease ended: %v, %v; want ErrLeaseLost", res, err)
	}
	if c, _ := s.Claim(ctx, "g", "late", time.Minute); c.Status != dedupe.Done {
		t.Fatalf("late after DoneBatch: %v, want done", c.Status)
	}
}
