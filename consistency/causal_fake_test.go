package consistency_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/activekit/activekit/consistency"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
)

// TestMiddlewareCausalWire proves, on the wire, what a replica set can only
// show statistically: a request carrying a token makes its reads wait for
// the token's position (readConcern.afterClusterTime, and the token's
// $clusterTime gossiped), and the response's token carries the position
// the server reported for the request's own operations.
func TestMiddlewareCausalWire(t *testing.T) {
	tokenOp := bson.Timestamp{T: 1_700_000_100, I: 3}
	tokenCT := serverClusterTime(t, bson.Timestamp{T: 1_700_000_100, I: 4})
	replyOp := bson.Timestamp{T: 1_700_000_200, I: 1}
	replyCT := serverClusterTime(t, bson.Timestamp{T: 1_700_000_200, I: 2})

	client, fs := fakeClient(t, consistency.ClientOptions(consistency.Causal, 0), func(cmd bson.Raw) bson.D {
		if commandName(cmd) != "find" {
			return okReply()
		}
		return okReply(
			bson.E{Key: "cursor", Value: bson.D{{Key: "firstBatch", Value: bson.A{bson.D{{Key: "_id", Value: "n1"}}}}, {Key: "id", Value: int64(0)}, {Key: "ns", Value: "db.notes"}}},
			bson.E{Key: "operationTime", Value: replyOp},
			bson.E{Key: "$clusterTime", Value: lookup(replyCT, "$clusterTime")},
		)
	})
	codec := mustCodec(t, []consistency.Key{key("k1")})
	mw, err := consistency.NewMiddleware(client, codec)
	if err != nil {
		t.Fatal(err)
	}
	coll := consistency.Collection(client.Database("db"), "notes", consistency.Causal)
	h := mw.Handler(notesHandler(coll))

	in, err := codec.Encode(consistency.Token{ClusterTime: tokenCT, OperationTime: &tokenOp})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		token string
		after *bson.Timestamp // the afterClusterTime the read must carry; nil for none
	}{
		{"with a token", in, &tokenOp},
		{"without a token", "", nil},
		{"with a forged token", in[:len(in)-4] + "AAAA", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(fs.commands("find"))
			req := httptest.NewRequest(http.MethodGet, "/n1", nil)
			if tc.token != "" {
				req.Header.Set(consistency.DefaultTokenHeader, tc.token)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK || rec.Body.String() != "n1" {
				t.Fatalf("response %d %q", rec.Code, rec.Body.String())
			}
			finds := fs.commands("find")[before:]
			if len(finds) != 1 {
				t.Fatalf("%d finds sent, want 1", len(finds))
			}
			find := finds[0]
			if lvl, _ := lookup(find, "readConcern", "level").StringValueOK(); lvl != "majority" {
				t.Errorf("read concern %v, want majority", lookup(find, "readConcern"))
			}
			at, ai, ok := lookup(find, "readConcern", "afterClusterTime").TimestampOK()
			switch {
			case tc.after == nil && ok:
				t.Errorf("the read waits for %d.%d with no valid token", at, ai)
			case tc.after != nil && (!ok || at != tc.after.T || ai != tc.after.I):
				t.Errorf("read concern %v, want afterClusterTime %v", lookup(find, "readConcern"), *tc.after)
			}
			if tc.after != nil {
				gt, gi, _ := lookup(find, "$clusterTime", "clusterTime").TimestampOK()
				wt, wi, _ := lookup(tokenCT, "$clusterTime", "clusterTime").TimestampOK()
				if (bson.Timestamp{T: gt, I: gi}).Before(bson.Timestamp{T: wt, I: wi}) {
					t.Errorf("the read gossiped $clusterTime %v, not at least the token's", lookup(find, "$clusterTime"))
				}
			}
			out, err := codec.Decode(rec.Header().Get(consistency.DefaultTokenHeader))
			if err != nil {
				t.Fatalf("response token: %v", err)
			}
			if out.OperationTime == nil || !out.OperationTime.Equal(replyOp) || string(out.ClusterTime) != string(replyCT) {
				t.Errorf("response token at %v / %v, want the server's reply %v / %v", out.OperationTime, out.ClusterTime, replyOp, replyCT)
			}
		})
	}
}

// TestSessionMustBeTheClients shows why the Middleware's client must be the
// one the handler uses: the driver refuses a session of another client.
func TestSessionMustBeTheClients(t *testing.T) {
	a, _ := fakeClient(t, nil, newScript(nil).reply)
	b, _ := fakeClient(t, nil, newScript(nil).reply)
	mw, err := consistency.NewMiddleware(a, mustCodec(t, []consistency.Key{key("k1")}))
	if err != nil {
		t.Fatal(err)
	}
	var got error
	h := mw.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, got = b.Database("db").Collection("c").InsertOne(r.Context(), bson.D{})
	}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
	if !errors.Is(got, mongo.ErrWrongClient) {
		t.Fatalf("insert through another client = %v, want mongo.ErrWrongClient", got)
	}
}

// TestHealthCheckSecondary checks that HealthCheck fails on a member that
// answers but is not a writable primary, which is what a client connected
// directly to one member reaches after a step-down: a ping would pass.
func TestHealthCheckSecondary(t *testing.T) {
	client, fs := fakeClient(t, nil, newScript(nil).reply)
	check := consistency.HealthCheck(client)
	if err := check(context.Background()); err != nil {
		t.Fatalf("on a primary: %v", err)
	}
	fs.secondary.Store(true)
	if err := client.Ping(context.Background(), readpref.Primary()); err != nil {
		t.Fatalf("ping: %v", err) // the driver sends it to the member it has
	}
	if err := check(context.Background()); !errors.Is(err, consistency.ErrNotWritablePrimary) {
		t.Fatalf("on a secondary: %v, want ErrNotWritablePrimary", err)
	}
}
