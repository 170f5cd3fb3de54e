package consistency_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/activekit/activekit/consistency"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// offlineClient is a client whose server does not exist: sessions start
// and advance without any round trip, which is all the middleware needs.
func offlineClient(t *testing.T) *mongo.Client {
	t.Helper()
	c, err := mongo.Connect(options.Client().ApplyURI("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100&connectTimeoutMS=100"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	return c
}

// tokenCounts returns MetricTokens by result.
func tokenCounts(t *testing.T, r *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != consistency.MetricTokens {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				v, _ := dp.Attributes.Value(attribute.Key(consistency.AttrTokenResult))
				out[v.AsString()] += dp.Value
			}
		}
	}
	return out
}

type seen struct {
	sess        bool
	sameSession bool
	clusterTime bson.Raw
	opTime      *bson.Timestamp
}

func TestMiddlewareAdvancesAndIssues(t *testing.T) {
	clock := newFakeClock()
	codec := mustCodec(t, []consistency.Key{key("k1")}, consistency.WithClock(clock.Now), consistency.WithMaxAge(time.Minute))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	mw, err := consistency.NewMiddleware(offlineClient(t), codec, consistency.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	var got seen
	h := mw.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := consistency.SessionFromContext(r.Context())
		got = seen{sess: s != nil}
		if s == nil {
			return
		}
		got.sameSession = mongo.SessionFromContext(r.Context()) == s
		got.clusterTime, got.opTime = s.ClusterTime(), s.OperationTime()
		_, _ = io.WriteString(w, "ok")
	}))

	in := consistency.Token{
		ClusterTime:   serverClusterTime(t, bson.Timestamp{T: 1_700_000_000, I: 9}),
		OperationTime: &bson.Timestamp{T: 1_700_000_000, I: 8},
	}
	forged, _ := mustCodec(t, []consistency.Key{{ID: "k1", Secret: make([]byte, 32)}}).Encode(in)
	expired, _ := codec.Encode(in)
	clock.Advance(2 * time.Minute)
	valid, err := codec.Encode(in) // fresh at the new time
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name      string
		header    string
		advanced  bool
		wantToken bool
	}{
		{"valid", valid, true, true},
		{"missing", "", false, false},
		{"forged", forged, false, false},
		{"expired", expired, false, false},
		{"garbage", "not a token", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			if tc.header != "" {
				req.Header.Set(consistency.DefaultTokenHeader, tc.header)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK || rec.Body.String() != "ok" {
				t.Fatalf("response %d %q: a bad token must never fail the request", rec.Code, rec.Body.String())
			}
			if !got.sess || !got.sameSession {
				t.Fatalf("handler saw session=%v, same in mongo context=%v", got.sess, got.sameSession)
			}
			if adv := got.opTime != nil && got.opTime.Equal(*in.OperationTime) && string(got.clusterTime) == string(in.ClusterTime); adv != tc.advanced {
				t.Fatalf("session advanced = %v, want %v (cluster time %v, operation time %v)", adv, tc.advanced, got.clusterTime, got.opTime)
			}
			out := rec.Header().Get(consistency.DefaultTokenHeader)
			if (out != "") != tc.wantToken {
				t.Fatalf("response token %q, want one: %v", out, tc.wantToken)
			}
			if out != "" {
				tok, err := codec.Decode(out)
				if err != nil {
					t.Fatal(err)
				}
				if !tok.OperationTime.Equal(*in.OperationTime) || string(tok.ClusterTime) != string(in.ClusterTime) {
					t.Errorf("issued token %+v does not carry the session's position", tok)
				}
			}
		})
	}
	counts := tokenCounts(t, reader)
	want := map[string]int64{"accepted": 1, "missing": 1, "forged": 1, "expired": 1, "malformed": 1, "issued": 1}
	for k, v := range want {
		if counts[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, counts[k], v, counts)
		}
	}
}

