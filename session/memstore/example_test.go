package memstore_test

import (
	"context"
	"fmt"
	"time"

	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/memstore"
)

func ExampleNew() {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s, _ := memstore.New(memstore.WithClock(func() time.Time { return now }))
	ctx := context.Background()
	tok, _ := session.NewToken("")
	id, _ := session.TokenID(tok)
	v, _ := s.Apply(ctx, id, session.Delta{
		Create: &session.Create{Absolute: time.Hour},
		Set:    map[string][]byte{"theme": []byte(`"dark"`)},
		Idle:   10 * time.Minute,
	})
	rec, found, _ := s.Load(ctx, id, 0)
	fmt.Println(v, found, string(rec.Values["theme"].Data))
	now = now.Add(10 * time.Minute) // idle too long
	_, found, _ = s.Load(ctx, id, 0)
	fmt.Println(found, s.DeleteExpired())
	// Output:
	// 1 true "dark"
	// false 0
}
