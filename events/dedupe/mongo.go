package dedupe

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// MongoConfig configures a MongoStore. Zero fields mean the defaults.
type MongoConfig struct {
	// Retention is how long a done event is remembered. Zero means 7 days.
	Retention time.Duration
	// Now is the clock leases are measured by; nil means time.Now. Every
	// instance compares its own clock with the expiry another instance
	// wrote, so keep clocks synchronised (NTP) well within the lease.
	Now func() time.Time
}

// MongoStore is a Store in a MongoDB collection: one document per (group,
// event ID), its _id unique, so of two instances inserting a claim at once
// exactly one succeeds. Documents hold the claim token, a state ("claimed"
// or "done") and an expiry; a claim whose lease ended is taken over by a
// conditional update on the old token, and CreateIndexes adds a TTL index
// that removes documents past their expiry.
type MongoStore struct {
	coll      *mongo.Collection
	retention time.Duration
	now       func() time.Time
}

var _ Store = (*MongoStore)(nil)

// NewMongoStore returns a store on coll. It makes no call to the server.
func NewMongoStore(coll *mongo.Collection, cfg MongoConfig) (*MongoStore, error) {
	if coll == nil {
		return nil, fmt.Errorf("%w: nil collection", ErrConfig)
	}
	if cfg.Retention < 0 {
		return nil, fmt.Errorf("%w: negative Retention", ErrConfig)
	}
	if cfg.Retention == 0 {
		cfg.Retention = 7 * 24 * time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &MongoStore{coll: coll, retention: cfg.Retention, now: cfg.Now}, nil
}

// CreateIndexes creates the TTL index on the expiry (dedupe_expires_ttl),
// so expired claims and done records past retention are removed by the
// server; creating it again is no error. A server without TTL indexes
// (FerretDB) refuses it, and the error says so: the store works without the
// index, but its collection then grows until something else removes
// documents whose expiry has passed.
func (s *MongoStore) CreateIndexes(ctx context.Context) error {
	_, err := s.coll.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: "expires", Value: 1}},
		Options: options.Index().SetExpireAfterSeconds(0).SetName("dedupe_expires_ttl"),
	})
	if err != nil {
		return fmt.Errorf("dedupe: creating the TTL index: %w", err)
	}
	return nil
}

type mongoDoc struct {
	ID      string    `bson:"_id"`
	Token   string    `bson:"token"`
	State   string    `bson:"state"`
	Expires time.Time `bson:"expires"`
}

const (
	stateClaimed = "claimed"
	stateDone    = "done"
)

func docID(group, id string) string { return group + "\x00" + id }

// Claim implements Store.
func (s *MongoStore) Claim(ctx context.Context, group, id string, lease time.Duration) (Claim, error) {
	if lease < time.Millisecond {
		return Claim{}, fmt.Errorf("%w: lease %v under 1ms", ErrConfig, lease)
	}
	c := Claim{Group: group, ID: id, Token: NewToken()}
	now := s.now()
	_, err := s.coll.InsertOne(ctx, mongoDoc{ID: docID(group, id), Token: c.Token, State: stateClaimed, Expires: now.Add(lease)})
	if err == nil {
		c.Status = Claimed
		return c, nil
	}
	if !mongo.IsDuplicateKeyError(err) {
		return Claim{}, err
	}
	var d mongoDoc
	if err := s.coll.FindOne(ctx, bson.D{{Key: "_id", Value: docID(group, id)}}).Decode(&d); err != nil {
		if errors.Is(err, mongo.ErrNoDocuments) {
			// Deleted (released or expired) between our insert and
			// read: report busy so the caller claims again.
			return Claim{Group: group, ID: id, Status: Busy}, nil
		}
		return Claim{}, err
	}
	if d.Expires.After(now) {
		if d.State == stateDone {
			return Claim{Group: group, ID: id, Status: Done}, nil
		}
		return Claim{Group: group, ID: id, Status: Busy, Remaining: d.Expires.Sub(now)}, nil
	}
	// The lease (or the retention) ended: take the document over, on
	// condition that nobody else did first.
	res, err := s.coll.UpdateOne(ctx,
		bson.D{{Key: "_id", Value: d.ID}, {Key: "token", Value: d.Token}, {Key: "expires", Value: d.Expires}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "token", Value: c.Token}, {Key: "state", Value: stateClaimed}, {Key: "expires", Value: now.Add(lease)}}}})
	if err != nil {
		return Claim{}, err
	}
	if res.MatchedCount == 0 {
		return Claim{Group: group, ID: id, Status: Busy}, nil
	}
	c.Status = Claimed
	return c, nil
}

// Done implements Store.
func (s *MongoStore) Done(ctx context.Context, c Claim) error {
	res, err := s.coll.UpdateOne(ctx,
		bson.D{{Key: "_id", Value: docID(c.Group, c.ID)}, {Key: "token", Value: c.Token}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "state", Value: stateDone}, {Key: "expires", Value: s.now().Add(s.retention)}}}})
	if err != nil {
		return err
	}
	if res.MatchedCount == 0 {
		return ErrLeaseLost
	}
	return nil
}

// Release implements Store.
func (s *MongoStore) Release(ctx context.Context, c Claim) error {
	_, err := s.coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: docID(c.Group, c.ID)}, {Key: "token", Value: c.Token}, {Key: "state", Value: stateClaimed}})
	return err
}
