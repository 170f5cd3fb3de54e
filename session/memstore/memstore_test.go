package memstore_test

import (
	"time"

	"testing"

	"go.uber.org/goleak"

	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/memstore"
	"github.com/activekit/activekit/session/sessiontest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	sessiontest.Run(t, func(t *testing.T) session.Store {
		s, err := memstore.New()
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time          { return c.now }
func (c *fakeClock) Advance(d time.Duration) { c.now = c.now.Add(d) }

func TestClockAndDeleteExpired(t *testing.T) {
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	s, err := memstore.New(memstore.WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	short, long := sessiontest.NewID(t, ""), sessiontest.NewID(t, "")
	if _, err := s.Apply(ctx, short, session.Delta{Create: &session.Create{Absolute: time.Hour}, Idle: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(ctx, long, session.Delta{Create: &session.Create{Absolute: 2 * time.Hour}, Idle: 2 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	rec, found, err := s.Load(ctx, short, 0)
	if err != nil || !found {
		t.Fatalf("Load: %v %v", found, err)
	}
	if want := clock.now.Add(time.Minute); !rec.IdleDeadline.Equal(want) {
		t.Errorf("idle deadline %v, want %v", rec.IdleDeadline, want)
	}
	clock.Advance(time.Minute - time.Nanosecond)
	if _, found, _ := s.Load(ctx, short, 0); !found {
		t.Fatal("gone before its idle deadline")
	}
	clock.Advance(time.Nanosecond)
	if n := s.DeleteExpired(); n != 1 {
		t.Fatalf("DeleteExpired removed %d, want 1", n)
	}
	if s.Len() != 1 {
		t.Fatalf("Len %d, want 1", s.Len())
	}
	// Refreshing stops at the absolute deadline.
	clock.Advance(90 * time.Minute)
	rec, found, err = s.Load(ctx, long, 10*time.Hour)
	if err != nil || !found {
		t.Fatalf("Load: %v %v", found, err)
	}
	if !rec.IdleDeadline.Equal(rec.AbsoluteDeadline) {
		t.Errorf("idle deadline %v, want the absolute deadline %v", rec.IdleDeadline, rec.AbsoluteDeadline)
	}
	clock.Advance(30 * time.Minute)
	if _, found, _ := s.Load(ctx, long, time.Hour); found {
		t.Fatal("found after its absolute deadline")
	}
	if s.Len() != 0 {
		t.Fatalf("Len %d after lazy removal, want 0", s.Len())
	}
}

func TestNilOption(t *testing.T) {
	if _, err := memstore.New(nil); err == nil {
		t.Fatal("New(nil option): no error")
	}
}
