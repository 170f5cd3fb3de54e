package consistency_test

// Integration tests on the MongoDB wire protocol: they run against whatever
// testenv finds (FerretDB on our machines, a MongoDB replica set through
// testcontainers elsewhere) and claim nothing that FerretDB cannot show:
// no concurrency safety, no transactions, no cluster times.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/activekit/activekit/consistency"
	"github.com/activekit/activekit/internal/testenv"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// levelClient is a client of the test server made with ClientOptions.
func levelClient(t *testing.T, l consistency.Level) *mongo.Client {
	t.Helper()
	c, err := mongo.Connect(consistency.ClientOptions(l, 20*time.Second).ApplyURI(testenv.MongoURI(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	return c
}

func TestLevelsCRUD(t *testing.T) {
	client := testenv.Mongo(t)
	db := testenv.MongoDatabase(t, client)
	ctx := testCtx(t)
	for _, l := range []consistency.Level{consistency.Strong, consistency.Causal, consistency.Fast} {
		t.Run(l.String(), func(t *testing.T) {
			coll := consistency.Collection(db, "crud_"+l.String(), l)
			if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "a"}, {Key: "n", Value: 1}}); err != nil {
				t.Fatalf("insert at %s: %v", l, err)
			}
			if _, err := coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: "a"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}}); err != nil {
				t.Fatalf("update at %s: %v", l, err)
			}
			// Read back through the same level, through WithLevel, and
			// through a database at the level.
			for name, c := range map[string]*mongo.Collection{
				"Collection": coll,
				"WithLevel":  consistency.WithLevel(db.Collection(coll.Name()), l),
				"Database":   consistency.Database(client, db.Name(), l).Collection(coll.Name()),
			} {
				var doc struct{ N int }
				if err := c.FindOne(ctx, bson.D{{Key: "_id", Value: "a"}}).Decode(&doc); err != nil {
					t.Fatalf("%s find at %s: %v", name, l, err)
				}
				if doc.N != 2 {
					t.Errorf("%s read n=%d at %s, want 2", name, doc.N, l)
				}
			}
			res, err := coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: "a"}})
			if err != nil || res.DeletedCount != 1 {
				t.Fatalf("delete at %s: %v, %+v", l, err, res)
			}
		})
	}
}

func TestClientOptionsConnect(t *testing.T) {
	c := levelClient(t, consistency.Strong)
	ctx := testCtx(t)
	coll := testenv.MongoDatabase(t, c).Collection("c")
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "x", Value: 1}}); err != nil {
		t.Fatal(err)
	}
	if n, err := coll.CountDocuments(ctx, bson.D{}); err != nil || n != 1 {
		t.Fatalf("count = %d, %v", n, err)
	}
}

