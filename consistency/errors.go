package consistency

import (
	"context"
	"errors"
	"slices"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/activekit/activekit/retry"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrConflict reports that UpdateIfVersion found the document at another
	// version than expected: someone else changed it first. Reload and try
	// again. The error is a *ConflictError.
	ErrConflict = errors.New("consistency: version conflict")
	// ErrNotFound reports that UpdateIfVersion found no document matching
	// the filter at all.
	ErrNotFound = errors.New("consistency: document not found")
	// ErrTransactionsUnsupported reports that the server cannot run
	// transactions: a standalone mongod, or FerretDB.
	ErrTransactionsUnsupported = errors.New("consistency: the server does not support transactions (it is not a replica set member or mongos)")
	// ErrLevelUnsupported reports that a deployment cannot give a level's
	// guarantees. The error is an *UnsupportedError listing why.
	ErrLevelUnsupported = errors.New("consistency: level not supported by the deployment")
	// ErrUnknownLevel reports a Level value or name that is not one of
	// Strong, Causal and Fast.
	ErrUnknownLevel = errors.New("consistency: unknown level")
	// ErrInvalidUpdate reports an update document UpdateIfVersion cannot
	// use: a replacement, or one that changes the version field itself.
	ErrInvalidUpdate = errors.New("consistency: invalid update")
	// ErrInvalidOption reports an option or argument a constructor refused.
	ErrInvalidOption = errors.New("consistency: invalid option")
	// ErrAlreadyDone reports that InsertOnce, inside a transaction, found
	// its idempotency key already there: the effect is done already. The
	// server has aborted the transaction at the duplicate key, so it must
	// end: return the error from the transaction's function (a Transactor
	// does not retry it) and answer as for a duplicate.
	ErrAlreadyDone = errors.New("consistency: already done (the transaction is aborted)")
)

// Server error codes and labels used by the classifiers.
const (
	codeIllegalOperation   = 20
	codeWriteConcernFailed = 64 // a write concern timeout (wtimeout)

	labelTransient          = "TransientTransactionError"
	labelUnknownCommit      = "UnknownTransactionCommitResult"
	labelRetryableWrite     = "RetryableWriteError"
	labelNetwork            = "NetworkError"
	labelNoWritesPerformed  = "NoWritesPerformed"
	labelRetryableOverload  = "RetryableError"
	labelNetworkTimeout     = "NetworkTimeoutError"
	labelExceededTimeLimit  = "ExceededTimeLimitError"
	msgTxnNumbersNotAllowed = "Transaction numbers are only allowed on a replica set member or mongos"
)

// retryableCodes are the server codes MongoDB's retryable reads and writes
// specifications retry: the node was stepping down, shutting down,
// unreachable or not (yet) able to serve.
var retryableCodes = [...]int{
	6,     // HostUnreachable
	7,     // HostNotFound
	89,    // NetworkTimeout
	91,    // ShutdownInProgress
	134,   // ReadConcernMajorityNotAvailableYet
	189,   // PrimarySteppedDown
	262,   // ExceededTimeLimit
	9001,  // SocketException
	10107, // NotWritablePrimary
	11600, // InterruptedAtShutdown
	11602, // InterruptedDueToReplStateChange
	13435, // NotPrimaryNoSecondaryOk
	13436, // NotPrimaryOrSecondary
}

// wceAmbiguous reports whether a write concern error leaves the write's
// fate unknown. A write concern error means the write was applied on the
// node that answered but not (yet) acknowledged by as many members as
// asked: when the wait timed out (64, wtimeout) or the node stepped down,
// shut down or stopped being primary meanwhile (the failover codes), a
// failover may still roll it back, or it may have replicated.
func wceAmbiguous(wce *mongo.WriteConcernError) bool {
	return wce != nil && (wce.Code == codeWriteConcernFailed || slices.Contains(retryableCodes[:], wce.Code) || wtimeout(wce.Details))
}

func hasLabel(err error, label string) bool {
	var le mongo.LabeledError
	return errors.As(err, &le) && le.HasErrorLabel(label)
}

