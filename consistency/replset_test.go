package consistency_test

// Tests that need a real MongoDB replica set: they skip, with the reason,
// on a server without transactions or cluster times (FerretDB, a standalone
// mongod), and run through testcontainers where Docker answers. FerretDB
// loses updates under concurrent compare-and-set, so it never backs a
// concurrency claim here.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/consistency"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/retry"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// TestConcurrentCompareAndSet increments one counter from many goroutines
// with UpdateIfVersion, each re-reading and retrying on ErrConflict, and
// checks that no update is lost.
func TestConcurrentCompareAndSet(t *testing.T) {
	client := levelClient(t, consistency.Strong)
	testenv.RequireMongo(t, client, testenv.MongoTransactions)
	ctx := testCtx(t)
	coll := consistency.Collection(testenv.MongoDatabase(t, client), "counters", consistency.Strong)
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "c"}, {Key: "n", Value: 0}, {Key: "version", Value: int64(0)}}); err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 25
	var conflicts atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for done := 0; done < each; {
				var cur struct{ Version int64 }
				if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: "c"}}).Decode(&cur); err != nil {
					errs <- err
					return
				}
				_, err := consistency.UpdateIfVersion(ctx, coll, bson.D{{Key: "_id", Value: "c"}}, cur.Version,
					bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}})
				switch {
				case err == nil:
					done++
				case errors.Is(err, consistency.ErrConflict):
					conflicts.Add(1)
				default:
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var got struct {
		N       int
		Version int64
	}
	if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: "c"}}).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.N != workers*each || got.Version != workers*each {
		t.Fatalf("n=%d version=%d, want %d each: updates were lost", got.N, got.Version, workers*each)
	}
	t.Logf("%d increments, %d conflicts retried", workers*each, conflicts.Load())
}

// TestTransactionRetries moves money between two accounts from many
// goroutines at once: read-modify-write transactions on the same documents
// collide (WriteConflict, labelled TransientTransactionError), the
// Transactor retries them, and the total is conserved with every transfer
// applied exactly once.
func TestTransactionRetries(t *testing.T) {
	client := levelClient(t, consistency.Strong)
	testenv.RequireMongo(t, client, testenv.MongoTransactions)
	ctx := testCtx(t)
	coll := consistency.Collection(testenv.MongoDatabase(t, client), "accounts", consistency.Strong)
	if _, err := coll.InsertMany(ctx, []any{
		bson.D{{Key: "_id", Value: "a"}, {Key: "balance", Value: 1000}},
		bson.D{{Key: "_id", Value: "b"}, {Key: "balance", Value: 0}},
	}); err != nil {
		t.Fatal(err)
	}
	var retries atomic.Int64
	tx, err := consistency.NewTransactor(client,
		consistency.WithTransactionPolicy(retry.Policy{InitialInterval: time.Millisecond, MaxInterval: 50 * time.Millisecond, MaxAttempts: 100, MaxElapsedTime: 25 * time.Second}),
		consistency.WithRetryOptions(retry.WithOnRetry(func(int, error, time.Duration) { retries.Add(1) })))
	if err != nil {
		t.Fatal(err)
	}
	balance := func(ctx context.Context, id string) (int, error) {
		var d struct{ Balance int }
		err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&d)
		return d.Balance, err
	}
	transfer := func(ctx context.Context) error {
		a, err := balance(ctx, "a")
		if err != nil {
			return err
		}
		b, err := balance(ctx, "b")
		if err != nil {
			return err
		}
		if _, err := coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: "a"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "balance", Value: a - 1}}}}); err != nil {
			return err
		}
		_, err = coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: "b"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "balance", Value: b + 1}}}})
		return err
	}
	const workers, each = 6, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if err := tx.Run(ctx, transfer); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("transfer: %v", err)
	}
	a, _ := balance(ctx, "a")
	b, _ := balance(ctx, "b")
	if a != 1000-workers*each || b != workers*each {
		t.Fatalf("a=%d b=%d, want %d and %d", a, b, 1000-workers*each, workers*each)
	}
	t.Logf("%d transfers, %d retries", workers*each, retries.Load())

	// A failure that is not transient is returned as it is, and rolls back.
	errBusiness := errors.New("insufficient funds")
	err = tx.Run(ctx, func(ctx context.Context) error {
		if _, err := coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: "a"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "balance", Value: -1}}}}); err != nil {
			return err
		}
		return errBusiness
	})
	if err != errBusiness {
		t.Fatalf("Run = %v, want the function's own error", err)
	}
	if a2, _ := balance(ctx, "a"); a2 != a {
		t.Fatalf("balance %d after an aborted transaction, want %d", a2, a)
	}

	// A conflict that does not depend on scheduling: another transaction
	// holds an uncommitted write to "b", so the Transactor's first attempt
	// fails with WriteConflict (TransientTransactionError). The blocker
	// commits when the Transactor schedules its retry, and the second
	// attempt applies on top of it.
	blocker, err := client.StartSession()
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.EndSession(context.Background())
	if err := blocker.StartTransaction(consistency.Strong.TransactionOptions()); err != nil {
		t.Fatal(err)
	}
	bctx := mongo.NewSessionContext(ctx, blocker)
	if _, err := coll.UpdateOne(bctx, bson.D{{Key: "_id", Value: "b"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "balance", Value: 100}}}}); err != nil {
		t.Fatal(err)
	}
	var retryErrs []error
	tx2, err := consistency.NewTransactor(client,
		consistency.WithTransactionPolicy(retry.Policy{InitialInterval: time.Millisecond, MaxAttempts: 3, Jitter: retry.NoJitter}),
		consistency.WithRetryOptions(retry.WithOnRetry(func(_ int, err error, _ time.Duration) {
			retryErrs = append(retryErrs, err)
			if blocker.TransactionRunning() {
				if err := blocker.CommitTransaction(context.Background()); err != nil {
					t.Errorf("committing the blocker: %v", err)
				}
			}
		})))
	if err != nil {
		t.Fatal(err)
	}
	attempts := 0
	err = tx2.Run(ctx, func(ctx context.Context) error {
		attempts++
		_, err := coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: "b"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "balance", Value: 1}}}})
		return err
	})
	if err != nil {
		t.Fatalf("Run against a conflicting transaction: %v", err)
	}
	var le mongo.LabeledError
	if attempts != 2 || len(retryErrs) != 1 || !errors.As(retryErrs[0], &le) || !le.HasErrorLabel("TransientTransactionError") {
		t.Fatalf("%d attempts, retried on %v; want 2 attempts, one retry on a TransientTransactionError", attempts, retryErrs)
	}
	if b2, _ := balance(ctx, "b"); b2 != b+101 {
		t.Fatalf("b = %d, want %d: the blocker's write and the retried one, once each", b2, b+101)
	}
}

