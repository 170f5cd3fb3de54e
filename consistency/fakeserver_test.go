package consistency_test

// fakeServer is an in-process stand-in for a replica set primary: the
// driver's own code (sessions, transactions, retryable writes, write concern
// upgrades, causal read concerns) runs unchanged above it, and every command
// it sends is recorded and answered by a script. It lets the transaction and
// causal-session logic be proven here, where no replica set runs; it proves
// what the driver sends and how this package reacts to the replies a real
// server gives, not that a real server gives them.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/address"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/description"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/drivertest"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/mnet"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/wiremessage"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/xoptions"
)

// fakeServer implements the driver's Deployment, Server, Connector,
// Disconnector and Subscriber interfaces.
type fakeServer struct {
	t      testing.TB
	reply  func(cmd bson.Raw) bson.D // answers every command but hello
	mu     sync.Mutex
	cmds   []bson.Raw
	update chan description.Topology
	once   sync.Once
	// secondary makes hello answer as a secondary (the driver, given one
	// server, still sends it everything).
	secondary atomic.Bool
}

var (
	_ driver.Deployment   = (*fakeServer)(nil)
	_ driver.Server       = (*fakeServer)(nil)
	_ driver.Connector    = (*fakeServer)(nil)
	_ driver.Disconnector = (*fakeServer)(nil)
	_ driver.Subscriber   = (*fakeServer)(nil)
)

