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
//
// It is a BatchStore: a batch's claims are one InsertMany (unordered), and
// for the events already known (a duplicate key each) one find and a
// conditional update per lease that ended; its done marks are a find and
// one update of many; its releases one bulk write.
type MongoStore struct {
	coll      *mongo.Collection
	retention time.Duration
	now       func() time.Time
}

var (
	_ Store      = (*MongoStore)(nil)
	_ BatchStore = (*MongoStore)(nil)
)

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
		// The insert may have run with its reply lost: give the claim
		// back, or every later claim would find it busy for the lease.
		s.giveBack(ctx, group, []string{id}, c.Token)
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
		s.giveBack(ctx, group, []string{id}, c.Token) // as for the insert
		return Claim{}, err
	}
	if res.MatchedCount == 0 {
		return Claim{Group: group, ID: id, Status: Busy}, nil
	}
	c.Status = Claimed
	return c, nil
}

// Done implements Store: one update, on condition that the document still
// holds c's token, claimed, with its lease not ended, as RedisStore judges
// a claim held. When it matches nothing, a read tells a claim done already
// (a retry after a lost reply; no error) from one no longer held
// (ErrLeaseLost, and nothing is recorded).
func (s *MongoStore) Done(ctx context.Context, c Claim) error {
	now := s.now()
	id := docID(c.Group, c.ID)
	res, err := s.coll.UpdateOne(ctx,
		bson.D{{Key: "_id", Value: id}, {Key: "token", Value: c.Token}, {Key: "state", Value: stateClaimed},
			{Key: "expires", Value: bson.D{{Key: "$gt", Value: now}}}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "state", Value: stateDone}, {Key: "expires", Value: now.Add(s.retention)}}}})
	if err != nil {
		return err
	}
	if res.MatchedCount > 0 {
		return nil
	}
	var d mongoDoc
	err = s.coll.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&d)
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		return ErrLeaseLost // released, or expired and removed
	case err != nil:
		return err
	case d.State == stateDone:
		return nil
	}
	return ErrLeaseLost
}

// Release implements Store.
func (s *MongoStore) Release(ctx context.Context, c Claim) error {
	_, err := s.coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: docID(c.Group, c.ID)}, {Key: "token", Value: c.Token}, {Key: "state", Value: stateClaimed}})
	return err
}

// duplicateKey is MongoDB's error code for a duplicate key.
const duplicateKey = 11000

// ClaimBatch implements BatchStore: one InsertMany of a claim per event,
// all with one token; the events whose document exists are then read in one
// find and answered done, busy, or taken over when their lease ended (a
// conditional update each), as Claim would. Repeated IDs are busy after
// their first claim. When it fails, it gives back the claims it made, on a
// ctx of its own (a second at most), so that the events are not left busy
// for a lease under tokens nobody knows.
func (s *MongoStore) ClaimBatch(ctx context.Context, group string, ids []string, lease time.Duration) ([]Claim, error) {
	if lease < time.Millisecond {
		return nil, fmt.Errorf("%w: lease %v under 1ms", ErrConfig, lease)
	}
	return claimUnique(group, ids, lease, func(uniq []string) ([]Claim, error) { return s.claimMany(ctx, group, uniq, lease) })
}

func (s *MongoStore) claimMany(ctx context.Context, group string, ids []string, lease time.Duration) ([]Claim, error) {
	claims := make([]Claim, len(ids))
	if len(ids) == 0 {
		return claims, nil
	}
	token := NewToken()
	now := s.now()
	docs := make([]any, len(ids))
	for i, id := range ids {
		claims[i] = Claim{Group: group, ID: id, Token: token, Status: Claimed}
		docs[i] = mongoDoc{ID: docID(group, id), Token: token, State: stateClaimed, Expires: now.Add(lease)}
	}
	_, err := s.coll.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
	if err == nil {
		return claims, nil
	}
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) || bwe.WriteConcernError != nil {
		s.giveBack(ctx, group, ids, token)
		return nil, err
	}
	var known []int
	for _, we := range bwe.WriteErrors {
		if we.Code != duplicateKey || we.Index < 0 || we.Index >= len(ids) {
			s.giveBack(ctx, group, ids, token)
			return nil, err
		}
		known = append(known, we.Index)
	}
	if err := s.settle(ctx, claims, known, now, lease); err != nil {
		// Give back the batch's claims and those settle made one by
		// one, under tokens of their own: nobody will know them.
		s.giveBackClaims(ctx, claims)
		return nil, err
	}
	return claims, nil
}