// TestCausalReadsAcrossInstances runs two instances (two clients, two HTTP
// servers with the middleware and shared keys). A user writes through one
// and, carrying the token, reads through the other, from a secondary when
// the replica set has one: every read sees the write.
func TestCausalReadsAcrossInstances(t *testing.T) {
	probe := testenv.Mongo(t)
	testenv.RequireMongo(t, probe, testenv.MongoCausalClusterTime)
	db := testenv.MongoDatabase(t, probe)
	codec := mustCodec(t, []consistency.Key{key("k1")})

	var hello struct{ Hosts []string }
	if err := probe.Database("admin").RunCommand(testCtx(t), bson.D{{Key: "hello", Value: 1}}).Decode(&hello); err != nil {
		t.Fatal(err)
	}
	readFrom := consistency.Causal.ReadPreference()
	if len(hello.Hosts) > 1 {
		readFrom = readpref.Secondary()
	} else {
		t.Log("single-member replica set: reads go to the nearest member, the primary")
	}

	// B's reads, as sent: on a single-node set every read would see the
	// write anyway, so what proves the token works is that each read
	// carries afterClusterTime at or past the write's operation time.
	var (
		mu    sync.Mutex
		after []bson.Timestamp // afterClusterTime of each find B sent
	)
	monitor := &event.CommandMonitor{Started: func(_ context.Context, e *event.CommandStartedEvent) {
		if e.CommandName != "find" {
			return
		}
		ts, inc, _ := e.Command.Lookup("readConcern", "afterClusterTime").TimestampOK()
		mu.Lock()
		after = append(after, bson.Timestamp{T: ts, I: inc})
		mu.Unlock()
	}}
	reader := sdkmetric.NewManualReader()
	instance := func(rp *readpref.ReadPref, mp *sdkmetric.MeterProvider) *httptest.Server {
		o := consistency.ClientOptions(consistency.Causal, 20*time.Second).ApplyURI(testenv.MongoURI(t))
		if mp != nil {
			o.SetMonitor(monitor)
		}
		c, err := mongo.Connect(o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
		coll := consistency.Collection(c.Database(db.Name()), "notes", consistency.Causal).
			Clone(options.Collection().SetReadPreference(rp))
		opts := []consistency.MiddlewareOption{}
		if mp != nil {
			opts = append(opts, consistency.WithMeterProvider(mp))
		}
		mw, err := consistency.NewMiddleware(c, codec, opts...)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(mw.Handler(notesHandler(coll)))
		t.Cleanup(srv.Close)
		return srv
	}
	a := instance(consistency.Causal.ReadPreference(), nil)
	b := instance(readFrom, sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))

	const n = 20
	for i := range n {
		tr := &consistency.Transport{Base: a.Client().Transport}
		hc := &http.Client{Transport: tr}
		id := fmt.Sprintf("note-%d", i)
		if got := do(t, hc, http.MethodPost, a.URL+"/"+id); got != "created" {
			t.Fatalf("write on A: %q", got)
		}
		if tr.Token() == "" {
			t.Fatal("A issued no token")
		}
		written, err := codec.Decode(tr.Token())
		if err != nil || written.OperationTime == nil {
			t.Fatalf("A's token %+v: %v", written, err)
		}
		if got := do(t, hc, http.MethodGet, b.URL+"/"+id); got != id {
			t.Fatalf("read on B after write on A: %q, want %q", got, id)
		}
		mu.Lock()
		var last bson.Timestamp
		if len(after) > 0 {
			last = after[len(after)-1]
		}
		mu.Unlock()
		if last.Before(*written.OperationTime) {
			t.Fatalf("B read with afterClusterTime %v, before A's write at %v: the token did not reach the read", last, *written.OperationTime)
		}
	}
	if got := tokenCounts(t, reader)["accepted"]; got != n {
		t.Errorf("B accepted %d tokens, want %d", got, n)
	}
}

