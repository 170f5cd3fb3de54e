package redisstore_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/sessiontest"
)

// TestApplyAgainstModel applies random deltas (sets, deletes, expected
// versions right and wrong, size limits) to one record and checks every
// answer, the values and versions, and the size the store keeps in _s,
// against a model: the fast script's bookkeeping (the names it is given
// with their "k:", the versions it compares as strings) must agree with
// what the general script would have done.
func TestApplyAgainstModel(t *testing.T) {
	for name, c := range clients(t) {
		t.Run(name, func(t *testing.T) {
			s, _, sessionKey := keyedStore(t, c)
			ctx := t.Context()
			id := sessiontest.NewID(t, "")
			if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: time.Hour}, Idle: time.Hour}); err != nil {
				t.Fatal(err)
			}
			type val struct {
				data string
				ver  uint64
			}
			model := map[string]val{}
			size := func() int {
				n := 0
				for k, v := range model {
					n += len(k) + len(v.data)
				}
				return n
			}
			keys := []string{"a", "bb", "ccc", "dddd", "k:x", "é"}
			rng := rand.New(rand.NewPCG(1, 2))
			for step := range 400 {
				d := session.Delta{Set: map[string][]byte{}, Expect: map[string]uint64{}, Idle: time.Hour}
				for _, k := range keys {
					switch rng.IntN(6) {
					case 0:
						d.Set[k] = []byte(strings.Repeat("v", rng.IntN(24)))
					case 1:
						d.Delete = append(d.Delete, k)
					}
				}
				stale := ""
				for _, k := range keys {
					if rng.IntN(5) == 0 {
						d.Expect[k] = model[k].ver
						if rng.IntN(4) == 0 {
							d.Expect[k]++
							if stale == "" || k < stale {
								stale = k
							}
						}
					}
				}
				if len(d.Set) == 0 && len(d.Delete) == 0 {
					continue
				}
				after := map[string]val{}
				for k, v := range model {
					after[k] = v
				}
				for _, k := range d.Delete {
					delete(after, k)
				}
				for k, v := range d.Set {
					after[k] = val{data: string(v)}
				}
				n := 0
				for k, v := range after {
					n += len(k) + len(v.data)
				}
				if rng.IntN(4) == 0 {
					d.MaxSize = n - 1 + rng.IntN(3) // at, under or over the new size
				} else if rng.IntN(8) == 0 {
					d.MaxSize = -1 - rng.IntN(n+1) // not positive: no limit
				}
				ver, err := s.Apply(ctx, id, d)
				var ce *session.ConflictError
				var se *session.SizeError
				switch {
				case stale != "":
					// Several stale keys: any of them may be named.
					if !errors.As(err, &ce) || d.Expect[ce.Key] == model[ce.Key].ver {
						t.Fatalf("step %d: stale expectation on %q: %v, want a conflict naming a stale key", step, stale, err)
					}
				case d.MaxSize > 0 && len(d.Set) > 0 && n > d.MaxSize:
					if !errors.As(err, &se) || se.Size != n {
						t.Fatalf("step %d: %d bytes over a limit of %d: %v, want a SizeError of %d", step, n, d.MaxSize, err, n)
					}
				case err != nil:
					t.Fatalf("step %d: %v", step, err)
				default:
					for k, v := range after {
						if _, set := d.Set[k]; set {
							v.ver = ver
							after[k] = v
						}
					}
					model = after
				}
				if got := hgetInt(t, c, sessionKey(id), "_s"); got != int64(size()) {
					t.Fatalf("step %d: _s = %d, want %d", step, got, size())
				}
				rec, found, err := s.Load(ctx, id, time.Hour)
				if err != nil || !found {
					t.Fatalf("step %d: Load: found=%v %v", step, found, err)
				}
				if len(rec.Values) != len(model) {
					t.Fatalf("step %d: %d values, want %d", step, len(rec.Values), len(model))
				}
				for k, v := range model {
					if got := rec.Values[k]; string(got.Data) != v.data || got.Version != v.ver {
						t.Fatalf("step %d: %q = %q v%d, want %q v%d", step, k, got.Data, got.Version, v.data, v.ver)
					}
				}
			}
		})
	}
}

// TestSkipReadBothProtocols: a read within the idle resolution (HGETALL
// alone) returns the record as the full read does, over RESP2 and RESP3,
// standalone and Cluster; and a key that is not a hash gives Redis's error,
// not a missing session.
func TestSkipReadBothProtocols(t *testing.T) {
	addr := testenv.RedisAddr(t)
	cluster := testenv.RedisClusterAddrs(t)
	for _, proto := range []int{2, 3} {
		for name, c := range map[string]redis.UniversalClient{
			"standalone": redis.NewClient(&redis.Options{Addr: addr, Protocol: proto}),
			"cluster":    redis.NewClusterClient(&redis.ClusterOptions{Addrs: cluster, Protocol: proto}),
		} {
			t.Cleanup(func() { _ = c.Close() })
			t.Run(fmt.Sprintf("resp%d/%s", proto, name), func(t *testing.T) {
				s, _, sessionKey := keyedStore(t, c)
				ctx := t.Context()
				id := sessiontest.NewID(t, "")
				want := map[string]string{"a": "1", "empty": "", "crlf": "x\r\n$3\r\n", "é": strings.Repeat("v", 3000)}
				set := map[string][]byte{}
				for k, v := range want {
					set[k] = []byte(v)
				}
				// The absolute deadline far enough past the idle one that a
				// read within the resolution skips the refresh (see absMargin).
				if _, err := s.Apply(ctx, id, session.Delta{Create: &session.Create{Absolute: 24 * time.Hour}, Set: set, Idle: time.Hour}); err != nil {
					t.Fatal(err)
				}
				var first session.Record
				for i := range 3 { // the first read moves the idle deadline; the others skip
					rec, found, err := s.Load(ctx, id, time.Hour)
					if err != nil || !found {
						t.Fatalf("Load %d: found=%v %v", i, found, err)
					}
					if len(rec.Values) != len(want) {
						t.Fatalf("Load %d: %d values, want %d", i, len(rec.Values), len(want))
					}
					for k, v := range want {
						if got := string(rec.Values[k].Data); got != v {
							t.Fatalf("Load %d: %q = %.40q, want %.40q", i, k, got, v)
						}
					}
					if i == 0 {
						first = rec
					} else if rec.Version != first.Version || !rec.AbsoluteDeadline.Equal(first.AbsoluteDeadline) || !rec.Created.Equal(first.Created) {
						t.Fatalf("Load %d: %+v, want the first read's version and deadlines %+v", i, rec, first)
					}
				}
				if err := c.Set(ctx, sessionKey(id), "not a hash", time.Minute).Err(); err != nil {
					t.Fatal(err)
				}
				if _, _, err := s.Load(ctx, id, time.Hour); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
					t.Fatalf("Load of a key that is not a hash: %v, want Redis's WRONGTYPE", err)
				}
			})
		}
	}
}
