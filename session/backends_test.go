package session_test

import (
	"testing"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/memcachedstore"
	"github.com/activekit/activekit/session/memstore"
	"github.com/activekit/activekit/session/redisstore"
)

// backends are the stores the race tests of renewals run on: memstore, and
// Redis and Memcached through internal/testenv. Each returns open, which
// gives the store of one more instance of a service: every store open
// returns shares the backend (and, for memstore, is the same store), under
// a key prefix of the test's own.
var backends = []struct {
	name string
	open func(t *testing.T) (open func() session.Store)
}{
	{"memstore", func(t *testing.T) func() session.Store {
		s, err := memstore.New()
		if err != nil {
			t.Fatal(err)
		}
		return func() session.Store { return s }
	}},
	{"redis", func(t *testing.T) func() session.Store {
		prefix := testenv.Name(t) + ":"
		testenv.CleanupRedisPrefix(t, testenv.Redis(t), prefix)
		return func() session.Store {
			s, err := redisstore.New(testenv.Redis(t), redisstore.WithPrefix(prefix))
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}},
	{"memcached", func(t *testing.T) func() session.Store {
		addr, prefix := testenv.MemcachedAddr(t), testenv.Name(t)+":"
		return func() session.Store {
			c := memcache.New(addr)
			t.Cleanup(func() { _ = c.Close() })
			s, err := memcachedstore.New(c, memcachedstore.WithPrefix(prefix))
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}},
}
