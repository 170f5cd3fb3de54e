package redisstore_test

import (
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/redisstore"
)

// One constructor for standalone, Sentinel and Cluster: pass any
// redis.UniversalClient.
func ExampleNew() {
	client := redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:      []string{"127.0.0.1:26379"}, // Sentinels
		MasterName: "mymaster",
	})
	defer client.Close()
	store, err := redisstore.New(client,
		redisstore.WithPrefix("shop:session:"),
		redisstore.WithWait(1, 100*time.Millisecond), // wait for a replica on each write
	)
	if err != nil {
		log.Fatal(err)
	}
	m, err := session.NewManager(store)
	if err != nil {
		log.Fatal(err)
	}
	_ = m // http.ListenAndServe(addr, m.Middleware(mux))
}
