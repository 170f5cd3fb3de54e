package consistency

import (
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readconcern"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"
)

// Level is a named consistency level: a write concern, a read concern and a
// read preference chosen together, so that the combination is one that
// MongoDB documents as giving a guarantee. The zero value is Strong.
//
// See the package documentation for the trade-offs.
type Level int

const (
	// Strong writes with w=majority and j=true and reads with read concern
	// majority from the primary. An acknowledged write survives a failover,
	// and every read sees every write acknowledged before it started,
	// whichever instance made it, with no token needed. It costs a round trip
	// to a majority of the replica set per write, and every read goes to the
	// primary.
	Strong Level = iota
	// Causal writes with w=majority and reads with read concern majority
	// from the nearest member (a secondary or the primary, whichever answers
	// fastest), and is meant for causally consistent sessions: within one
	// session (and across instances, through a causal token) a read sees the
	// writes before it, because the driver sends afterClusterTime and the
	// member waits until it has caught up. Without a session it is a
	// majority read from the nearest member, which may be behind.
	//
	// Reads use nearest rather than secondaryPreferred: in a fleet spread
	// over zones or regions the nearest member is the local one, and the
	// causal session makes any member safe to read; the primary is used when
	// it is the nearest. The cost is that a read on a lagging member waits
	// for it to catch up (bounded by the operation timeout).
	Causal
	// Fast writes with w=1 and reads with read concern local from the
	// nearest member. A write acknowledged only by the primary can be rolled
	// back by a failover, and a read may not see a write just acknowledged to
	// another instance. Use it for data that can be lost or recomputed.
	Fast
)

var levelNames = [...]string{Strong: "strong", Causal: "causal", Fast: "fast"}

// String returns the level's name: "strong", "causal" or "fast".
func (l Level) String() string {
	if l.valid() {
		return levelNames[l]
	}
	return fmt.Sprintf("Level(%d)", int(l))
}

// ParseLevel returns the level named s ("strong", "causal" or "fast"), for
// configuration files.
func ParseLevel(s string) (Level, error) {
	for l, n := range levelNames {
		if n == s {
			return Level(l), nil
		}
	}
	return 0, fmt.Errorf("%w: %q", ErrUnknownLevel, s)
}

// MarshalText implements encoding.TextMarshaler.
func (l Level) MarshalText() ([]byte, error) {
	if !l.valid() {
		return nil, fmt.Errorf("%w: %d", ErrUnknownLevel, int(l))
	}
	return []byte(l.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (l *Level) UnmarshalText(b []byte) error {
	v, err := ParseLevel(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

func (l Level) valid() bool { return l >= Strong && l <= Fast }

// Validate reports whether l is one of the named levels.
func (l Level) Validate() error {
	if !l.valid() {
		return fmt.Errorf("%w: %d", ErrUnknownLevel, int(l))
	}
	return nil
}

// WriteConcern returns the level's write concern; a new value each call.
// An unknown level gets Strong's.
func (l Level) WriteConcern() *writeconcern.WriteConcern {
	switch l {
	case Causal:
		return writeconcern.Majority()
	case Fast:
		return writeconcern.W1()
	default:
		j := true
		return &writeconcern.WriteConcern{W: writeconcern.WCMajority, Journal: &j}
	}
}

// ReadConcern returns the level's read concern; a new value each call.
// An unknown level gets Strong's.
func (l Level) ReadConcern() *readconcern.ReadConcern {
	if l == Fast {
		return readconcern.Local()
	}
	return readconcern.Majority()
}

// ReadPreference returns the level's read preference. An unknown level gets
// Strong's.
func (l Level) ReadPreference() *readpref.ReadPref {
	switch l {
	case Causal, Fast:
		return readpref.Nearest()
	default:
		return readpref.Primary()
	}
}

// transactionReadConcern is the read concern of a transaction at level l:
// snapshot for Strong and Causal, so every read in the transaction sees one
// majority-committed point in time, and local for Fast.
func (l Level) transactionReadConcern() *readconcern.ReadConcern {
	if l == Fast {
		return readconcern.Local()
	}
	return readconcern.Snapshot()
}

// CollectionOptions returns collection options carrying the level's
// concerns and read preference.
func (l Level) CollectionOptions() *options.CollectionOptionsBuilder {
	return options.Collection().
		SetWriteConcern(l.WriteConcern()).
		SetReadConcern(l.ReadConcern()).
		SetReadPreference(l.ReadPreference())
}

// DatabaseOptions returns database options carrying the level's concerns
// and read preference.
func (l Level) DatabaseOptions() *options.DatabaseOptionsBuilder {
	return options.Database().
		SetWriteConcern(l.WriteConcern()).
		SetReadConcern(l.ReadConcern()).
		SetReadPreference(l.ReadPreference())
}

// TransactionOptions returns transaction options for level l: the level's
// write concern, read concern snapshot (local for Fast) and the primary,
// which is the only read preference a transaction that reads may use.
func (l Level) TransactionOptions() *options.TransactionOptionsBuilder {
	return options.Transaction().
		SetWriteConcern(l.WriteConcern()).
		SetReadConcern(l.transactionReadConcern()).
		SetReadPreference(readpref.Primary())
}

// Collection returns the collection name of db at level l.
func Collection(db *mongo.Database, name string, l Level) *mongo.Collection {
	return db.Collection(name, l.CollectionOptions())
}

// Database returns the database name of c at level l.
func Database(c *mongo.Client, name string, l Level) *mongo.Database {
	return c.Database(name, l.DatabaseOptions())
}

// WithLevel returns a copy of coll at level l.
func WithLevel(coll *mongo.Collection, l Level) *mongo.Collection {
	return coll.Clone(l.CollectionOptions())
}

// DefaultOperationTimeout is the client-side operation timeout ClientOptions
// sets when given zero.
const DefaultOperationTimeout = 10 * time.Second

// ClientOptions returns client options for a fleet instance: retryable reads
// and writes on, the level's concerns and read preference as the client's
// defaults, and a client-side operation timeout that bounds every
// operation, server selection and retry included, when the context has no
// deadline of its own (DefaultOperationTimeout when timeout is zero; a
// negative timeout sets none).
//
// With the timeout (or any context deadline) the driver retries a retryable
// read or write as many times as fit before the deadline, so a failover
// shorter than the timeout is invisible to the caller; without one it
// retries once.
//
// Apply the connection string first and these options after, or the other
// way round if the connection string should win:
//
//	opts := consistency.ClientOptions(consistency.Strong, 0).ApplyURI(uri)
//
// ApplyURI only overrides what the URI names.
func ClientOptions(l Level, timeout time.Duration) *options.ClientOptions {
	o := options.Client().
		SetRetryWrites(true).
		SetRetryReads(true).
		SetWriteConcern(l.WriteConcern()).
		SetReadConcern(l.ReadConcern()).
		SetReadPreference(l.ReadPreference())
	if timeout == 0 {
		timeout = DefaultOperationTimeout
	}
	if timeout > 0 {
		o.SetTimeout(timeout)
	}
	return o
}
