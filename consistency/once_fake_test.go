package consistency_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/activekit/activekit/consistency"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// TestInsertOnceInTransaction: inside a transaction, a duplicate key makes
// the server abort the transaction, so InsertOnce can neither read the key
// in it (it answered "duplicate key, and checking the key failed", joined
// with NoSuchTransaction, which the caller could not tell from a failure)
// nor call the duplicate a success (the caller would go on in an aborted
// transaction). It reads the key outside the transaction and says
// ErrAlreadyDone when it is there, and fn runs once.
func TestInsertOnceInTransaction(t *testing.T) {
	for _, tc := range []struct {
		name      string
		keyThere  bool // the read outside the transaction finds the key
		wantFound bool
	}{
		{"key there", true, true},
		{"another unique index", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			script := newScript(nil)
			reply := func(cmd bson.Raw) bson.D {
				_, inTxn := lookup(cmd, "autocommit").BooleanOK()
				switch commandName(cmd) {
				case "insert":
					if inTxn {
						return okReply(bson.E{Key: "n", Value: int32(0)}, bson.E{Key: "writeErrors", Value: bson.A{bson.D{
							{Key: "index", Value: int32(0)}, {Key: "code", Value: int32(11000)},
							{Key: "errmsg", Value: "E11000 duplicate key error collection: db.coll index: activekit_once_idempotencyKey"},
						}}})
					}
				case "find":
					if inTxn { // the server aborted the transaction at the duplicate key
						return noSuchTxn
					}
					batch := bson.A{}
					if tc.keyThere {
						batch = append(batch, bson.D{{Key: "_id", Value: "p1"}})
					}
					return okReply(bson.E{Key: "cursor", Value: bson.D{
						{Key: "firstBatch", Value: batch}, {Key: "id", Value: int64(0)}, {Key: "ns", Value: "db.coll"},
					}})
				case "abortTransaction":
					return noSuchTxn
				}
				return script.reply(cmd)
			}
			client, fs := fakeClient(t, nil, reply)
			tx, err := consistency.NewTransactor(client, consistency.WithTransactionPolicy(fastPolicy(4)))
			if err != nil {
				t.Fatal(err)
			}
			coll := consistency.Collection(client.Database("db"), "coll", consistency.Strong)
			var runs atomic.Int32
			err = tx.Run(context.Background(), func(ctx context.Context) error {
				runs.Add(1)
				_, err := consistency.InsertOnce(ctx, coll, "req-1", bson.D{{Key: "amount", Value: 10}})
				return err
			})
			if n := runs.Load(); n != 1 {
				t.Errorf("fn ran %d times, want once: a duplicate key is no transient error", n)
			}
			if errors.Is(err, consistency.ErrAlreadyDone) != tc.wantFound {
				t.Errorf("Run = %v, want ErrAlreadyDone: %v", err, tc.wantFound)
			}
			if !consistency.IsDuplicateKey(err) {
				t.Errorf("Run = %v, want a duplicate key error", err)
			}
			if len(fs.commands("commitTransaction")) != 0 {
				t.Error("an aborted transaction was committed")
			}
			for _, f := range fs.commands("find") {
				if _, inTxn := lookup(f, "autocommit").BooleanOK(); inTxn {
					t.Errorf("the key was read inside the aborted transaction: %v", f)
				}
			}
		})
	}
}