// settle answers the claims at the indexes known, whose documents existed
// when the batch inserted its claims, with one find: done, busy, or taken
// over (one conditional update each) when their lease or retention ended.
func (s *MongoStore) settle(ctx context.Context, claims []Claim, known []int, now time.Time, lease time.Duration) error {
	if len(known) == 0 {
		return nil
	}
	dids := make([]string, len(known))
	for k, i := range known {
		dids[k] = docID(claims[i].Group, claims[i].ID)
	}
	docs, err := s.find(ctx, dids)
	if err != nil {
		return err
	}
	for k, i := range known {
		c := &claims[i]
		d, ok := docs[dids[k]]
		switch {
		case !ok:
			// Deleted (released or expired) since the insert: claim it
			// on its own.
			one, err := s.Claim(ctx, c.Group, c.ID, lease)
			if err != nil {
				return err
			}
			*c = one
		case d.Expires.After(now) && d.State == stateDone:
			*c = Claim{Group: c.Group, ID: c.ID, Status: Done}
		case d.Expires.After(now):
			*c = Claim{Group: c.Group, ID: c.ID, Status: Busy, Remaining: d.Expires.Sub(now)}
		default:
			// The lease (or the retention) ended: take the document
			// over, on condition that nobody else did first.
			res, err := s.coll.UpdateOne(ctx,
				bson.D{{Key: "_id", Value: d.ID}, {Key: "token", Value: d.Token}, {Key: "expires", Value: d.Expires}},
				bson.D{{Key: "$set", Value: bson.D{{Key: "token", Value: c.Token}, {Key: "state", Value: stateClaimed}, {Key: "expires", Value: now.Add(lease)}}}})
			if err != nil {
				return err
			}
			if res.MatchedCount == 0 {
				*c = Claim{Group: c.Group, ID: c.ID, Status: Busy}
			}
		}
	}
	return nil
}

// find returns the documents of dids by _id, in one round trip.
func (s *MongoStore) find(ctx context.Context, dids []string) (map[string]mongoDoc, error) {
	cur, err := s.coll.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: dids}}}}, options.Find().SetBatchSize(int32(min(len(dids)+1, 100000))))
	if err != nil {
		return nil, err
	}
	var docs []mongoDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, err
	}
	byID := make(map[string]mongoDoc, len(docs))
	for _, d := range docs {
		byID[d.ID] = d
	}
	return byID, nil
}

// giveBack deletes the claims with token among ids, after a claim failed
// part way or with its outcome unknown: nobody holds that token. If it fails
// too, they end with their lease.
func (s *MongoStore) giveBack(ctx context.Context, group string, ids []string, token string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	dids := make([]string, len(ids))
	for i, id := range ids {
		dids[i] = docID(group, id)
	}
	_, _ = s.coll.DeleteMany(rctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: dids}}}, {Key: "token", Value: token}, {Key: "state", Value: stateClaimed}})
}

// giveBackClaims deletes the claims of cs still held, as giveBack does, for
// a batch that failed part way with claims of several tokens.
func (s *MongoStore) giveBackClaims(ctx context.Context, cs []Claim) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	_ = s.ReleaseBatch(rctx, cs)
}

