package consistency_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/activekit/activekit/consistency"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

func ExampleLevel() {
	for _, l := range []consistency.Level{consistency.Strong, consistency.Causal, consistency.Fast} {
		wc := l.WriteConcern()
		j := wc.Journal != nil && *wc.Journal
		fmt.Printf("%-6s w=%v j=%v readConcern=%s readPreference=%s\n",
			l, wc.W, j, l.ReadConcern().Level, l.ReadPreference().Mode())
	}
	// Output:
	// strong w=majority j=true readConcern=majority readPreference=primary
	// causal w=majority j=false readConcern=majority readPreference=nearest
	// fast   w=1 j=false readConcern=local readPreference=nearest
}

func ExampleCollection() {
	// One client per instance, with retryable reads and writes and an
	// operation timeout; collections at the level each kind of data needs.
	client, err := mongo.Connect(consistency.ClientOptions(consistency.Strong, 5*time.Second).
		ApplyURI(os.Getenv("MONGODB_URI")))
	if err != nil {
		log.Fatal(err)
	}
	db := client.Database("shop")
	orders := consistency.Collection(db, "orders", consistency.Strong)       // money: survives failover
	carts := consistency.Collection(db, "carts", consistency.Causal)         // read your writes, anywhere
	views := consistency.Collection(db, "recently_viewed", consistency.Fast) // can be lost
	_, _, _ = orders, carts, views
}

func ExampleTokenCodec() {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	codec, err := consistency.NewTokenCodec([]consistency.Key{
		{ID: "2025-01", Secret: []byte("0123456789abcdef0123456789abcdef")}, // signs
		{ID: "2024-12", Secret: []byte("fedcba9876543210fedcba9876543210")}, // still verifies
	}, consistency.WithClock(func() time.Time { return now }), consistency.WithMaxAge(time.Hour))
	if err != nil {
		log.Fatal(err)
	}
	s, err := codec.Encode(consistency.Token{OperationTime: &bson.Timestamp{T: 1735787045, I: 3}})
	if err != nil {
		log.Fatal(err)
	}
	tok, err := codec.Decode(s)
	fmt.Println(tok.OperationTime.T, tok.OperationTime.I, tok.IssuedAt.UTC(), err)

	now = now.Add(2 * time.Hour)
	_, err = codec.Decode(s)
	fmt.Println(errors.Is(err, consistency.ErrTokenExpired))
	// Output:
	// 1735787045 3 2025-01-02 03:04:05 +0000 UTC <nil>
	// true
}

func ExampleMiddleware() {
	client, err := mongo.Connect(consistency.ClientOptions(consistency.Causal, 0).ApplyURI(os.Getenv("MONGODB_URI")))
	if err != nil {
		log.Fatal(err)
	}
	codec, err := consistency.NewTokenCodec([]consistency.Key{{ID: "k1", Secret: []byte(os.Getenv("CAUSAL_TOKEN_KEY"))}})
	if err != nil {
		log.Fatal(err)
	}
	mw, err := consistency.NewMiddleware(client, codec)
	if err != nil {
		log.Fatal(err)
	}
	carts := consistency.Collection(client.Database("shop"), "carts", consistency.Causal)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /cart/{id}", func(w http.ResponseWriter, r *http.Request) {
		// r.Context() carries the session, advanced to the caller's token:
		// this read, from whichever member, sees the caller's last write.
		var cart bson.M
		if err := carts.FindOne(r.Context(), bson.D{{Key: "_id", Value: r.PathValue("id")}}).Decode(&cart); err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		fmt.Fprintln(w, cart) // the new token goes out with the header
	})
	log.Fatal(http.ListenAndServe(":8080", mw.Handler(mux)))
}

func ExampleTransport() {
	// A caller (another service, a test, a BFF) keeps one Transport per
	// user, so each call sees what the previous one wrote.
	user := &http.Client{Transport: &consistency.Transport{}}
	if _, err := user.Post("http://shop/cart/42/items", "application/json", nil); err != nil {
		log.Fatal(err)
	}
	if _, err := user.Get("http://shop/cart/42"); err != nil { // carries the token
		log.Fatal(err)
	}
}

func ExampleInsertOnce() {
	ctx := context.Background()
	client, err := mongo.Connect(consistency.ClientOptions(consistency.Strong, 0).ApplyURI(os.Getenv("MONGODB_URI")))
	if err != nil {
		log.Fatal(err)
	}
	payments := consistency.Collection(client.Database("shop"), "payments", consistency.Strong)
	if err := consistency.EnsureOnceIndex(ctx, payments); err != nil { // once, at start-up
		log.Fatal(err)
	}
	// The key comes from the client (an Idempotency-Key header): a retry of
	// the same request, on any instance, does not pay twice.
	inserted, err := consistency.InsertOnce(ctx, payments, "req-7f3a", bson.D{{Key: "amount", Value: 1999}})
	switch {
	case err != nil:
		log.Print(err)
	case inserted:
		log.Print("payment recorded")
	default:
		log.Print("already recorded: answer as the first time")
	}
}

func ExampleUpdateIfVersion() {
	ctx := context.Background()
	client, err := mongo.Connect(consistency.ClientOptions(consistency.Strong, 0).ApplyURI(os.Getenv("MONGODB_URI")))
	if err != nil {
		log.Fatal(err)
	}
	carts := consistency.Collection(client.Database("shop"), "carts", consistency.Strong)
	for {
		var cart struct{ Version int64 }
		if err := carts.FindOne(ctx, bson.D{{Key: "_id", Value: "42"}}).Decode(&cart); err != nil {
			log.Fatal(err)
		}
		_, err := consistency.UpdateIfVersion(ctx, carts, bson.D{{Key: "_id", Value: "42"}}, cart.Version,
			bson.D{{Key: "$push", Value: bson.D{{Key: "items", Value: "sku-1"}}}})
		if errors.Is(err, consistency.ErrConflict) {
			continue // another instance changed it first: reload and decide again
		}
		if err != nil {
			log.Fatal(err)
		}
		return
	}
}

func ExampleTransactor() {
	ctx := context.Background()
	client, err := mongo.Connect(consistency.ClientOptions(consistency.Strong, 0).ApplyURI(os.Getenv("MONGODB_URI")))
	if err != nil {
		log.Fatal(err)
	}
	tx, err := consistency.NewTransactor(client)
	if err != nil {
		log.Fatal(err)
	}
	accounts := consistency.Collection(client.Database("bank"), "accounts", consistency.Strong)
	err = tx.Run(ctx, func(ctx context.Context) error {
		if _, err := accounts.UpdateOne(ctx, bson.D{{Key: "_id", Value: "a"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "balance", Value: -10}}}}); err != nil {
			return err
		}
		_, err := accounts.UpdateOne(ctx, bson.D{{Key: "_id", Value: "b"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "balance", Value: 10}}}})
		return err
	})
	if errors.Is(err, consistency.ErrTransactionsUnsupported) {
		log.Fatal("this deployment has no transactions: run a replica set")
	}
}

func ExamplePreflight() {
	ctx := context.Background()
	client, err := mongo.Connect(consistency.ClientOptions(consistency.Strong, 0).ApplyURI(os.Getenv("MONGODB_URI")))
	if err != nil {
		log.Fatal(err)
	}
	report, err := consistency.Preflight(ctx, client, consistency.PreflightOptions{Collections: []string{"shop.orders"}})
	if err != nil {
		log.Fatal(err)
	}
	if err := report.Supports(consistency.Strong); err != nil {
		log.Fatalf("refusing to start: %v", err) // says why, in plain words
	}
}