// TestStepDownDuringWrites steps the primary down while a writer inserts
// with InsertOnce through a Strong client with retryable writes, retrying
// what the driver could not hide. Every acknowledged write must be there
// afterwards, exactly once.
func TestStepDownDuringWrites(t *testing.T) {
	client := levelClient(t, consistency.Strong)
	testenv.RequireMongo(t, client, testenv.MongoTransactions)
	server := testenv.RequireMongo(t, client)
	if server.Sharded {
		t.Skip("replSetStepDown needs a replica set member, not mongos")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	coll := consistency.Collection(testenv.MongoDatabase(t, client), "orders", consistency.Strong)
	if err := consistency.EnsureOnceIndex(ctx, coll); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { waitPrimary(t, client) })
	termBefore := replSetTerm(t, client)

	const before, after = 20, 30
	steppedDown := make(chan struct{})
	started := make(chan struct{})
	acked := make([]string, 0, before+after)
	var ourRetries int
	writerDone := make(chan error, 1)
	go func() {
		var sinceStepDown int
		for i := 0; ; i++ {
			if i == before {
				close(started)
			}
			select {
			case <-steppedDown:
				sinceStepDown++
			default:
			}
			if sinceStepDown > after {
				writerDone <- nil
				return
			}
			key := fmt.Sprintf("order-%d", i)
			for {
				_, err := consistency.InsertOnce(ctx, coll, key, bson.D{{Key: "i", Value: i}})
				if err == nil {
					acked = append(acked, key)
					break
				}
				if ctx.Err() != nil || !consistency.IsRetryable(err) && !consistency.IsAmbiguous(err) {
					writerDone <- fmt.Errorf("write %d: %w", i, err)
					return
				}
				ourRetries++
			}
		}
	}()
	select {
	case <-started:
	case err := <-writerDone:
		t.Fatalf("writer stopped before the step-down: %v", err)
	}
	err := client.Database("admin").RunCommand(ctx, bson.D{
		{Key: "replSetStepDown", Value: 5}, {Key: "secondaryCatchUpPeriodSecs", Value: 2}, {Key: "force", Value: true},
	}).Err()
	if err != nil && !mongo.IsNetworkError(err) {
		t.Fatalf("replSetStepDown: %v", err)
	}
	close(steppedDown)
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	waitPrimary(t, client)
	if term := replSetTerm(t, client); term <= termBefore {
		t.Fatalf("replica set term %d, was %d: the primary never stepped down, so this test proved nothing", term, termBefore)
	}
	for _, key := range acked {
		n, err := coll.CountDocuments(ctx, bson.D{{Key: consistency.DefaultKeyField, Value: key}})
		if err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Fatalf("acknowledged write %s found %d times, want once", key, n)
		}
	}
	t.Logf("%d acknowledged writes across a step-down, %d retried by the caller after the driver's own retry", len(acked), ourRetries)
}

// waitPrimary waits until the member the client reaches is a writable
// primary again. On a single-node set stepped down with force, that is
// when the stepdown period ends and the node elects itself.
func waitPrimary(t *testing.T, c *mongo.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	check := consistency.HealthCheck(c)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check(ctx)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no primary after the step-down: %v", err)
		case <-tick.C:
		}
	}
}

// replSetTerm returns the replica set's election term.
func replSetTerm(t *testing.T, c *mongo.Client) int64 {
	t.Helper()
	var st struct {
		Term int64 `bson:"term"`
	}
	if err := c.Database("admin").RunCommand(testCtx(t), bson.D{{Key: "replSetGetStatus", Value: 1}}).Decode(&st); err != nil {
		t.Fatalf("replSetGetStatus: %v", err)
	}
	return st.Term
}