// DoneBatch implements BatchStore: one read of the claims' documents, then
// one update of those still held, on condition that each still holds its
// token and its lease, as RedisStore's DoneBatch judges them. A claim whose
// document another claimer had taken, or whose lease had ended, before the
// read or between the read and the update, is reported ErrLeaseLost and
// marked done all the same (the effect happened), one document at a time;
// when the update marked fewer claims than the read found held, a second
// read tells which it missed.
func (s *MongoStore) DoneBatch(ctx context.Context, cs []Claim) ([]error, error) {
	res := make([]error, len(cs))
	if len(cs) == 0 {
		return res, nil
	}
	dids := make([]string, len(cs))
	for i, c := range cs {
		dids[i] = docID(c.Group, c.ID)
	}
	byID, err := s.find(ctx, dids)
	if err != nil {
		return nil, err
	}
	now := s.now()
	var held, lost []int
	for i, c := range cs {
		d, ok := byID[dids[i]]
		switch {
		case ok && d.State == stateDone:
			// Done already.
		case ok && d.Token == c.Token && d.Expires.After(now):
			held = append(held, i)
		default:
			lost = append(lost, i) // gone, or taken over, or its lease ended
		}
	}
	if len(held) > 0 {
		n, err := s.markHeld(ctx, cs, dids, held, now)
		if err != nil {
			return nil, err
		}
		if n < len(held) {
			// A lease ended, and another claimer may have taken the
			// event over, since the read: the claims not marked are
			// those not done now.
			again := make([]string, len(held))
			for k, i := range held {
				again[k] = dids[i]
			}
			byID, err := s.find(ctx, again)
			if err != nil {
				return nil, err
			}
			for _, i := range held {
				if d, ok := byID[dids[i]]; !ok || d.State != stateDone {
					lost = append(lost, i)
				}
			}
		}
	}
	for _, i := range lost {
		// Mark it done all the same (the effect happened), one document
		// at a time: rare.
		res[i] = ErrLeaseLost
		_, err := s.coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: dids[i]}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "token", Value: cs[i].Token}, {Key: "state", Value: stateDone}, {Key: "expires", Value: now.Add(s.retention)}}}},
			options.UpdateOne().SetUpsert(true))
		if err != nil && !mongo.IsDuplicateKeyError(err) { // a concurrent insert: it is someone's now
			return nil, err
		}
	}
	return res, nil
}

// markHeld marks done, in one update, the claims of cs at the indexes held
// (their documents dids) that still hold their tokens and leases at now,
// and returns how many it marked.
func (s *MongoStore) markHeld(ctx context.Context, cs []Claim, dids []string, held []int, now time.Time) (int, error) {
	byToken := make(map[string][]string)
	var tokens []string
	for _, i := range held {
		t := cs[i].Token
		if _, ok := byToken[t]; !ok {
			tokens = append(tokens, t)
		}
		byToken[t] = append(byToken[t], dids[i])
	}
	or := make(bson.A, len(tokens))
	for k, t := range tokens {
		or[k] = bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: byToken[t]}}}, {Key: "token", Value: t}}
	}
	res, err := s.coll.UpdateMany(ctx,
		bson.D{{Key: "$or", Value: or}, {Key: "state", Value: stateClaimed}, {Key: "expires", Value: bson.D{{Key: "$gt", Value: now}}}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "state", Value: stateDone}, {Key: "expires", Value: now.Add(s.retention)}}}})
	if err != nil {
		return 0, err
	}
	return int(res.MatchedCount), nil
}

// ReleaseBatch implements BatchStore: one unordered bulk delete of the
// claims still held with their tokens. Claims that are not Claimed are
// ignored.
func (s *MongoStore) ReleaseBatch(ctx context.Context, cs []Claim) error {
	models := make([]mongo.WriteModel, 0, len(cs))
	for _, c := range cs {
		if c.Status != Claimed || c.Token == "" {
			continue
		}
		models = append(models, mongo.NewDeleteOneModel().SetFilter(bson.D{
			{Key: "_id", Value: docID(c.Group, c.ID)}, {Key: "token", Value: c.Token}, {Key: "state", Value: stateClaimed}}))
	}
	if len(models) == 0 {
		return nil
	}
	_, err := s.coll.BulkWrite(ctx, models, options.BulkWrite().SetOrdered(false))
	return err
}
