package consulsource_test

import (
	"context"
	"log"
	"time"

	"github.com/activekit/activekit/config"
	"github.com/activekit/activekit/config/consulsource"
	"github.com/hashicorp/consul/api"
)

type AppConfig struct {
	Listen   string        `json:"listen" config:"restart"`
	Timeout  time.Duration `json:"timeout"`
	MaxConns int           `json:"max_conns"`
	DBPass   config.Secret `json:"db_password"`
}

// A file, the environment and a Consul prefix shared by the whole fleet,
// watched until the service stops.
func Example() {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	store, err := config.New(ctx, config.Options[AppConfig]{
		Defaults: AppConfig{Listen: ":8080", Timeout: time.Second, MaxConns: 10},
		Sources: []config.Source{
			config.OptionalFile("/etc/myservice/config.yaml"),
			config.Env("MYSERVICE_", nil),
			// myservice/config/max_conns = 50, myservice/config/timeout = 2s, ...
			consulsource.Prefix(client, "myservice/config/"),
		},
	})
	if err != nil {
		log.Fatal(err) // never start on a configuration that cannot be read
	}
	defer store.Close()
	watched := make(chan error, 1)
	go func() { watched <- store.Watch(ctx) }()
	defer func() { stop(); <-watched }() // Watch returns once ctx ends

	store.Subscribe(func(old, new AppConfig) {
		log.Printf("max_conns %d -> %d (config %s)", old.MaxConns, new.MaxConns, store.Hash())
	})
	_ = store.Load().MaxConns // on every request: one atomic load
}