// TestMiddlewareHeaderTiming checks that the token is in the header however
// the handler starts its response, and that it carries the position at
// that moment: a write after the first body byte is not covered, but
// CurrentToken sees it.
func TestMiddlewareHeaderTiming(t *testing.T) {
	codec := mustCodec(t, []consistency.Key{key("k1")})
	mw, err := consistency.NewMiddleware(offlineClient(t), codec, consistency.WithHeader("X-Causal"))
	if err != nil {
		t.Fatal(err)
	}
	at := func(i uint32) *bson.Timestamp { return &bson.Timestamp{T: 1_700_000_000, I: i} }
	var current string
	tests := []struct {
		name    string
		handler func(w http.ResponseWriter, s *mongo.Session)
		code    int
		want    uint32
	}{
		{"nothing written", func(w http.ResponseWriter, s *mongo.Session) { _ = s.AdvanceOperationTime(at(1)) }, 200, 1},
		{"explicit WriteHeader", func(w http.ResponseWriter, s *mongo.Session) {
			_ = s.AdvanceOperationTime(at(2))
			w.WriteHeader(http.StatusCreated)
			_ = s.AdvanceOperationTime(at(3))
		}, 201, 2},
		{"informational first", func(w http.ResponseWriter, s *mongo.Session) {
			w.WriteHeader(http.StatusEarlyHints)
			_ = s.AdvanceOperationTime(at(4))
			w.WriteHeader(http.StatusAccepted)
		}, 202, 4},
		{"flush", func(w http.ResponseWriter, s *mongo.Session) {
			_ = s.AdvanceOperationTime(at(5))
			w.(http.Flusher).Flush()
			_ = s.AdvanceOperationTime(at(6))
		}, 200, 5},
		{"write after the first body byte", func(w http.ResponseWriter, s *mongo.Session) {
			_ = s.AdvanceOperationTime(at(7))
			_, _ = io.WriteString(w, "streaming")
			_ = s.AdvanceOperationTime(at(8))
		}, 200, 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(mw.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tc.handler(w, consistency.SessionFromContext(r.Context()))
				current, _ = consistency.CurrentToken(r.Context())
			})))
			defer srv.Close()
			resp, err := srv.Client().Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.code)
			}
			tok, err := codec.Decode(resp.Header.Get("X-Causal"))
			if err != nil {
				t.Fatalf("response token: %v", err)
			}
			if tok.OperationTime == nil || tok.OperationTime.I != tc.want {
				t.Errorf("token carries %v, want I=%d", tok.OperationTime, tc.want)
			}
			cur, err := codec.Decode(current)
			if err != nil {
				t.Fatalf("CurrentToken: %v", err)
			}
			if cur.OperationTime.Compare(*tok.OperationTime) < 0 {
				t.Errorf("CurrentToken %v is behind the header's %v", cur.OperationTime, tok.OperationTime)
			}
		})
	}
	if _, ok := consistency.CurrentToken(context.Background()); ok {
		t.Error("CurrentToken outside the middleware returned a token")
	}
}

func TestNewMiddlewareValidates(t *testing.T) {
	codec := mustCodec(t, []consistency.Key{key("k1")})
	c := offlineClient(t)
	for name, f := range map[string]func() error{
		"nil client":   func() error { _, err := consistency.NewMiddleware(nil, codec); return err },
		"nil codec":    func() error { _, err := consistency.NewMiddleware(c, nil); return err },
		"empty header": func() error { _, err := consistency.NewMiddleware(c, codec, consistency.WithHeader("")); return err },
		"nil logger":   func() error { _, err := consistency.NewMiddleware(c, codec, consistency.WithLogger(nil)); return err },
		"nil meter provider": func() error {
			_, err := consistency.NewMiddleware(c, codec, consistency.WithMeterProvider(nil))
			return err
		},
	} {
		if err := f(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestTransportEchoesLatestToken(t *testing.T) {
	codec := mustCodec(t, []consistency.Key{key("k1")})
	tokenAt := func(i uint32) string {
		s, err := codec.Encode(consistency.Token{OperationTime: &bson.Timestamp{T: 100, I: i}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// The server answers each request with the token named in its path and
	// reports the token it received.
	received := make(chan string, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		received <- r.Header.Get(consistency.DefaultTokenHeader)
		switch r.URL.Path {
		case "/t5":
			w.Header().Set(consistency.DefaultTokenHeader, tokenAt(5))
		case "/t3":
			w.Header().Set(consistency.DefaultTokenHeader, tokenAt(3))
		case "/t9":
			w.Header().Set(consistency.DefaultTokenHeader, tokenAt(9))
		}
	}))
	defer srv.Close()
	tr := &consistency.Transport{Base: srv.Client().Transport}
	client := &http.Client{Transport: tr}
	get := func(path string, header string) string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		if header != "" {
			req.Header.Set(consistency.DefaultTokenHeader, header)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if header != "" && req.Header.Get(consistency.DefaultTokenHeader) != header {
			t.Fatal("the transport changed the caller's request")
		}
		return <-received
	}
	if got := get("/t5", ""); got != "" {
		t.Errorf("first request carried %q", got)
	}
	if got := get("/t3", ""); got != tokenAt(5) {
		t.Errorf("second request carried %q, want the token at 5", got)
	}
	// The response at 3 is older than 5: 5 is kept.
	if got := get("/", ""); got != tokenAt(5) {
		t.Errorf("third request carried %q, want the token at 5 (not the older 3)", got)
	}
	if got := get("/t9", "explicit"); got != "explicit" {
		t.Errorf("request with its own header carried %q", got)
	}
	if got := tr.Token(); got != tokenAt(9) {
		t.Errorf("Token() = %q, want the token at 9", got)
	}
	tr.SetToken("garbage")
	if got := tr.Token(); got != tokenAt(9) {
		t.Error("an unreadable token replaced a known later one")
	}
}

// TestMiddlewareHijack: a handler behind the Middleware can take the
// connection over the way websocket libraries do (gorilla/websocket asserts
// http.Hijacker on the ResponseWriter it is given).
func TestMiddlewareHijack(t *testing.T) {
	mw, err := consistency.NewMiddleware(offlineClient(t), mustCodec(t, []consistency.Key{key("k1")}))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mw.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hj, ok := w.(http.Hijacker)
		if !ok {
			http.Error(w, "response does not implement http.Hijacker", http.StatusInternalServerError)
			return
		}
		conn, buf, err := hj.Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
		_ = buf.Flush()
	})))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(got) != "hi" {
		t.Fatalf("hijacking handler: %d %q", resp.StatusCode, got)
	}
}
