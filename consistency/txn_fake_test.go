package consistency_test

// The Transactor's retry decisions, proven against the real driver talking
// to a scripted server (fakeserver_test.go): which failures run fn again,
// which only commit again, with what write concern, and when it stops.

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/consistency"
	"github.com/activekit/activekit/retry"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// script answers commands from per-command queues of replies; a command
// whose queue is empty succeeds.
type script struct {
	mu      sync.Mutex
	replies map[string][]bson.D
}

func newScript(replies map[string][]bson.D) *script { return &script{replies: replies} }

func (s *script) reply(cmd bson.Raw) bson.D {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := commandName(cmd)
	if q := s.replies[name]; len(q) > 0 {
		s.replies[name] = q[1:]
		return q[0]
	}
	switch name {
	case "insert", "update", "delete":
		return okReply(bson.E{Key: "n", Value: int32(1)})
	case "find":
		return okReply(bson.E{Key: "cursor", Value: bson.D{
			{Key: "firstBatch", Value: bson.A{}}, {Key: "id", Value: int64(0)}, {Key: "ns", Value: "db.coll"},
		}})
	}
	return okReply()
}

// fastPolicy retries at once, at most attempts times in all.
func fastPolicy(attempts int) retry.Policy {
	return retry.Policy{InitialInterval: time.Microsecond, MaxInterval: time.Microsecond, MaxAttempts: attempts, Jitter: retry.NoJitter}
}

