package kafka_test

import (
	"context"
	"time"

	"github.com/activekit/activekit/events/dedupe"
)

// noopStore is a dedupe.BatchStore that claims everything and records
// nothing: with it, BenchmarkConsume measures what the batch path costs
// without a store.
type noopStore struct{}

func (noopStore) Claim(ctx context.Context, group, id string, lease time.Duration) (dedupe.Claim, error) {
	return dedupe.Claim{Group: group, ID: id, Status: dedupe.Claimed, Token: "t"}, nil
}
func (noopStore) Done(ctx context.Context, c dedupe.Claim) error    { return nil }
func (noopStore) Release(ctx context.Context, c dedupe.Claim) error { return nil }
func (noopStore) ClaimBatch(ctx context.Context, group string, ids []string, lease time.Duration) ([]dedupe.Claim, error) {
	cs := make([]dedupe.Claim, len(ids))
	for i, id := range ids {
		cs[i] = dedupe.Claim{Group: group, ID: id, Status: dedupe.Claimed, Token: "t"}
	}
	return cs, nil
}
func (noopStore) DoneBatch(ctx context.Context, cs []dedupe.Claim) ([]error, error) {
	return make([]error, len(cs)), nil
}
func (noopStore) ReleaseBatch(ctx context.Context, cs []dedupe.Claim) error { return nil }