func TestInsertOnce(t *testing.T) {
	client := testenv.Mongo(t)
	ctx := testCtx(t)
	coll := consistency.Collection(testenv.MongoDatabase(t, client), "payments", consistency.Strong)
	if err := consistency.EnsureOnceIndex(ctx, coll); err != nil {
		t.Fatal(err)
	}
	if err := consistency.EnsureOnceIndex(ctx, coll); err != nil {
		t.Fatalf("second EnsureOnceIndex: %v", err)
	}
	// Another unique index, to tell its duplicates from ours.
	if _, err := coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "ref", Value: 1}}, Options: options.Index().SetUnique(true)}); err != nil {
		t.Fatal(err)
	}

	type payment struct {
		Ref    string `bson:"ref"`
		Amount int    `bson:"amount"`
	}
	inserted, err := consistency.InsertOnce(ctx, coll, "req-1", payment{Ref: "p1", Amount: 10})
	if err != nil || !inserted {
		t.Fatalf("first insert: inserted=%v err=%v", inserted, err)
	}
	inserted, err = consistency.InsertOnce(ctx, coll, "req-1", payment{Ref: "p1", Amount: 10})
	if err != nil || inserted {
		t.Fatalf("repeat: inserted=%v err=%v, want already done", inserted, err)
	}
	inserted, err = consistency.InsertOnce(ctx, coll, "req-2", payment{Ref: "p2", Amount: 20})
	if err != nil || !inserted {
		t.Fatalf("another key: inserted=%v err=%v", inserted, err)
	}
	// A duplicate on the other unique index is a real failure.
	inserted, err = consistency.InsertOnce(ctx, coll, "req-3", payment{Ref: "p1", Amount: 30})
	if err == nil || inserted || !consistency.IsDuplicateKey(err) {
		t.Fatalf("duplicate ref under a new key: inserted=%v err=%v, want a duplicate key error", inserted, err)
	}
	n, err := coll.CountDocuments(ctx, bson.D{})
	if err != nil || n != 2 {
		t.Fatalf("%d documents, %v; want 2", n, err)
	}
	var doc bson.M
	if err := coll.FindOne(ctx, bson.D{{Key: consistency.DefaultKeyField, Value: "req-1"}}).Decode(&doc); err != nil || doc["amount"] != int32(10) {
		t.Fatalf("stored document %v, %v", doc, err)
	}

	// Keyed by _id: no index needed.
	inserted, err = consistency.InsertOnce(ctx, coll, "id-1", bson.D{{Key: "ref", Value: "p9"}}, consistency.WithKeyField("_id"))
	if err != nil || !inserted {
		t.Fatalf("by _id: inserted=%v err=%v", inserted, err)
	}
	inserted, err = consistency.InsertOnce(ctx, coll, "id-1", bson.D{{Key: "ref", Value: "p9"}}, consistency.WithKeyField("_id"))
	if err != nil || inserted {
		t.Fatalf("by _id repeat: inserted=%v err=%v", inserted, err)
	}

	// Arguments.
	if _, err := consistency.InsertOnce(ctx, coll, "", bson.D{}); !errors.Is(err, consistency.ErrInvalidOption) {
		t.Errorf("empty key: %v", err)
	}
	if _, err := consistency.InsertOnce(ctx, coll, "k", bson.D{{Key: consistency.DefaultKeyField, Value: "other"}}); !errors.Is(err, consistency.ErrInvalidOption) {
		t.Errorf("conflicting key field: %v", err)
	}
}

func TestUpdateIfVersionSingleClient(t *testing.T) {
	client := testenv.Mongo(t)
	ctx := testCtx(t)
	coll := consistency.Collection(testenv.MongoDatabase(t, client), "carts", consistency.Strong)
	if _, err := coll.InsertMany(ctx, []any{
		bson.D{{Key: "_id", Value: "c1"}, {Key: "items", Value: 0}, {Key: "version", Value: int64(0)}},
		bson.D{{Key: "_id", Value: "c2"}, {Key: "items", Value: 0}}, // no version yet
	}); err != nil {
		t.Fatal(err)
	}
	byID := func(id string) bson.D { return bson.D{{Key: "_id", Value: id}} }
	add := bson.D{{Key: "$inc", Value: bson.D{{Key: "items", Value: 1}}}}

	v, err := consistency.UpdateIfVersion(ctx, coll, byID("c1"), 0, add)
	if err != nil || v != 1 {
		t.Fatalf("first update: v=%d err=%v", v, err)
	}
	v, err = consistency.UpdateIfVersion(ctx, coll, byID("c1"), 1, bson.D{{Key: "$set", Value: bson.D{{Key: "note", Value: "x"}}}})
	if err != nil || v != 2 {
		t.Fatalf("second update: v=%d err=%v", v, err)
	}
	// A stale writer.
	_, err = consistency.UpdateIfVersion(ctx, coll, byID("c1"), 1, add)
	var ce *consistency.ConflictError
	if !errors.Is(err, consistency.ErrConflict) || !errors.As(err, &ce) || ce.Expected != 1 || ce.Actual != 2 {
		t.Fatalf("stale update: %v, want conflict 1 vs 2", err)
	}
	// Not found is not a conflict.
	if _, err := consistency.UpdateIfVersion(ctx, coll, byID("nope"), 0, add); !errors.Is(err, consistency.ErrNotFound) || errors.Is(err, consistency.ErrConflict) {
		t.Fatalf("missing document: %v, want ErrNotFound", err)
	}
	// A document without a version is at version 0.
	v, err = consistency.UpdateIfVersion(ctx, coll, byID("c2"), 0, add)
	if err != nil || v != 1 {
		t.Fatalf("unversioned document: v=%d err=%v", v, err)
	}
	// Custom field name.
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "c3"}, {Key: "rev", Value: int32(4)}}); err != nil {
		t.Fatal(err)
	}
	v, err = consistency.UpdateIfVersion(ctx, coll, byID("c3"), 4, add, consistency.WithVersionField("rev"))
	if err != nil || v != 5 {
		t.Fatalf("custom field: v=%d err=%v", v, err)
	}

	var doc struct {
		Items   int
		Version int64
		Note    string
	}
	if err := coll.FindOne(ctx, byID("c1")).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if doc.Items != 1 || doc.Version != 2 || doc.Note != "x" {
		t.Fatalf("c1 = %+v, want items 1, version 2, note x: the refused update must not apply", doc)
	}
	if _, err := consistency.UpdateIfVersion(ctx, coll, byID("c1"), 2, bson.D{{Key: "items", Value: 5}}); !errors.Is(err, consistency.ErrInvalidUpdate) {
		t.Errorf("replacement: %v, want ErrInvalidUpdate", err)
	}
}