func hasAnyCode(err error, codes []int) bool {
	for _, c := range mongo.ErrorCodes(err) {
		if slices.Contains(codes, c) {
			return true
		}
	}
	return false
}

// IsRetryable reports whether err is a transient fault worth another
// attempt: the driver's NetworkError, RetryableWriteError,
// TransientTransactionError or RetryableError labels, or a server code of
// a failover or shutdown (NotWritablePrimary, PrimarySteppedDown,
// InterruptedDueToReplStateChange, ...). It is false for nil, for a context
// that ended (the caller gave up), for an error a retry loop has already
// given up on (a *retry.Error, wrapped or not: retries happen at one layer)
// and for UnknownTransactionCommitResult (retry the commit, not the
// transaction: see IsAmbiguous).
//
// With retryable reads and writes on (ClientOptions), the driver has
// already retried a retryable read or write before the error reached the
// caller: once when the operation has no deadline, and as many times as fit
// before the deadline when its context has one or the client has a timeout
// (ClientOptions sets one). Retry it at one layer only, with a policy (see
// the retry package).
func IsRetryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	// A retry loop gave up on it already: retried again, each layer would
	// multiply the attempts (as for retry.IsRetryable).
	var done *retry.Error
	if errors.As(err, &done) {
		return false
	}
	if hasLabel(err, labelNetwork) || hasLabel(err, labelRetryableWrite) ||
		hasLabel(err, labelTransient) || hasLabel(err, labelRetryableOverload) {
		return true
	}
	return hasAnyCode(err, retryableCodes[:])
}

// IsAmbiguous reports whether err leaves the outcome of a write unknown: the
// write may or may not have been applied. That is the case for a network
// error or timeout after the command may have been sent (unless the driver
// labelled it NoWritesPerformed), a write concern error that timed out
// (code 64, wtimeout) or was cut short by a step-down, a shutdown or a
// primary that stopped being primary (the write was applied there and a
// failover may roll it back), and a commit labelled
// UnknownTransactionCommitResult.
//
// Retry an ambiguous write only when repeating it is harmless: InsertOnce
// reports a repeat as already done, and a repeated UpdateIfVersion reports
// ErrConflict (check whether the version moved by one).
func IsAmbiguous(err error) bool {
	if err == nil {
		return false
	}
	if hasLabel(err, labelUnknownCommit) {
		return true
	}
	var we mongo.WriteException
	if errors.As(err, &we) && wceAmbiguous(we.WriteConcernError) {
		return true
	}
	var bwe mongo.BulkWriteException
	if errors.As(err, &bwe) && wceAmbiguous(bwe.WriteConcernError) {
		return true
	}
	if hasLabel(err, labelNoWritesPerformed) {
		return false
	}
	return hasLabel(err, labelNetwork) || hasLabel(err, labelNetworkTimeout) ||
		hasLabel(err, labelExceededTimeLimit) || mongo.IsTimeout(err) ||
		errors.Is(err, context.Canceled)
}

func wtimeout(details bson.Raw) bool {
	if len(details) == 0 {
		return false
	}
	v, err := details.LookupErr("wtimeout")
	if err != nil {
		return false
	}
	b, ok := v.BooleanOK()
	return ok && b
}

// IsDuplicateKey reports whether err is a duplicate key error (codes 11000,
// 11001, 12582, or 16460 from mongos), as mongo.IsDuplicateKeyError does.
func IsDuplicateKey(err error) bool {
	return mongo.IsDuplicateKeyError(err)
}

// isTransactionsUnsupported reports whether err is the server refusing a
// transaction because it is not a replica set member or mongos.
func isTransactionsUnsupported(err error) bool {
	var se mongo.ServerError
	if !errors.As(err, &se) {
		return false
	}
	return se.HasErrorCode(codeIllegalOperation) && se.HasErrorMessage("Transaction numbers") ||
		se.HasErrorMessage(msgTxnNumbersNotAllowed)
}
