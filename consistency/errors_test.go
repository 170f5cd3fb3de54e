package consistency_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/activekit/activekit/consistency"
	"github.com/activekit/activekit/retry"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

func TestClassification(t *testing.T) {
	wtimeoutDetails, _ := bson.Marshal(bson.D{{Key: "wtimeout", Value: true}})
	tests := []struct {
		name                       string
		err                        error
		retryable, ambiguous, dupe bool
	}{
		{"nil", nil, false, false, false},
		{"plain", errors.New("boom"), false, false, false},
		{"canceled", context.Canceled, false, true, false},
		{"deadline", context.DeadlineExceeded, false, true, false},
		{"network error", mongo.CommandError{Labels: []string{"NetworkError"}}, true, true, false},
		{"network error, no writes performed", mongo.CommandError{Labels: []string{"NetworkError", "NoWritesPerformed"}}, true, false, false},
		{"retryable write label", mongo.CommandError{Code: 91, Labels: []string{"RetryableWriteError"}}, true, false, false},
		{"not writable primary", mongo.CommandError{Code: 10107}, true, false, false},
		{"stepped down, wrapped", fmt.Errorf("save: %w", mongo.CommandError{Code: 189}), true, false, false},
		{"transient transaction", mongo.CommandError{Code: 112, Labels: []string{"TransientTransactionError"}}, true, false, false},
		{"unknown commit result", mongo.CommandError{Code: 6, Labels: []string{"UnknownTransactionCommitResult"}}, true, true, false},
		{"write concern timeout", mongo.WriteException{WriteConcernError: &mongo.WriteConcernError{Code: 64, Details: wtimeoutDetails}}, false, true, false},
		{"write concern wtimeout only", mongo.WriteException{WriteConcernError: &mongo.WriteConcernError{Code: 100, Details: wtimeoutDetails}}, false, true, false},
		{"write concern cut by step-down", mongo.WriteException{WriteConcernError: &mongo.WriteConcernError{Code: 11602}}, true, true, false},
		{"write concern, primary stepped down", mongo.WriteException{WriteConcernError: &mongo.WriteConcernError{Code: 189}}, true, true, false},
		{"write concern, no longer primary", mongo.WriteException{WriteConcernError: &mongo.WriteConcernError{Code: 10107}}, true, true, false},
		{"write concern unsatisfiable", mongo.WriteException{WriteConcernError: &mongo.WriteConcernError{Code: 100}}, false, false, false},
		{"not primary, no writes performed", mongo.CommandError{Code: 10107, Labels: []string{"RetryableWriteError", "NoWritesPerformed"}}, true, false, false},
		{"duplicate key on update", mongo.WriteException{WriteErrors: mongo.WriteErrors{{Code: 11001}}}, false, false, true},
		{"duplicate key, capped", mongo.CommandError{Code: 12582}, false, false, true},
		{"overloaded, retryable", mongo.CommandError{Code: 462, Labels: []string{"SystemOverloadedError", "RetryableError"}}, true, false, false},
		{"bulk write concern timeout", mongo.BulkWriteException{WriteConcernError: &mongo.WriteConcernError{Code: 64}}, false, true, false},
		{"duplicate key", mongo.WriteException{WriteErrors: mongo.WriteErrors{{Code: 11000, Message: "E11000 duplicate key"}}}, false, false, true},
		{"bad value", mongo.CommandError{Code: 2}, false, false, false},
		{"max time expired", mongo.CommandError{Code: 50, Name: "MaxTimeMSExpired"}, false, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := consistency.IsRetryable(tc.err); got != tc.retryable {
				t.Errorf("IsRetryable = %v, want %v", got, tc.retryable)
			}
			if got := consistency.IsAmbiguous(tc.err); got != tc.ambiguous {
				t.Errorf("IsAmbiguous = %v, want %v", got, tc.ambiguous)
			}
			if got := consistency.IsDuplicateKey(tc.err); got != tc.dupe {
				t.Errorf("IsDuplicateKey = %v, want %v", got, tc.dupe)
			}
		})
	}
}

func TestErrorsMatch(t *testing.T) {
	var err error = &consistency.ConflictError{Expected: 3, Actual: 5}
	if !errors.Is(err, consistency.ErrConflict) || errors.Is(err, consistency.ErrNotFound) {
		t.Error("ConflictError does not match ErrConflict only")
	}
	var ce *consistency.ConflictError
	if !errors.As(fmt.Errorf("x: %w", err), &ce) || ce.Actual != 5 {
		t.Error("ConflictError not reachable with errors.As")
	}
	err = &consistency.UnsupportedError{Level: consistency.Causal, Reasons: []string{"a", "b"}}
	if !errors.Is(err, consistency.ErrLevelUnsupported) {
		t.Error("UnsupportedError does not match ErrLevelUnsupported")
	}
	if got, want := err.Error(), "consistency: the deployment cannot give level causal: a; b"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestNewTransactorValidates(t *testing.T) {
	c := offlineClient(t)
	for name, opts := range map[string][]consistency.TransactionOption{
		"unknown level":      {consistency.WithTransactionLevel(consistency.Level(9))},
		"zero commit time":   {consistency.WithCommitTimeout(0)},
		"invalid policy":     {consistency.WithTransactionPolicy(retry.Policy{Multiplier: 0.5})},
		"nil clock in retry": {consistency.WithRetryOptions(retry.WithClock(nil))},
	} {
		if _, err := consistency.NewTransactor(c, opts...); !errors.Is(err, consistency.ErrInvalidOption) && !errors.Is(err, consistency.ErrUnknownLevel) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := consistency.NewTransactor(nil); !errors.Is(err, consistency.ErrInvalidOption) {
		t.Errorf("nil client: %v", err)
	}
	if _, err := consistency.NewTransactor(c, consistency.WithTransactionLevel(consistency.Fast)); err != nil {
		t.Errorf("valid options: %v", err)
	}
}

// TestIsRetryableOneLayer: an error that a retry loop has already given up
// on (a *retry.Error, wrapped or not) is final for IsRetryable, whatever
// the Mongo error inside it says, as it is for retry.IsRetryable: retries
// happen at one layer only, or each layer multiplies the attempts.
func TestIsRetryableOneLayer(t *testing.T) {
	stepDown := mongo.CommandError{Code: 189, Labels: []string{"RetryableWriteError"}}
	if !consistency.IsRetryable(stepDown) {
		t.Fatal("a step-down is retryable")
	}
	calls := 0
	inner := retry.Do(t.Context(), retry.Policy{MaxAttempts: 2, InitialInterval: time.Millisecond}, func(context.Context) error {
		calls++
		return stepDown
	})
	var re *retry.Error
	if !errors.As(inner, &re) || calls != 2 {
		t.Fatalf("inner loop: %v after %d calls, want a *retry.Error after 2", inner, calls)
	}
	for _, err := range []error{inner, fmt.Errorf("save: %w", inner)} {
		if consistency.IsRetryable(err) {
			t.Errorf("IsRetryable(%v) = true after a retry loop gave up on it", err)
		}
	}
	// An outer loop classifying with IsRetryable makes no attempt more.
	calls = 0
	outer := retry.Do(t.Context(), retry.Policy{MaxAttempts: 5, InitialInterval: time.Millisecond, Retryable: consistency.IsRetryable}, func(ctx context.Context) error {
		return retry.Do(ctx, retry.Policy{MaxAttempts: 2, InitialInterval: time.Millisecond}, func(context.Context) error {
			calls++
			return stepDown
		})
	})
	if outer == nil || calls != 2 {
		t.Fatalf("nested loops: %v after %d calls, want an error after 2", outer, calls)
	}
}
