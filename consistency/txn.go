package consistency

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/activekit/activekit/retry"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// ErrTransactionInProgress reports a Transactor.Run called with a context
// whose session is already in a transaction.
var ErrTransactionInProgress = errors.New("consistency: a transaction is already running in the context's session")

// defaultTransactionPolicy is the retry policy of a Transactor made without
// WithTransactionPolicy: five attempts, 10ms doubling to at most 500ms, 10s
// in all, full jitter.
var defaultTransactionPolicy = retry.Policy{
	InitialInterval: 10 * time.Millisecond,
	MaxInterval:     500 * time.Millisecond,
	MaxAttempts:     5,
	MaxElapsedTime:  10 * time.Second,
}

// DefaultCommitTimeout bounds each commit and abort of a Transactor.
const DefaultCommitTimeout = 10 * time.Second

// Transactor runs functions in MongoDB transactions and retries them, within
// a bounded policy, on the errors the server labels as safe to retry. Make
// one per client and share it: it is safe for concurrent use, caches per
// client whether the server can run transactions at all, and starts no
// goroutines.
type Transactor struct {
	client        *mongo.Client
	level         Level
	policy        retry.Policy
	retryOpts     []retry.Option
	retrier       *retry.Retrier
	commitTimeout time.Duration
	support       atomic.Int32 // supportUnknown, supportYes, supportNo
}

const (
	supportUnknown int32 = iota
	supportYes
	supportNo
)

// TransactionOption configures a Transactor.
type TransactionOption interface{ applyTx(*Transactor) error }

type txOptionFunc func(*Transactor) error

func (f txOptionFunc) applyTx(t *Transactor) error { return f(t) }

// WithTransactionLevel sets the level of the transactions: its write
// concern, read concern snapshot (local for Fast), primary reads. Strong by
// default.
func WithTransactionLevel(l Level) TransactionOption {
	return txOptionFunc(func(t *Transactor) error {
		if err := l.Validate(); err != nil {
			return err
		}
		t.level = l
		return nil
	})
}

// WithTransactionPolicy sets the retry policy: how many attempts, how long
// between them and in all. Its Retryable field is ignored: a Transactor
// retries exactly the errors labelled TransientTransactionError (running
// the function again) and UnknownTransactionCommitResult (committing
// again, never running the function twice for one commit).
func WithTransactionPolicy(p retry.Policy) TransactionOption {
	return txOptionFunc(func(t *Transactor) error {
		if err := p.Validate(); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidOption, err)
		}
		t.policy = p
		return nil
	})
}

// WithRetryOptions passes options (a shared retry.Budget, a meter provider,
// a clock, an OnRetry hook) to the Transactor's retry.Retrier.
func WithRetryOptions(opts ...retry.Option) TransactionOption {
	return txOptionFunc(func(t *Transactor) error {
		t.retryOpts = append(t.retryOpts, opts...)
		return nil
	})
}

// WithCommitTimeout bounds each commit and abort; DefaultCommitTimeout by
// default. See Run for why a commit is not cut short by the context.
func WithCommitTimeout(d time.Duration) TransactionOption {
	return txOptionFunc(func(t *Transactor) error {
		if d <= 0 {
			return fmt.Errorf("%w: commit timeout %v is not positive", ErrInvalidOption, d)
		}
		t.commitTimeout = d
		return nil
	})
}

// NewTransactor returns a Transactor for client.
func NewTransactor(client *mongo.Client, opts ...TransactionOption) (*Transactor, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: nil client", ErrInvalidOption)
	}
	t := &Transactor{client: client, policy: defaultTransactionPolicy, commitTimeout: DefaultCommitTimeout}
	for _, o := range opts {
		if err := o.applyTx(t); err != nil {
			return nil, err
		}
	}
	t.policy.Retryable = isTxnRetryable
	r, err := retry.New(t.policy, append([]retry.Option{retry.WithName("consistency.transaction")}, t.retryOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOption, err)
	}
	t.retrier = r
	return t, nil
}

func isTxnRetryable(err error) bool {
	if hasLabel(err, labelTransient) {
		return true
	}
	var ce mongo.CommandError
	return hasLabel(err, labelUnknownCommit) && !(errors.As(err, &ce) && ce.IsMaxTimeMSExpiredError())
}

// Supported reports whether the server can run transactions: a replica set
// member or a mongos (not a standalone mongod, not FerretDB, even started
// with a replica set name). It asks the server (hello, then buildInfo) once
// and caches the answer; an error is not cached.
func (t *Transactor) Supported(ctx context.Context) (bool, error) {
	switch t.support.Load() {
	case supportYes:
		return true, nil
	case supportNo:
		return false, nil
	}
	raw, err := t.client.Database("admin").RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Raw()
	if err != nil {
		return false, fmt.Errorf("consistency: asking the server whether it has transactions: %w", err)
	}
	h := parseHello(raw)
	ok := h.setName != "" || h.mongos
	if ok {
		// FerretDB answers hello with the name given by --repl-set-name,
		// without transactions.
		build, err := t.client.Database("admin").RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Raw()
		if err != nil {
			return false, fmt.Errorf("consistency: asking the server whether it has transactions: %w", err)
		}
		ok = flavour(build) != FlavourFerretDB
	}
	if ok {
		t.support.Store(supportYes)
	} else {
		t.support.Store(supportNo)
	}
	return ok, nil
}