func TestPreflight(t *testing.T) {
	client := testenv.Mongo(t)
	ctx := testCtx(t)
	server := testenv.RequireMongo(t, client)
	r, err := consistency.Preflight(ctx, client, consistency.PreflightOptions{Collections: []string{"app.orders"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report: %+v", r)
	if r.Flavour != server.Flavour {
		t.Errorf("flavour %q, testenv says %q", r.Flavour, server.Flavour)
	}
	if fast := r.Supports(consistency.Fast); fast != nil {
		t.Errorf("Fast unsupported: %v", fast)
	}
	switch {
	case server.Flavour == "ferretdb":
		if r.Topology != consistency.Standalone || r.Transactions || r.RetryableWrites || r.ClusterTimes {
			t.Errorf("FerretDB report %+v", r)
		}
		if !containsProblem(r.Problems, "not a replica set") || !containsProblem(r.Problems, "FerretDB") {
			t.Errorf("problems %q do not say it is not a replica set and FerretDB", r.Problems)
		}
		for _, l := range []consistency.Level{consistency.Strong, consistency.Causal} {
			err := r.Supports(l)
			var ue *consistency.UnsupportedError
			if !errors.Is(err, consistency.ErrLevelUnsupported) || !errors.As(err, &ue) || ue.Level != l || len(ue.Reasons) == 0 {
				t.Errorf("Supports(%s) = %v, want an UnsupportedError", l, err)
			}
		}
	case server.ReplicaSet != "":
		if r.Topology != consistency.ReplicaSet || r.ReplicaSet != server.ReplicaSet || !r.Transactions || !r.RetryableWrites {
			t.Errorf("replica set report %+v", r)
		}
		if r.DataBearingVoters < 1 || !r.MajorityWritable {
			t.Errorf("members: %+v", r)
		}
		if err := r.Supports(consistency.Strong); err != nil {
			t.Errorf("Supports(strong) = %v", err)
		}
		if err := r.Supports(consistency.Causal); err != nil && server.ClusterTime {
			t.Errorf("Supports(causal) = %v", err)
		}
	}
	if len(r.Collections) != 1 || r.Collections[0].Namespace != "app.orders" || r.Collections[0].Sharded && !server.Sharded {
		t.Errorf("collections %+v", r.Collections)
	}
}

func containsProblem(ps []string, s string) bool {
	for _, p := range ps {
		if strings.Contains(p, s) {
			return true
		}
	}
	return false
}

func TestTransactionsUnsupported(t *testing.T) {
	client := testenv.Mongo(t)
	server := testenv.RequireMongo(t, client)
	if server.Has(testenv.MongoTransactions) {
		t.Skip("the server has transactions; TestTransactionRetries covers it")
	}
	ctx := testCtx(t)
	tx, err := consistency.NewTransactor(client)
	if err != nil {
		t.Fatal(err)
	}
	called := false
	err = tx.Run(ctx, func(ctx context.Context) error { called = true; return nil })
	if !errors.Is(err, consistency.ErrTransactionsUnsupported) {
		t.Fatalf("Run = %v, want ErrTransactionsUnsupported", err)
	}
	if called {
		t.Error("fn ran on a server without transactions")
	}
	if ok, err := tx.Supported(ctx); ok || err != nil {
		t.Errorf("Supported = %v, %v", ok, err)
	}
}

func TestHealthCheck(t *testing.T) {
	ctx := testCtx(t)
	if err := consistency.HealthCheck(testenv.Mongo(t))(ctx); err != nil {
		t.Fatalf("health check on a live server: %v", err)
	}
	if err := consistency.HealthCheck(offlineClient(t))(ctx); err == nil {
		t.Fatal("health check on no server passed")
	}
}

// TestMiddlewareRoundTripServer runs the middleware in an HTTP server in
// front of the real server: a write and a read through the request's
// session, and a token issued exactly when the server gives cluster times.
func TestMiddlewareRoundTripServer(t *testing.T) {
	client := testenv.Mongo(t)
	server := testenv.RequireMongo(t, client)
	coll := consistency.Collection(testenv.MongoDatabase(t, client), "notes", consistency.Causal)
	codec := mustCodec(t, []consistency.Key{key("k1")})
	reader := sdkmetric.NewManualReader()
	mw, err := consistency.NewMiddleware(client, codec,
		consistency.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mw.Handler(notesHandler(coll)))
	defer srv.Close()
	tr := &consistency.Transport{Base: srv.Client().Transport}
	hc := &http.Client{Transport: tr}

	if got := do(t, hc, http.MethodPost, srv.URL+"/n1"); got != "created" {
		t.Fatalf("POST: %q", got)
	}
	issued := tr.Token() != ""
	if issued != server.ClusterTime {
		t.Fatalf("token issued = %v, server has cluster times = %v", issued, server.ClusterTime)
	}
	if got := do(t, hc, http.MethodGet, srv.URL+"/n1"); got != "n1" {
		t.Fatalf("GET: %q", got)
	}
	// A forged token is ignored, not an error.
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/n1", nil)
	req.Header.Set(consistency.DefaultTokenHeader, "AQJrMQforged")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("forged token: status %d", resp.StatusCode)
	}
	counts := tokenCounts(t, reader)
	if counts["malformed"]+counts["forged"] != 1 {
		t.Errorf("bad tokens counted %v", counts)
	}
	if server.ClusterTime && counts["accepted"] < 1 || !server.ClusterTime && (counts["issued"] != 0 || counts["missing"] != 2) {
		t.Errorf("token counts %v (cluster times: %v)", counts, server.ClusterTime)
	}
}

// notesHandler stores a note on POST /{id} and reads it on GET /{id}, with
// the request context (and so the middleware's session).
func notesHandler(coll *mongo.Collection) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/")
		switch r.Method {
		case http.MethodPost:
			if _, err := coll.InsertOne(r.Context(), bson.D{{Key: "_id", Value: id}}); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			_, _ = io.WriteString(w, "created")
		default:
			var doc struct {
				ID string `bson:"_id"`
			}
			err := coll.FindOne(r.Context(), bson.D{{Key: "_id", Value: id}}).Decode(&doc)
			if errors.Is(err, mongo.ErrNoDocuments) {
				http.NotFound(w, r)
				return
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			_, _ = io.WriteString(w, doc.ID)
		}
	})
}

func do(t *testing.T, hc *http.Client, method, url string) string {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Sprintf("%d %s", resp.StatusCode, b)
	}
	return string(b)
}
