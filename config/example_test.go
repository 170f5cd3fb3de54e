package config_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/activekit/activekit/config"
)

// AppConfig is an application's configuration.
type AppConfig struct {
	Listen   string        `json:"listen" config:"restart"`
	Timeout  time.Duration `json:"timeout"`
	MaxConns int           `json:"max_conns"`
	DBPass   config.Secret `json:"db_password"`
}

func (c *AppConfig) Validate() error {
	if c.MaxConns <= 0 {
		return errors.New("max_conns must be positive")
	}
	return nil
}

// A file, then the environment, over the defaults.
func ExampleNew() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "app.yaml")
	_ = os.WriteFile(path, []byte("timeout: 3s\nmax_conns: 50\n"), 0o600)
	env := func() []string { return []string{"APP_MAX_CONNS=80", "APP_DB_PASSWORD=hunter2"} }

	store, err := config.New(context.Background(), config.Options[AppConfig]{
		Defaults: AppConfig{Listen: ":8080", Timeout: time.Second, MaxConns: 10},
		Sources:  []config.Source{config.File(path), config.Env("APP_", env)},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer store.Close()
	c := store.Load()
	fmt.Println(c.Listen, c.Timeout, c.MaxConns, c.DBPass)
	fmt.Println(store.Status(context.Background()).Level)
	// Output:
	// :8080 3s 80 [REDACTED]
	// pass
}

// Subscribers see each applied change; a refused change keeps the last
// good configuration. Reload re-reads the sources (on SIGHUP, say); Watch
// does the same by itself for sources that change, such as Consul.
func ExampleStore_Subscribe() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "app.json")
	write := func(s string) { _ = os.WriteFile(path, []byte(s), 0o600) }
	write(`{"max_conns": 10}`)

	store, err := config.New(context.Background(), config.Options[AppConfig]{Sources: []config.Source{config.File(path)}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer store.Close()
	store.Subscribe(func(old, new AppConfig) {
		fmt.Printf("max_conns %d -> %d\n", old.MaxConns, new.MaxConns)
	})

	write(`{"max_conns": 20}`)
	_ = store.Reload(context.Background())

	write(`{"max_conns": -1}`)
	err = store.Reload(context.Background())
	fmt.Println(errors.Is(err, config.ErrInvalid), store.Load().MaxConns)

	write(`{"max_conns": 20, "listen": ":9090"}`)
	err = store.Reload(context.Background())
	fmt.Println(errors.Is(err, config.ErrRestartRequired), store.Status(context.Background()).Level)

	write(`{"max_conns": 20, "max_connz": 30}`)
	err = store.Reload(context.Background())
	fmt.Println(errors.Is(err, config.ErrDecode), store.Load().MaxConns)
	// Output:
	// max_conns 10 -> 20
	// true 20
	// true warn
	// true 20
}