// Run runs fn in a transaction and commits it, retrying within the
// Transactor's policy when the server labels the failure
// TransientTransactionError (the transaction was aborted: fn runs again, so
// it must be safe to repeat and must return the errors of the driver calls
// it makes) or UnknownTransactionCommitResult (the commit is retried, fn is
// not run again). fn must make its driver calls with the context it is
// given, which carries the session.
//
// When ctx carries a session of the same client (the Middleware's), the
// transaction runs in it, so it starts causally after the caller's token
// and the token written afterwards covers it. Otherwise Run starts and ends
// a session of its own.
//
// Run returns fn's error as it is when it is not retryable, an error
// wrapping ErrTransactionsUnsupported on a server without transactions, and
// otherwise a *retry.Error that unwraps to the last error (check it with
// IsAmbiguous: after an unknown commit result the transaction may have been
// applied). If fn commits or aborts the transaction itself, Run returns nil.
//
// ctx bounds the whole run and every retry. The commit (and abort) alone
// runs past ctx's end, for at most the commit timeout, as the driver's
// WithTransaction does: a commit abandoned halfway leaves its outcome
// unknown and the session unusable.
//
// Within one commit the driver itself retries a retryable error (a
// failover, a network error) for as long as the commit timeout allows, and
// every commit after the first one that failed is sent with w=majority, as
// the transactions specification requires; Run's own commit retries, after
// an UnknownTransactionCommitResult the driver gave up on, go through the
// same session and so get the same upgrade. A commit that ran out of time
// (MaxTimeMSExpired) is not retried, as in WithTransaction.
//
// When Run gives up with the commit outcome unknown, the transaction may
// have been applied. If the session was the caller's, make no more calls in
// it for this request: after a commit cut short by a client-side timeout,
// the driver still counts the transaction as running.
//
// If fn panics, the transaction is aborted and the panic goes on.
func (t *Transactor) Run(ctx context.Context, fn func(ctx context.Context) error) error {
	ok, err := t.Supported(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return ErrTransactionsUnsupported
	}
	sess := mongo.SessionFromContext(ctx)
	if sess == nil || sess.Client() != t.client {
		sess, err = t.client.StartSession(options.Session().SetCausalConsistency(true))
		if err != nil {
			return fmt.Errorf("consistency: starting a session: %w", err)
		}
		defer sess.EndSession(context.WithoutCancel(ctx))
	} else if sess.TransactionRunning() {
		return ErrTransactionInProgress
	}
	txnOpts := t.level.TransactionOptions()

	var (
		pendingCommit bool  // the last commit's result is unknown: commit again
		lastErr       error // the last attempt's error, unwrapped
		returned      bool  // the retry loop returned rather than panicked
	)
	// A panic in fn leaves the transaction open. On a session of our own
	// EndSession aborts it; on the caller's session (the Middleware's) it
	// would stay open, and the caller's next operations would join it. Abort
	// it before the panic goes on, unless a commit was sent: aborting a
	// transaction whose commit outcome is unknown races the commit.
	defer func() {
		if !returned && !pendingCommit && sess.TransactionRunning() {
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.commitTimeout)
			defer cancel()
			_ = sess.AbortTransaction(actx)
		}
	}()
	fail := func(err error, retryable bool) error {
		lastErr = err
		if retryable {
			return err
		}
		return retry.Permanent(err)
	}
	commit := func(ctx context.Context) error {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.commitTimeout)
		defer cancel()
		err := sess.CommitTransaction(cctx)
		pendingCommit = false
		switch {
		case err == nil:
			return nil
		case hasLabel(err, labelUnknownCommit) && isTxnRetryable(err):
			pendingCommit = true
			return fail(err, true)
		case hasLabel(err, labelTransient):
			return fail(err, true)
		}
		return fail(err, false)
	}
	abort := func(ctx context.Context) {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.commitTimeout)
		defer cancel()
		_ = sess.AbortTransaction(actx)
	}
	attempt := func(ctx context.Context) error {
		if pendingCommit {
			return commit(ctx)
		}
		if err := sess.StartTransaction(txnOpts); err != nil {
			return fail(err, false)
		}
		if err := fn(mongo.NewSessionContext(ctx, sess)); err != nil {
			if sess.TransactionRunning() {
				abort(ctx)
			}
			if isTransactionsUnsupported(err) {
				t.support.Store(supportNo)
				return fail(fmt.Errorf("%w: %w", ErrTransactionsUnsupported, err), false)
			}
			return fail(err, hasLabel(err, labelTransient))
		}
		if !sess.TransactionRunning() {
			return nil // fn committed or aborted it
		}
		if err := ctx.Err(); err != nil {
			abort(ctx)
			return fail(err, false)
		}
		return commit(ctx)
	}
	err = t.retrier.Do(ctx, attempt)
	returned = true
	if err == nil {
		return nil
	}
	var re *retry.Error
	if errors.As(err, &re) && re.Stop == nil && lastErr != nil {
		return lastErr // not retryable: the caller's own error, as it is
	}
	return err
}
