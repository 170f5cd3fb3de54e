package memcachedstore_test

import (
	"log"
	"net/http"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/memcachedstore"
)

// Every instance of the service builds the same store over the same
// Memcached servers; gomemcache spreads keys across them.
func ExampleNew() {
	client := memcache.New("10.0.0.1:11211", "10.0.0.2:11211")
	client.MaxIdleConns = 64 // about the peak of concurrent requests
	defer client.Close()
	store, err := memcachedstore.New(client,
		memcachedstore.WithPrefix("shop:session:"),
		memcachedstore.WithMaxAttempts(32), // hot sessions written by many instances at once
	)
	if err != nil {
		log.Fatal(err)
	}
	m, err := session.NewManager(store)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	_ = m.Middleware(mux) // http.ListenAndServe(addr, m.Middleware(mux))
}
