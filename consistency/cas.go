package consistency

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
)

// DefaultVersionField is the document field UpdateIfVersion compares and
// increments.
const DefaultVersionField = "version"

// ConflictError is the error UpdateIfVersion returns when the document is at
// another version than expected. It matches ErrConflict.
type ConflictError struct {
	Expected int64 // the version the caller expected
	Actual   int64 // the version found when the update was refused
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("consistency: version conflict: expected version %d, found %d", e.Expected, e.Actual)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// VersionOption configures UpdateIfVersion.
type VersionOption interface{ applyVersion(*versionConfig) }

type versionConfig struct{ field string }

type versionFieldOption string

func (o versionFieldOption) applyVersion(c *versionConfig) { c.field = string(o) }

// WithVersionField sets the version field; DefaultVersionField by default.
// An empty name keeps the default.
func WithVersionField(name string) VersionOption { return versionFieldOption(name) }

// UpdateIfVersion applies update to the document matching filter only if its
// version field equals expected, and increments the version in the same
// atomic write. It returns the new version (expected+1).
//
// filter must identify one document (usually bson.D{{"_id", id}}); update
// is a document of update operators ($set, $unset, $push, ...) that must not
// touch the version field itself. A document whose version field is missing
// counts as version 0.
//
// It fails with a *ConflictError (errors.Is(err, ErrConflict)) when the
// document exists at another version: someone else updated it first; reload
// it and decide again. It fails with ErrNotFound when no document matches
// filter at all. The follow-up read that tells them apart goes to the
// primary.
//
// The write is findAndModify, a retryable write: with retryable writes on,
// the driver retries it across a failover (once without a deadline, until
// the deadline with one) and the server applies it at most once. If an ambiguous error (IsAmbiguous) is retried by the caller and
// the first attempt had been applied, the retry reports ErrConflict with
// Actual == expected+1.
//
// Run it with a collection at Strong (or Causal) for the update to survive a
// failover; this is compare-and-set, safe with any number of instances
// updating the same document at once (on MongoDB; FerretDB v1 does not make
// it atomic).
func UpdateIfVersion(ctx context.Context, coll *mongo.Collection, filter any, expected int64, update bson.D, opts ...VersionOption) (int64, error) {
	cfg := versionConfig{field: DefaultVersionField}
	for _, o := range opts {
		o.applyVersion(&cfg)
	}
	if cfg.field == "" {
		cfg.field = DefaultVersionField
	}
	if filter == nil {
		return 0, fmt.Errorf("%w: nil filter", ErrInvalidOption)
	}
	up, err := withVersionIncrement(update, cfg.field)
	if err != nil {
		return 0, err
	}
	var cond any = expected
	if expected == 0 {
		cond = bson.D{{Key: "$in", Value: bson.A{int64(0), nil}}}
	}
	f := bson.D{{Key: "$and", Value: bson.A{filter, bson.D{{Key: cfg.field, Value: cond}}}}}
	proj := bson.D{{Key: cfg.field, Value: 1}}
	// No projection on findAndModify: FerretDB v1 does not implement one.
	raw, err := coll.FindOneAndUpdate(ctx, f, up, options.FindOneAndUpdate().SetReturnDocument(options.After)).Raw()
	if err == nil {
		v, ok := versionOf(raw, cfg.field)
		if !ok {
			return 0, fmt.Errorf("consistency: updated document has a non-integer %q field", cfg.field)
		}
		return v, nil
	}
	if !errors.Is(err, mongo.ErrNoDocuments) {
		return 0, fmt.Errorf("consistency: update if version: %w", err)
	}
	primary := coll.Clone(options.Collection().SetReadPreference(readpref.Primary()))
	raw, err = primary.FindOne(ctx, filter, options.FindOne().SetProjection(proj)).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 0, ErrNotFound
	}
	if err != nil {
		return 0, fmt.Errorf("consistency: update if version: reading the current version: %w", err)
	}
	actual, _ := versionOf(raw, cfg.field)
	return 0, &ConflictError{Expected: expected, Actual: actual}
}

// versionOf returns the integer version in doc; a missing field is 0.
func versionOf(doc bson.Raw, field string) (int64, bool) {
	v, err := doc.LookupErr(field)
	if err != nil {
		return 0, true
	}
	return v.AsInt64OK()
}

// withVersionIncrement returns update with {$inc: {field: 1}} merged in.
func withVersionIncrement(update bson.D, field string) (bson.D, error) {
	out := make(bson.D, 0, len(update)+1)
	merged := false
	for _, e := range update {
		if !strings.HasPrefix(e.Key, "$") {
			return nil, fmt.Errorf("%w: %q is not an update operator (replacements are not supported)", ErrInvalidUpdate, e.Key)
		}
		keys, ok := fieldsOf(e.Key, e.Value)
		if !ok {
			return nil, fmt.Errorf("%w: the value of %s is not a document", ErrInvalidUpdate, e.Key)
		}
		for _, k := range keys {
			if k == field || strings.HasPrefix(k, field+".") {
				return nil, fmt.Errorf("%w: %s changes the version field %q", ErrInvalidUpdate, e.Key, field)
			}
		}
		if e.Key == "$inc" {
			inc := make(bson.D, 0, len(keys)+1)
			switch v := e.Value.(type) {
			case bson.D:
				inc = append(inc, v...)
			case bson.M:
				for k, x := range v {
					inc = append(inc, bson.E{Key: k, Value: x})
				}
			}
			e.Value = append(inc, bson.E{Key: field, Value: int64(1)})
			merged = true
		}
		out = append(out, e)
	}
	if !merged {
		out = append(out, bson.E{Key: "$inc", Value: bson.D{{Key: field, Value: int64(1)}}})
	}
	return out, nil
}

// fieldsOf returns the field names of an operator's argument document, and
// the renamed-to names of $rename.
func fieldsOf(op string, v any) ([]string, bool) {
	rename := op == "$rename"
	var keys []string
	switch d := v.(type) {
	case bson.D:
		for _, e := range d {
			keys = append(keys, e.Key)
			if s, ok := e.Value.(string); ok && rename {
				keys = append(keys, s)
			}
		}
	case bson.M:
		for k, x := range d {
			keys = append(keys, k)
			if s, ok := x.(string); ok && rename {
				keys = append(keys, s)
			}
		}
	default:
		return nil, false
	}
	return keys, true
}
