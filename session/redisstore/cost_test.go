package redisstore_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/redisstore"
	"github.com/activekit/activekit/session/sessiontest"
)

// BenchmarkRedisInstructions counts the instructions redis-server runs per
// request of the Store, with callgrind: a figure that, unlike time, does not
// move with whatever else the machine is doing, so that a change to a script
// can be measured in one run of each side. bench/rediscost.sh starts a
// redis-server under valgrind --tool=callgrind and runs it; without that
// server (ACTIVEKIT_CALLGRIND_REDIS, its address, and ACTIVEKIT_CALLGRIND_OUT,
// the --callgrind-out-file it was given) the benchmark is skipped.
//
// The requests are the ones bench/ measures in time: a one-key write of a
// seeded session (the Manager's blind write) and a Load of it, then the bare
// handler's SET and GET, and bench's floor (the same fields in a hash: a
// two-line script's EXISTS and HSET, and HGETALL) for comparison. The counts include the server's
// reading of each request and writing of its reply, not the kernel's work.
//
// "least-write" is the least a script can run that does what issue #4 asks of
// a write, with nothing of activekit's around it: refuse to resurrect a
// session that is gone, keep the session's size under a limit, set the field
// with its new version, bump the session's version, and move the expiry to
// the earlier of the idle and the absolute deadline (computed by the client).
// It checks no revocation, no alias and no expected version, and moves the
// expiry on every write: between it and "write" is what activekit's script
// does beyond that minimum.
func BenchmarkRedisInstructions(b *testing.B) {
	addr, out := os.Getenv("ACTIVEKIT_CALLGRIND_REDIS"), os.Getenv("ACTIVEKIT_CALLGRIND_OUT")
	if addr == "" || out == "" {
		b.Skip("no redis-server under callgrind: run bench/rediscost.sh")
	}
	c := redis.NewClient(&redis.Options{Addr: addr})
	b.Cleanup(func() { c.Close() })
	ctx := b.Context()
	if err := c.Ping(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	s, err := redisstore.New(c, redisstore.WithPrefix("cost:"))
	if err != nil {
		b.Fatal(err)
	}
	const idle = 30 * time.Minute
	id := sessiontest.NewID(b, "")
	seed := session.Delta{
		Create: &session.Create{Absolute: 24 * time.Hour},
		Set: map[string][]byte{"user": []byte(`"alice"`), "cart": []byte(`["book","pen","lamp"]`),
			"theme": []byte(`"dark"`), "csrf": []byte(`"0123456789abcdef0123456789abcdef"`)},
		Idle: idle,
	}
	if _, err := s.Apply(ctx, id, seed); err != nil {
		b.Fatal(err)
	}
	if err := c.Set(ctx, "cost:bare", "alice", idle).Err(); err != nil {
		b.Fatal(err)
	}
	if err := c.HSet(ctx, "cost:floor", "_v", 4, "_c", 1, "_a", time.Now().Add(24*time.Hour).UnixMilli(), "_s", 80,
		"k:user", `1:"alice"`, "k:cart", `2:["book","pen","lamp"]`, "k:theme", `3:"dark"`,
		"k:csrf", `4:"0123456789abcdef0123456789abcdef"`).Err(); err != nil {
		b.Fatal(err)
	}
	floor := redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
`)
	least := redis.NewScript(`
local m = redis.call('HMGET', KEYS[1], '_a', '_v', '_s', ARGV[1])
if not m[1] then return 0 end
local size = tonumber(m[3]) + #ARGV[2] - (m[4] and #m[4] or 0)
if size > tonumber(ARGV[4]) then return -1 end
local v = tonumber(m[2]) + 1
redis.call('HSET', KEYS[1], ARGV[1], v .. ':' .. ARGV[2], '_v', v, '_s', size)
local exp, abs = tonumber(ARGV[3]), tonumber(m[1])
if abs < exp then exp = abs end
redis.call('PEXPIREAT', KEYS[1], exp)
return v
`)
	requests := []struct {
		name string
		do   func() error
	}{
		{"write", func() error {
			_, err := s.Apply(ctx, id, session.Delta{
				Set:     map[string][]byte{"last": []byte(strconv.FormatInt(time.Now().UnixNano(), 10))},
				Idle:    idle,
				MaxSize: 4096,
			})
			return err
		}},
		{"read", func() error {
			_, found, err := s.Load(ctx, id, idle)
			if err == nil && !found {
				b.Fatal("seeded session not found")
			}
			return err
		}},
		{"bare-set", func() error { return c.Set(ctx, "cost:bare:last", time.Now().UnixNano(), idle).Err() }},
		{"bare-get", func() error { return c.Get(ctx, "cost:bare").Err() }},
		{"floor-write", func() error {
			return floor.Run(ctx, c, []string{"cost:floor"}, "k:last", "5:"+strconv.FormatInt(time.Now().UnixNano(), 10)).Err()
		}},
		{"floor-read", func() error { return c.HGetAll(ctx, "cost:floor").Err() }},
		{"least-write", func() error {
			now := time.Now()
			n, err := least.Run(ctx, c, []string{"cost:floor"}, "k:last", strconv.FormatInt(now.UnixNano(), 10),
				now.Add(idle).UnixMilli(), 4096).Int()
			if err == nil && n <= 0 {
				b.Fatalf("least-write answered %d", n)
			}
			return err
		}},
	}
	for _, r := range requests {
		b.Run(r.name, func(b *testing.B) {
			for range 100 { // past the first writes and the idle refresh
				if err := r.do(); err != nil {
					b.Fatal(err)
				}
			}
			callgrind(b, "-z")
			for b.Loop() {
				if err := r.do(); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(callgrindTotal(b, out))/float64(b.N), "redis-instr/op")
		})
	}
}

func callgrind(b *testing.B, arg string) {
	b.Helper()
	if out, err := exec.Command("callgrind_control", arg).CombinedOutput(); err != nil {
		b.Fatalf("callgrind_control %s: %v: %s", arg, err, out)
	}
}

// callgrindTotal dumps the counts since the last zeroing and returns their
// total; the dump (out.N, the newest) is removed.
func callgrindTotal(b *testing.B, out string) int64 {
	b.Helper()
	callgrind(b, "-d")
	dumps, _ := filepath.Glob(out + ".*")
	var newest string
	var at time.Time
	for _, d := range dumps {
		if fi, err := os.Stat(d); err == nil && fi.ModTime().After(at) {
			newest, at = d, fi.ModTime()
		}
	}
	if newest == "" {
		b.Fatalf("no callgrind dump %s.*", out)
	}
	defer os.Remove(newest)
	data, err := os.ReadFile(newest)
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) == 2 && (f[0] == "summary:" || f[0] == "totals:") {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatalf("no total in %s", newest)
	return 0
}
