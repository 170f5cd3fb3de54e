package consistency

import (
	"context"
	"errors"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
)

// DefaultKeyField is the document field that holds the idempotency key.
const DefaultKeyField = "idempotencyKey"

// OnceOption configures InsertOnce and EnsureOnceIndex.
type OnceOption interface{ applyOnce(*onceConfig) }

type onceConfig struct{ field string }

type keyFieldOption string

func (o keyFieldOption) applyOnce(c *onceConfig) { c.field = string(o) }

// WithKeyField sets the field that holds the idempotency key;
// DefaultKeyField by default. "_id" uses the document ID as the key, which
// needs no extra index. An empty name keeps the default.
func WithKeyField(name string) OnceOption { return keyFieldOption(name) }

func onceOptions(opts []OnceOption) onceConfig {
	c := onceConfig{field: DefaultKeyField}
	for _, o := range opts {
		o.applyOnce(&c)
	}
	if c.field == "" {
		c.field = DefaultKeyField
	}
	return c
}

// InsertOnce inserts doc with its idempotency key set to key, unless a
// document with that key is already there. inserted is true when this call
// inserted it, and false with a nil error when it was already done: a
// duplicate is success, not failure, so a request retried by a client, a
// load balancer or another instance has its effect once.
//
// The key's uniqueness comes from a unique index on the key field: call
// EnsureOnceIndex once (at deploy or start-up) unless the field is "_id".
// Without the index, duplicates are not detected.
//
// doc is any value that marshals to a BSON document; if it already has the
// key field, its value must be key. A duplicate key error from another
// unique index of the collection is returned as the error it is: InsertOnce
// checks on the primary that the key is really there before calling a
// duplicate already done.
//
// With retryable writes on and a collection at Strong, the insert survives
// a failover. An ambiguous error (IsAmbiguous) can be retried safely: the
// retry reports inserted=false if the first attempt landed.
//
// Inside a transaction (ctx carries a session whose transaction is running,
// as in a Transactor's function) a duplicate cannot be a success: the
// server aborts the transaction at the duplicate key, so nothing more can
// be done in it, not even the check above. InsertOnce then checks the key
// outside the transaction and, when it is there, returns an error wrapping
// ErrAlreadyDone and the duplicate key error: return it from the
// transaction's function, which a Transactor does not run again, and answer
// as for inserted=false. To insert the key and apply its effect
// atomically, insert it first in the transaction, so that a duplicate
// stops the transaction before any other write.
func InsertOnce(ctx context.Context, coll *mongo.Collection, key string, doc any, opts ...OnceOption) (inserted bool, err error) {
	cfg := onceOptions(opts)
	if key == "" {
		return false, fmt.Errorf("%w: empty idempotency key", ErrInvalidOption)
	}
	d, err := withKey(doc, cfg.field, key)
	if err != nil {
		return false, err
	}
	_, err = coll.InsertOne(ctx, d)
	if err == nil {
		return true, nil
	}
	if !IsDuplicateKey(err) {
		return false, fmt.Errorf("consistency: insert once: %w", err)
	}
	inTxn := false
	if sess := mongo.SessionFromContext(ctx); sess != nil && sess.TransactionRunning() {
		// The server aborted the transaction: read outside it.
		inTxn = true
		ctx = mongo.NewSessionContext(ctx, nil)
	}
	primary := coll.Clone(options.Collection().SetReadPreference(readpref.Primary()))
	ferr := primary.FindOne(ctx, bson.D{{Key: cfg.field, Value: key}},
		options.FindOne().SetProjection(bson.D{{Key: "_id", Value: 1}})).Err()
	switch {
	case ferr == nil && inTxn:
		return false, fmt.Errorf("consistency: insert once: %w: %w", ErrAlreadyDone, err)
	case ferr == nil:
		return false, nil
	case errors.Is(ferr, mongo.ErrNoDocuments):
		return false, fmt.Errorf("consistency: insert once: a unique index other than the idempotency key's refused the document: %w", err)
	default:
		return false, fmt.Errorf("consistency: insert once: duplicate key, and checking the key failed: %w", errors.Join(err, ferr))
	}
}

// withKey returns doc as a bson.D with field set to key.
func withKey(doc any, field, key string) (bson.D, error) {
	if doc == nil {
		return nil, fmt.Errorf("%w: nil document", ErrInvalidOption)
	}
	raw, err := bson.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("consistency: insert once: %w", err)
	}
	var d bson.D
	if err := bson.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("consistency: insert once: %w", err)
	}
	for _, e := range d {
		if e.Key == field {
			if s, ok := e.Value.(string); !ok || s != key {
				return nil, fmt.Errorf("%w: the document's %q is %v, not the idempotency key %q", ErrInvalidOption, field, e.Value, key)
			}
			return d, nil
		}
	}
	return append(d, bson.E{Key: field, Value: key}), nil
}

// OnceIndexName is the name of the index EnsureOnceIndex creates for field.
func OnceIndexName(field string) string { return "activekit_once_" + field }

// EnsureOnceIndex creates the unique index InsertOnce relies on: unique on
// the key field, sparse so that documents without a key are not indexed. It
// is idempotent, so every instance may call it at start-up. With the key
// field "_id" there is nothing to create.
func EnsureOnceIndex(ctx context.Context, coll *mongo.Collection, opts ...OnceOption) error {
	cfg := onceOptions(opts)
	if cfg.field == "_id" {
		return nil
	}
	_, err := coll.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: cfg.field, Value: 1}},
		Options: options.Index().SetName(OnceIndexName(cfg.field)).SetUnique(true).SetSparse(true),
	})
	if err != nil {
		return fmt.Errorf("consistency: creating the idempotency index on %s.%s: %w", coll.Name(), cfg.field, err)
	}
	return nil
}