func fakeTransactor(t *testing.T, replies map[string][]bson.D, opts ...consistency.TransactionOption) (*consistency.Transactor, *mongo.Collection, *fakeServer) {
	t.Helper()
	client, fs := fakeClient(t, nil, newScript(replies).reply)
	tx, err := consistency.NewTransactor(client, append([]consistency.TransactionOption{consistency.WithTransactionPolicy(fastPolicy(4))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return tx, consistency.Collection(client.Database("db"), "coll", consistency.Strong), fs
}

func txnNumber(t *testing.T, cmd bson.Raw) int64 {
	t.Helper()
	n, ok := lookup(cmd, "txnNumber").Int64OK()
	if !ok {
		t.Fatalf("command without txnNumber: %v", cmd)
	}
	return n
}

func writeConcernW(cmd bson.Raw) string {
	v := lookup(cmd, "writeConcern", "w")
	if s, ok := v.StringValueOK(); ok {
		return s
	}
	if n, ok := v.AsInt64OK(); ok && n == 1 {
		return "1"
	}
	return ""
}

var (
	writeConflict   = errReply(112, "WriteConflict", "TransientTransactionError")
	noSuchTxn       = errReply(251, "NoSuchTransaction", "TransientTransactionError")
	maxTimeExpired  = errReply(50, "MaxTimeMSExpired")
	shutdownInProg  = errReply(91, "ShutdownInProgress", "RetryableWriteError")
	errInsufficient = errors.New("insufficient funds")
)

func TestTransactorRetryDecisions(t *testing.T) {
	tests := []struct {
		name     string
		replies  map[string][]bson.D
		fnErr    error // returned by fn after its insert succeeds
		wantFn   int   // times fn ran
		wantCmt  int   // commitTransaction commands sent
		wantAbrt int   // abortTransaction commands sent
		check    func(t *testing.T, err error, fs *fakeServer)
	}{
		{
			name:    "transient error in fn runs fn again in a new transaction",
			replies: map[string][]bson.D{"insert": {writeConflict}},
			wantFn:  2, wantCmt: 1, wantAbrt: 1, // the server may have started it: abort, as WithTransaction does
			check: func(t *testing.T, err error, fs *fakeServer) {
				if err != nil {
					t.Fatalf("Run = %v", err)
				}
				ins := fs.commands("insert")
				if len(ins) != 2 || txnNumber(t, ins[1]) <= txnNumber(t, ins[0]) {
					t.Fatalf("the retry is not a new transaction: %v", ins)
				}
				if st, _ := lookup(ins[1], "startTransaction").BooleanOK(); !st {
					t.Errorf("the retried insert does not start a transaction: %v", ins[1])
				}
			},
		},
		{
			name:    "unknown commit result commits again and never reruns fn",
			replies: map[string][]bson.D{"commitTransaction": {writeConcernErrorReply()}},
			wantFn:  1, wantCmt: 2,
			check: func(t *testing.T, err error, fs *fakeServer) {
				if err != nil {
					t.Fatalf("Run = %v", err)
				}
				c := fs.commands("commitTransaction")
				if txnNumber(t, c[0]) != txnNumber(t, c[1]) {
					t.Errorf("the second commit is for another transaction: %v / %v", c[0], c[1])
				}
				// Strong's write concern on the first commit; majority (the
				// driver's upgrade for a retried commit) on the second.
				if j, _ := lookup(c[0], "writeConcern", "j").BooleanOK(); writeConcernW(c[0]) != "majority" || !j {
					t.Errorf("first commit write concern %v, want majority, j", lookup(c[0], "writeConcern"))
				}
				if writeConcernW(c[1]) != "majority" {
					t.Errorf("retried commit write concern %v, want majority", lookup(c[1], "writeConcern"))
				}
			},
		},
		{
			name:    "unknown commit result until the attempts run out: ambiguous, fn ran once, no abort",
			replies: map[string][]bson.D{"commitTransaction": {writeConcernErrorReply(), writeConcernErrorReply(), writeConcernErrorReply(), writeConcernErrorReply(), writeConcernErrorReply()}},
			wantFn:  1, wantCmt: 4,
			check: func(t *testing.T, err error, _ *fakeServer) {
				var re *retry.Error
				if !errors.As(err, &re) || !errors.Is(err, retry.ErrMaxAttempts) || re.Attempts != 4 {
					t.Fatalf("Run = %v, want a *retry.Error after 4 attempts", err)
				}
				if !consistency.IsAmbiguous(err) {
					t.Errorf("IsAmbiguous(%v) = false: the transaction may have committed", err)
				}
			},
		},
		{
			name:    "transient error on a retried commit runs fn again",
			replies: map[string][]bson.D{"commitTransaction": {writeConcernErrorReply(), noSuchTxn}},
			wantFn:  2, wantCmt: 3,
			check: func(t *testing.T, err error, _ *fakeServer) {
				if err != nil {
					t.Fatalf("Run = %v", err)
				}
			},
		},
		{
			name:    "commit out of time is not retried",
			replies: map[string][]bson.D{"commitTransaction": {maxTimeExpired}},
			// The driver keeps a transaction whose commit timed out "in
			// progress", so ending the session aborts it, as after
			// WithTransaction: harmless on a replica set (an abort after
			// the commit is refused).
			wantFn: 1, wantCmt: 1, wantAbrt: 1,
			check: func(t *testing.T, err error, _ *fakeServer) {
				var ce mongo.CommandError
				if !errors.As(err, &ce) || ce.Code != 50 || !ce.HasErrorLabel("UnknownTransactionCommitResult") {
					t.Fatalf("Run = %v, want the MaxTimeMSExpired commit error", err)
				}
				if !consistency.IsAmbiguous(err) {
					t.Error("a commit out of time is not reported ambiguous")
				}
			},
		},
		{
			name:    "retryable commit error is retried by the driver with w=majority",
			replies: map[string][]bson.D{"commitTransaction": {shutdownInProg}},
			wantFn:  1, wantCmt: 2,
			check: func(t *testing.T, err error, fs *fakeServer) {
				if err != nil {
					t.Fatalf("Run = %v", err)
				}
				c := fs.commands("commitTransaction")
				if writeConcernW(c[1]) != "majority" {
					t.Errorf("retried commit write concern %v, want majority", lookup(c[1], "writeConcern"))
				}
			},
		},
		{
			name:   "a non-transient error from fn is returned as it is and aborts",
			fnErr:  errInsufficient,
			wantFn: 1, wantCmt: 0, wantAbrt: 1,
			check: func(t *testing.T, err error, _ *fakeServer) {
				if err != errInsufficient {
					t.Fatalf("Run = %v, want fn's own error", err)
				}
			},
		},
		{
			name:    "a non-transient server error in fn is returned and not retried",
			replies: map[string][]bson.D{"insert": {errReply(2, "BadValue")}},
			wantFn:  1, wantCmt: 0, wantAbrt: 1,
			check: func(t *testing.T, err error, _ *fakeServer) {
				var ce mongo.CommandError
				if !errors.As(err, &ce) || ce.Code != 2 {
					t.Fatalf("Run = %v, want the BadValue error", err)
				}
				var re *retry.Error
				if errors.As(err, &re) {
					t.Errorf("Run = %v: a non-retryable error comes back unwrapped", err)
				}
			},
		},
		{
			name:    "transient errors until the attempts run out",
			replies: map[string][]bson.D{"insert": {writeConflict, writeConflict, writeConflict, writeConflict}},
			wantFn:  4, wantCmt: 0, wantAbrt: 4,
			check: func(t *testing.T, err error, _ *fakeServer) {
				if !errors.Is(err, retry.ErrMaxAttempts) || consistency.IsAmbiguous(err) {
					t.Fatalf("Run = %v (ambiguous %v), want attempts exhausted, not ambiguous", err, consistency.IsAmbiguous(err))
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tx, coll, fs := fakeTransactor(t, tc.replies)
			var calls int
			err := tx.Run(context.Background(), func(ctx context.Context) error {
				calls++
				if mongo.SessionFromContext(ctx) == nil {
					t.Error("fn's context carries no session")
				}
				if _, err := coll.InsertOne(ctx, bson.D{{Key: "x", Value: 1}}); err != nil {
					return err
				}
				return tc.fnErr
			})
			if calls != tc.wantFn {
				t.Errorf("fn ran %d times, want %d", calls, tc.wantFn)
			}
			if n := len(fs.commands("commitTransaction")); n != tc.wantCmt {
				t.Errorf("%d commits sent, want %d", n, tc.wantCmt)
			}
			if n := len(fs.commands("abortTransaction")); n != tc.wantAbrt {
				t.Errorf("%d aborts sent, want %d", n, tc.wantAbrt)
			}
			tc.check(t, err, fs)
		})
	}
}

// TestTransactorSessions checks which session a transaction runs in: the
// caller's (the Middleware's) when it belongs to the same client, so the
// token written afterwards covers it; one of its own otherwise.
func TestTransactorSessions(t *testing.T) {
	tx, coll, fs := fakeTransactor(t, nil)
	client := coll.Database().Client()
	lsid := func(cmd bson.Raw) string { return string(lookup(cmd, "lsid").Value) }

	sess, err := client.StartSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.EndSession(context.Background())
	ctx := mongo.NewSessionContext(context.Background(), sess)
	insert := func(ctx context.Context) error {
		_, err := coll.InsertOne(ctx, bson.D{{Key: "x", Value: 1}})
		return err
	}
	if err := tx.Run(ctx, insert); err != nil {
		t.Fatal(err)
	}
	ins := fs.commands("insert")
	if lsid(ins[0]) != string(sess.ID()) {
		t.Errorf("the transaction ran in session %x, not the caller's %x", lsid(ins[0]), sess.ID())
	}
	if sess.TransactionRunning() {
		t.Error("the caller's session is still in a transaction")
	}
	// The caller's session stays usable: Run does not end it.
	if err := insert(ctx); err != nil {
		t.Fatalf("the caller's session after Run: %v", err)
	}

	// Nested: the caller's session is already in this transaction.
	err = tx.Run(ctx, func(ctx context.Context) error {
		return tx.Run(ctx, insert)
	})
	if !errors.Is(err, consistency.ErrTransactionInProgress) {
		t.Errorf("nested Run = %v, want ErrTransactionInProgress", err)
	}

	// A session of another client is not used.
	other, _ := fakeClient(t, nil, newScript(nil).reply)
	osess, err := other.StartSession()
	if err != nil {
		t.Fatal(err)
	}
	defer osess.EndSession(context.Background())
	before := len(fs.commands("insert"))
	if err := tx.Run(mongo.NewSessionContext(context.Background(), osess), insert); err != nil {
		t.Fatalf("Run with another client's session: %v", err)
	}
	ins = fs.commands("insert")[before:]
	if len(ins) != 1 || lsid(ins[0]) == lsid(fs.commands("insert")[0]) {
		t.Errorf("with another client's session in ctx the transaction did not get a session of its own")
	}
}

// TestTransactorPanic checks that a panic in fn aborts the transaction on
// the caller's session before it goes on, so a handler that recovers does
// not keep making calls inside it.
func TestTransactorPanic(t *testing.T) {
	tx, coll, fs := fakeTransactor(t, nil)
	sess, err := coll.Database().Client().StartSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.EndSession(context.Background())
	ctx := mongo.NewSessionContext(context.Background(), sess)
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Fatalf("recovered %v, want the panic to go on", r)
			}
		}()
		_ = tx.Run(ctx, func(ctx context.Context) error {
			if _, err := coll.InsertOne(ctx, bson.D{{Key: "x", Value: 1}}); err != nil {
				return err
			}
			panic("boom")
		})
	}()
	if sess.TransactionRunning() {
		t.Fatal("the caller's session is still in the transaction after the panic")
	}
	if n := len(fs.commands("abortTransaction")); n != 1 {
		t.Errorf("%d aborts sent, want 1", n)
	}
	if n := len(fs.commands("commitTransaction")); n != 0 {
		t.Errorf("%d commits sent after a panic", n)
	}
}

// TestTransactorFerretDBWithSetName: FerretDB started with --repl-set-name
// (so that drivers and tools expecting a replica set connect) answers hello
// with a setName but has no transactions. The Transactor must find that out
// before running fn, as Preflight does, and say ErrTransactionsUnsupported:
// it took the setName for a replica set, ran fn, and returned whatever the
// first operation failed with (FerretDB v1.24.2 so started answers
// '(FailedToParse) insert: unknown field "readConcern"').
func TestTransactorFerretDBWithSetName(t *testing.T) {
	tx, coll, _ := fakeTransactor(t, map[string][]bson.D{
		"buildInfo": {okReply(bson.E{Key: "version", Value: "7.0.42"}, bson.E{Key: "ferretdbVersion", Value: "v1.24.2"})},
		"insert":    {errReply(9, "FailedToParse")},
	})
	called := false
	err := tx.Run(context.Background(), func(ctx context.Context) error {
		called = true
		_, err := coll.InsertOne(ctx, bson.D{{Key: "x", Value: 1}})
		return err
	})
	if !errors.Is(err, consistency.ErrTransactionsUnsupported) {
		t.Errorf("Run = %v, want ErrTransactionsUnsupported", err)
	}
	if called {
		t.Error("fn ran on a server without transactions")
	}
	if ok, err := tx.Supported(context.Background()); ok || err != nil {
		t.Errorf("Supported = %v, %v; want false", ok, err)
	}
}