// fakeClient returns a client, made with o (nil: retryable reads and
// writes on, nothing else), of a fake replica set primary whose replies,
// hello aside, come from reply. It is disconnected at the end of the test.
func fakeClient(t testing.TB, o *options.ClientOptions, reply func(cmd bson.Raw) bson.D) (*mongo.Client, *fakeServer) {
	t.Helper()
	fs := &fakeServer{t: t, reply: reply, update: make(chan description.Topology, 1)}
	if o == nil {
		o = options.Client().SetRetryWrites(true).SetRetryReads(true)
	}
	if err := xoptions.SetInternalClientOptions(o, "deployment", fs); err != nil {
		t.Fatal(err)
	}
	c, err := mongo.Connect(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	return c, fs
}

// commands returns the commands received so far named name (all when name
// is empty), in order.
func (s *fakeServer) commands(name string) []bson.Raw {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []bson.Raw
	for _, c := range s.cmds {
		if name == "" || commandName(c) == name {
			out = append(out, c)
		}
	}
	return out
}

func commandName(cmd bson.Raw) string {
	elems, err := cmd.Elements()
	if err != nil || len(elems) == 0 {
		return ""
	}
	return elems[0].Key()
}

func (s *fakeServer) handle(cmd bson.Raw) bson.D {
	s.mu.Lock()
	s.cmds = append(s.cmds, cmd)
	s.mu.Unlock()
	switch commandName(cmd) {
	case "hello", "isMaster", "ismaster":
		return bson.D{
			{Key: "ok", Value: 1}, {Key: "isWritablePrimary", Value: !s.secondary.Load()}, {Key: "secondary", Value: s.secondary.Load()}, {Key: "setName", Value: "rs0"},
			{Key: "hosts", Value: bson.A{"127.0.0.1:27017"}}, {Key: "logicalSessionTimeoutMinutes", Value: int32(30)},
			{Key: "maxWireVersion", Value: int32(21)}, {Key: "minWireVersion", Value: int32(0)},
		}
	case "endSessions":
		return bson.D{{Key: "ok", Value: 1}}
	}
	return s.reply(cmd)
}

func (s *fakeServer) SelectServer(context.Context, description.ServerSelector) (driver.Server, error) {
	return s, nil
}
func (s *fakeServer) Kind() description.TopologyKind {
	return description.TopologyKindReplicaSetWithPrimary
}
func (s *fakeServer) GetServerSelectionTimeout() time.Duration { return 0 }
func (s *fakeServer) RTTMonitor() driver.RTTMonitor            { return zeroRTT{} }
func (s *fakeServer) Connect() error                           { return nil }
func (s *fakeServer) Connection(context.Context) (*mnet.Connection, error) {
	return mnet.NewConnection(&fakeConn{s: s}), nil
}
func (s *fakeServer) Disconnect(context.Context) error {
	s.once.Do(func() { close(s.update) })
	return nil
}
func (s *fakeServer) Subscribe() (*driver.Subscription, error) {
	minutes := int64(30)
	s.update <- description.Topology{SessionTimeoutMinutes: &minutes}
	return &driver.Subscription{Updates: s.update}, nil
}
func (s *fakeServer) Unsubscribe(*driver.Subscription) error { return nil }

type zeroRTT struct{}

func (zeroRTT) EWMA() time.Duration { return 0 }
func (zeroRTT) Min() time.Duration  { return 0 }
func (zeroRTT) Stats() string       { return "" }

// fakeConn answers each OP_MSG written to it with the server's reply.
type fakeConn struct {
	s       *fakeServer
	pending []byte
}

func (c *fakeConn) Write(_ context.Context, wm []byte) error {
	cmd, err := parseOpMsg(wm)
	if err != nil {
		c.s.t.Errorf("fake server: %v", err)
		return err
	}
	raw, err := bson.Marshal(c.s.handle(cmd))
	if err != nil {
		return err
	}
	idx, dst := wiremessage.AppendHeaderStart(nil, wiremessage.NextRequestID(), 0, wiremessage.OpMsg)
	dst = wiremessage.AppendMsgFlags(dst, 0)
	dst = wiremessage.AppendMsgSectionType(dst, wiremessage.SingleDocument)
	dst = append(dst, raw...)
	c.pending = bsoncore.UpdateLength(dst, idx, int32(len(dst[idx:])))
	return nil
}

func (c *fakeConn) Read(context.Context) ([]byte, error) {
	if c.pending == nil {
		return nil, fmt.Errorf("fake server: read with no reply pending")
	}
	wm := c.pending
	c.pending = nil
	return wm, nil
}

func (c *fakeConn) Close() error                    { return nil }
func (c *fakeConn) Description() description.Server { return drivertest.MockDescription }
func (c *fakeConn) ID() string                      { return "fake" }
func (c *fakeConn) ServerConnectionID() *int64      { id := int64(1); return &id }
func (c *fakeConn) DriverConnectionID() int64       { return 1 }
func (c *fakeConn) Address() address.Address        { return drivertest.MockDescription.Addr }
func (c *fakeConn) Stale() bool                     { return false }
func (c *fakeConn) OIDCTokenGenID() uint64          { return 0 }
func (c *fakeConn) SetOIDCTokenGenID(uint64)        {}

// parseOpMsg returns the command of an OP_MSG: its body, with any document
// sequence (the documents of an insert) added as an array.
func parseOpMsg(wm []byte) (bson.Raw, error) {
	_, _, _, op, rem, ok := wiremessage.ReadHeader(wm)
	if !ok || op != wiremessage.OpMsg {
		return nil, fmt.Errorf("not an OP_MSG (opcode %v)", op)
	}
	if _, rem, ok = wiremessage.ReadMsgFlags(rem); !ok {
		return nil, fmt.Errorf("bad OP_MSG flags")
	}
	var body bson.D
	var seqs []bson.E
	for len(rem) > 0 {
		var st wiremessage.SectionType
		st, rem, ok = wiremessage.ReadMsgSectionType(rem)
		if !ok {
			return nil, fmt.Errorf("bad OP_MSG section")
		}
		switch st {
		case wiremessage.SingleDocument:
			var doc bsoncore.Document
			doc, rem, ok = wiremessage.ReadMsgSectionSingleDocument(rem)
			if !ok {
				return nil, fmt.Errorf("bad OP_MSG body")
			}
			if err := bson.Unmarshal(doc, &body); err != nil {
				return nil, err
			}
		case wiremessage.DocumentSequence:
			var id string
			var docs []bsoncore.Document
			id, docs, rem, ok = wiremessage.ReadMsgSectionDocumentSequence(rem)
			if !ok {
				return nil, fmt.Errorf("bad OP_MSG document sequence")
			}
			a := bson.A{}
			for _, d := range docs {
				a = append(a, bson.Raw(d))
			}
			seqs = append(seqs, bson.E{Key: id, Value: a})
		default:
			return nil, fmt.Errorf("OP_MSG section type %v", st)
		}
	}
	return bson.Marshal(append(body, seqs...))
}

// Replies a test script uses.
func okReply(extra ...bson.E) bson.D { return append(bson.D{{Key: "ok", Value: 1}}, extra...) }

func errReply(code int32, name string, labels ...string) bson.D {
	d := bson.D{{Key: "ok", Value: 0}, {Key: "code", Value: code}, {Key: "codeName", Value: name}, {Key: "errmsg", Value: "scripted " + name}}
	if len(labels) > 0 {
		d = append(d, bson.E{Key: "errorLabels", Value: labels})
	}
	return d
}

// writeConcernErrorReply is a commit that ran but whose write concern was
// not satisfied in time (code 64, wtimeout).
func writeConcernErrorReply() bson.D {
	return bson.D{{Key: "ok", Value: 1}, {Key: "writeConcernError", Value: bson.D{
		{Key: "code", Value: int32(64)}, {Key: "codeName", Value: "WriteConcernFailed"},
		{Key: "errmsg", Value: "waiting for replication timed out"},
		{Key: "errInfo", Value: bson.D{{Key: "wtimeout", Value: true}}},
	}}}
}

// lookup returns the value at a dotted path of cmd, or an empty RawValue.
func lookup(cmd bson.Raw, path ...string) bson.RawValue {
	v, err := cmd.LookupErr(path...)
	if err != nil {
		return bson.RawValue{}
	}
	return v
}
