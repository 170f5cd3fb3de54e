package dedupe_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/dedupe"
	"github.com/activekit/activekit/internal/testenv"
)

// CloudEvents makes only source and id together unique: two sources that
// number their events alike publish two events with one id, and both must
// run; a copy of one event (same source, same id) runs once. On the
// per-event path and on the batch path, where the two share a batch.
// Config.Key set to the id alone keeps the old behaviour (one runs).
func TestSameIDTwoSources(t *testing.T) {
	s, _ := redisStore(t, testenv.Redis(t))
	ctx := context.Background()
	a := events.New("/billing", "invoice.paid", nil)
	a.ID = "1"
	b := a.Clone()
	b.Source = "/shipping"

	for _, tc := range []struct {
		name string
		key  func(events.Event) string
		want []string
	}{
		{"source and id", nil, []string{"/billing", "/shipping"}},
		{"id alone", func(e events.Event) string { return e.ID }, []string{"/billing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ran []string
			h := func(_ context.Context, e events.Event) error { ran = append(ran, e.Source); return nil }

			d, err := dedupe.New(s, dedupe.Config{Group: t.Name() + "/event", Key: tc.key})
			if err != nil {
				t.Fatal(err)
			}
			mh := d.Middleware()(h)
			for _, e := range []events.Event{a, b, a, b} {
				if err := mh(ctx, e); err != nil {
					t.Fatal(err)
				}
			}
			if !slices.Equal(ran, tc.want) {
				t.Errorf("per event: ran %v, want %v", ran, tc.want)
			}

			ran = nil
			d, err = dedupe.New(s, dedupe.Config{Group: t.Name() + "/batch", Key: tc.key})
			if err != nil {
				t.Fatal(err)
			}
			es := []events.Event{a, b, a, b}
			batch, err := d.Begin(ctx, es)
			if err != nil {
				t.Fatal(err)
			}
			for i := range es {
				if err := batch.Handle(ctx, i, h); err != nil {
					t.Fatal(err)
				}
			}
			if err := batch.End(ctx); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ran, tc.want) {
				t.Errorf("batch: ran %v, want %v", ran, tc.want)
			}
		})
	}
}

func ExampleKey() {
	e := events.New("/billing", "invoice.paid", nil)
	e.ID = "42"
	fmt.Println(dedupe.Key(e))
	// Output: 8:/billing 42
}
