package session

import (
	"context"
	"time"
)

type nopStore struct{}

func (nopStore) Load(context.Context, string, time.Duration) (Record, bool, error) {
	return Record{}, false, nil
}
func (nopStore) Apply(context.Context, string, Delta) (uint64, error) { return 0, ErrNotFound }
func (nopStore) Delete(context.Context, string) error                 { return nil }
