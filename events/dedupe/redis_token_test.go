package dedupe

// Tests of marking a batch done by its token (RedisStore's "Done by token"):
// when DoneBatch writes the token's one field, and every condition under
// which it must mark each event instead.

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/internal/testenv"
)

// tokenFixture is a one-shard store, its client and a second store on the
// same records (another instance).
type tokenFixture struct {
	s, other *RedisStore
	c        redis.UniversalClient
	ctx      context.Context
}

func newTokenFixture(t *testing.T) *tokenFixture {
	t.Helper()
	s, c := layoutStore(t, RedisConfig{Retention: time.Hour, Shards: 1})
	other, err := NewRedisStore(c, RedisConfig{Prefix: s.prefix, Retention: time.Hour, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	f := &tokenFixture{s: s, other: other, c: c, ctx: context.Background()}
	if _, err := s.Claim(f.ctx, "g", "clock", time.Minute); err != nil { // learns Redis's clock
		t.Fatal(err)
	}
	return f
}

// keys returns the shard's record and token hashes of the current
// generation.
func (f *tokenFixture) keys() (records, tokens string) {
	k := f.s.genKeys("g", 0, f.s.generation())
	return k[0], k[generations]
}

func (f *tokenFixture) claim(t *testing.T, n int, prefix string) []Claim {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = prefix + strconv.Itoa(i)
	}
	cs, err := f.s.ClaimBatch(f.ctx, "g", ids, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.Status != Claimed {
			t.Fatalf("%s: %v, want claimed", c.ID, c.Status)
		}
	}
	return cs
}

func (f *tokenFixture) doneBatch(t *testing.T, cs []Claim) {
	t.Helper()
	res, err := f.s.DoneBatch(f.ctx, cs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r != nil {
			t.Fatalf("DoneBatch: %s: %v", cs[i].ID, r)
		}
	}
}

func (f *tokenFixture) hash(t *testing.T, key string) map[string]string {
	t.Helper()
	h, err := f.c.HGetAll(f.ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// byToken checks that the token's claims were marked by its one field: their
// values unchanged, "t:<token>" set.
func (f *tokenFixture) byToken(t *testing.T, cs []Claim) {
	t.Helper()
	records, tokens := f.keys()
	rec, tok := f.hash(t, records), f.hash(t, tokens)
	token := cs[0].Token
	if tok["t:"+token] != "d" {
		t.Fatalf("token hash %v: no t:%s", tok, token)
	}
	for _, c := range cs {
		if !strings.HasPrefix(rec[c.ID], "c:"+token+":") {
			t.Fatalf("%s holds %q, want its claim value (marked by token)", c.ID, rec[c.ID])
		}
	}
}

// byID checks that the claims were marked each by its own field and the
// token's mark was not written.
func (f *tokenFixture) byID(t *testing.T, cs []Claim) {
	t.Helper()
	records, tokens := f.keys()
	rec, tok := f.hash(t, records), f.hash(t, tokens)
	for _, c := range cs {
		if _, ok := tok["t:"+c.Token]; ok {
			t.Fatalf("token hash %v: t:%s written", tok, c.Token)
		}
		if rec[c.ID] != "d" {
			t.Fatalf("%s holds %q, want d", c.ID, rec[c.ID])
		}
	}
}

// status returns what another instance's Claim finds for id (and gives the
// claim back when it took one).
func (f *tokenFixture) status(t *testing.T, id string) Status {
	t.Helper()
	c, err := f.other.Claim(f.ctx, "g", id, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if c.Status == Claimed {
		if err := f.other.Release(f.ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	return c.Status
}

// TestRedisDoneBatchByToken: a DoneBatch of all of a ClaimBatch's claims
// writes the token's mark and no event's field, and every call reads the
// claims as done: claims (single and batched, by another instance, before
// and after their deadline, from the previous generation), Done, the checked
// DoneBatch, Release (which must not drop them) and DoneWith (which must not
// run its effect).
func TestRedisDoneBatchByToken(t *testing.T) {
	f := newTokenFixture(t)
	cs := f.claim(t, 20, "e")
	_, tokens := f.keys()
	count := f.hash(t, tokens)["n:"+cs[0].Token]
	if n, _, _ := strings.Cut(count, ":"); n != "20" {
		t.Fatalf("count field %q, want 20:<deadline>", count)
	}
	f.doneBatch(t, cs)
	f.byToken(t, cs)

	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	check := func(when string) {
		t.Helper()
		if st := f.status(t, "e3"); st != Done {
			t.Fatalf("%s: Claim: %v, want done", when, st)
		}
		again, err := f.other.ClaimBatch(f.ctx, "g", ids, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range again {
			if c.Status != Done {
				t.Fatalf("%s: ClaimBatch: %s %v, want done", when, c.ID, c.Status)
			}
		}
		if err := f.s.Done(f.ctx, cs[1]); err != nil {
			t.Fatalf("%s: Done: %v", when, err)
		}
		res, err := f.s.DoneBatch(f.ctx, []Claim{{Group: "g", ID: "e2", Token: cs[2].Token, Status: Claimed}})
		if err != nil || res[0] != nil {
			t.Fatalf("%s: checked DoneBatch: %v, %v", when, res, err)
		}
		if err := f.s.ReleaseBatch(f.ctx, cs[4:6]); err != nil {
			t.Fatal(err)
		}
		if err := f.s.Release(f.ctx, cs[6]); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"e4", "e5", "e6"} {
			if st := f.status(t, id); st != Done {
				t.Fatalf("%s: %s %v after Release, want done", when, id, st)
			}
		}
		effect := f.s.Key("g", cs[7].ID) + ":effect"
		err = f.s.DoneWith(f.ctx, cs[7], func(ctx context.Context, p redis.Pipeliner) error {
			p.Incr(ctx, effect)
			return nil
		})
		if !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("%s: DoneWith: %v, want ErrLeaseLost", when, err)
		}
		if n := f.c.Exists(f.ctx, effect).Val(); n != 0 {
			t.Fatalf("%s: DoneWith ran its effect", when)
		}
	}
	check("leases held")
	f.byToken(t, cs)

	// Past the deadline, nobody takes them over.
	records, _ := f.keys()
	for id, v := range f.hash(t, records) {
		if strings.HasPrefix(v, "c:") {
			if err := f.c.HSet(f.ctx, records, id, v[:strings.LastIndexByte(v, ':')+1]+"1").Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	check("leases ended")

	// A generation on, the records and the token's mark are read from the
	// previous generation.
	g := f.s.generation()
	prev := f.s.genKeys("g", 0, g-1)
	cur := f.s.genKeys("g", 0, g)
	for i := range generations {
		if err := f.c.Rename(f.ctx, cur[i*generations], prev[i*generations]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	check("previous generation")
}

// TestRedisDoneBatchByTokenFallbacks: each condition under which DoneBatch
// must mark every event by its own field; the events it was not given stay
// claimed, not done.
func TestRedisDoneBatchByTokenFallbacks(t *testing.T) {
	t.Run("part of the batch", func(t *testing.T) {
		f := newTokenFixture(t)
		cs := f.claim(t, 20, "e")
		f.doneBatch(t, cs[:19])
		f.byID(t, cs[:19])
		if st := f.status(t, cs[19].ID); st != Busy {
			t.Fatalf("%s: %v, want busy (still claimed)", cs[19].ID, st)
		}
	})
	t.Run("a claim repeated, another left out", func(t *testing.T) {
		// As many claims as the count, but not all of the events.
		f := newTokenFixture(t)
		cs := f.claim(t, 20, "e")
		given := append(append([]Claim{}, cs[:19]...), cs[0])
		f.doneBatch(t, given)
		f.byID(t, cs[:19])
		if st := f.status(t, cs[19].ID); st != Busy {
			t.Fatalf("%s: %v, want busy (still claimed)", cs[19].ID, st)
		}
	})
	t.Run("one released", func(t *testing.T) {
		f := newTokenFixture(t)
		cs := f.claim(t, 20, "e")
		if err := f.s.Release(f.ctx, cs[19]); err != nil {
			t.Fatal(err)
		}
		_, tokens := f.keys()
		if v, ok := f.hash(t, tokens)["n:"+cs[0].Token]; ok {
			t.Fatalf("count %q kept after a release", v)
		}
		f.doneBatch(t, cs[:19])
		f.byID(t, cs[:19])
		if st := f.status(t, cs[19].ID); st != Claimed {
			t.Fatalf("released %s: %v, want claimable", cs[19].ID, st)
		}
		// Even a DoneBatch naming the released claim (its effect
		// happened after all) marks it, as before.
		f.doneBatch(t, cs)
		f.byID(t, cs)
	})
	t.Run("deadline passed on Redis's clock", func(t *testing.T) {
		f := newTokenFixture(t)
		cs := f.claim(t, 20, "e")
		_, tokens := f.keys()
		if err := f.c.HSet(f.ctx, tokens, "n:"+cs[0].Token, "20:1").Err(); err != nil {
			t.Fatal(err)
		}
		f.doneBatch(t, cs)
		f.byID(t, cs)
	})
	t.Run("claim call made again", func(t *testing.T) {
		// The claim script run twice with one token (a pipeline made
		// again after NOSCRIPT): the second run finds the claims its
		// own and leaves no count.
		f := newTokenFixture(t)
		ids := make([]string, 20)
		for i := range ids {
			ids[i] = "e" + strconv.Itoa(i)
		}
		token := NewToken()
		items := make([]item, len(ids))
		for i, id := range ids {
			items[i] = item{at: i, id: id}
		}
		calls := f.s.plan("g", items)
		for range 2 {
			if _, err := f.s.run(f.ctx, claimScript, "g", calls, []any{mine(token), time.Minute.Milliseconds(), "n:" + token}, claimArgs(calls)); err != nil {
				t.Fatal(err)
			}
		}
		_, tokens := f.keys()
		if v := f.hash(t, tokens)["n:"+token]; v != "x" {
			t.Fatalf("count %q after the call ran twice, want x", v)
		}
		cs := make([]Claim, len(ids))
		for i, id := range ids {
			cs[i] = Claim{Group: "g", ID: id, Token: token, Status: Claimed, held: time.Now().Add(time.Minute / 2)}
		}
		f.doneBatch(t, cs)
		f.byID(t, cs)
	})
	t.Run("claim call made again in the next generation", func(t *testing.T) {
		// The first run claimed 15 of the 20 events (5 were busy), the
		// second, a generation on, finds those its own and claims the
		// other 5: a count of 5 would let a DoneBatch of 5 of the 15
		// mark all 20 by token.
		f := newTokenFixture(t)
		ids := make([]string, 20)
		for i := range ids {
			ids[i] = "e" + strconv.Itoa(i)
		}
		token := NewToken()
		items := make([]item, len(ids))
		for i, id := range ids {
			items[i] = item{at: i, id: id}
		}
		calls := f.s.plan("g", items)
		head := []any{mine(token), time.Minute.Milliseconds(), "n:" + token}
		if _, err := f.s.run(f.ctx, claimScript, "g", calls, head, claimArgs(calls)); err != nil {
			t.Fatal(err)
		}
		g := f.s.generation()
		prev, cur := f.s.genKeys("g", 0, g-1), f.s.genKeys("g", 0, g)
		for i := range generations {
			if err := f.c.Rename(f.ctx, cur[i*generations], prev[i*generations]).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.c.HDel(f.ctx, prev[0], ids[15:]...).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := f.s.run(f.ctx, claimScript, "g", calls, head, claimArgs(calls)); err != nil {
			t.Fatal(err)
		}
		_, tokens := f.keys()
		if v := f.hash(t, tokens)["n:"+token]; v != "x" {
			t.Fatalf("count %q after the call ran again, want x", v)
		}
		cs := make([]Claim, 5)
		for i := range cs {
			cs[i] = Claim{Group: "g", ID: ids[i], Token: token, Status: Claimed, held: time.Now().Add(time.Minute / 2)}
		}
		f.doneBatch(t, cs)
		f.byID(t, cs)
		if st := f.status(t, ids[19]); st != Busy {
			t.Fatalf("%s: %v, want busy (still claimed)", ids[19], st)
		}
	})
	t.Run("claims of an earlier generation", func(t *testing.T) {
		f := newTokenFixture(t)
		cs := f.claim(t, 20, "e")
		g := f.s.generation()
		prev := f.s.genKeys("g", 0, g-1)
		cur := f.s.genKeys("g", 0, g)
		for i := range generations {
			if err := f.c.Rename(f.ctx, cur[i*generations], prev[i*generations]).Err(); err != nil {
				t.Fatal(err)
			}
		}
		f.doneBatch(t, cs)
		f.byID(t, cs)
	})
	t.Run("two tokens in the shard", func(t *testing.T) {
		f := newTokenFixture(t)
		cs := append(f.claim(t, 10, "a"), f.claim(t, 10, "b")...)
		f.doneBatch(t, cs)
		f.byID(t, cs)
	})
	t.Run("too few to count", func(t *testing.T) {
		f := newTokenFixture(t)
		cs := f.claim(t, minTokenIDs-1, "e")
		_, tokens := f.keys()
		if n := f.c.Exists(f.ctx, tokens).Val(); n != 0 {
			t.Fatalf("token hash written for %d claims", len(cs))
		}
		f.doneBatch(t, cs)
		f.byID(t, cs)
	})
	t.Run("lease nearly over", func(t *testing.T) {
		// Claims whose leases may have ended are checked one by one.
		f := newTokenFixture(t)
		cs := f.claim(t, 20, "e")
		for i := range cs {
			cs[i].held = time.Now().Add(-time.Millisecond)
		}
		f.doneBatch(t, cs)
		f.byID(t, cs)
	})
}

// TestRedisDoneBatchByTokenSplitShard: a shard whose IDs a ClaimBatch split
// over two script calls is not counted (each call would count only its
// own); the others are, and are marked by token.
func TestRedisDoneBatchByTokenSplitShard(t *testing.T) {
	s, c := layoutStore(t, RedisConfig{Retention: time.Hour, Shards: 2})
	ctx := context.Background()
	ids := make([]string, 1500)
	for i := range ids {
		ids[i] = "e" + strconv.Itoa(i)
	}
	cs, err := s.ClaimBatch(ctx, "g", ids, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.DoneBatch(ctx, cs); err != nil {
		t.Fatal(err)
	}
	// plan fills the first call with the first shard met, then the other
	// up to maxBatchKeys: that one is split.
	first := s.shard(ids[0])
	g := s.generation()
	for k := range uint32(2) {
		keys := s.genKeys("g", k, g)
		marked := c.HExists(ctx, keys[generations], "t:"+cs[0].Token).Val()
		if marked != (k == first) {
			t.Errorf("shard %d (first %d): marked by token %v", k, first, marked)
		}
		// Not counted at all: calls straddling a generation's end would
		// each count theirs, in their own generation, without a clash.
		counted := c.HExists(ctx, keys[generations], "n:"+cs[0].Token).Val()
		if counted != (k == first) {
			t.Errorf("shard %d (first %d): counted %v", k, first, counted)
		}
	}
	other, _ := NewRedisStore(c, RedisConfig{Prefix: s.prefix, Retention: time.Hour, Shards: 2})
	again, err := other.ClaimBatch(ctx, "g", ids, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range again {
		if cl.Status != Done {
			t.Fatalf("%s: %v, want done", cl.ID, cl.Status)
		}
	}
}

// TestRedisDoneBatchByTokenCluster: on a Cluster, each shard's count and
// mark are in its own slot, next to its records; a pipeline that partly ran
// before a NOSCRIPT and was made again leaves the shards it ran on uncounted
// (marked by ID) and the others marked by token; either way every event is
// done for another instance.
func TestRedisDoneBatchByTokenCluster(t *testing.T) {
	c := testenv.RedisCluster(t)
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, c, prefix)
	ctx := context.Background()
	s, err := NewRedisStore(c, RedisConfig{Prefix: prefix, Shards: 8})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewRedisStore(c, RedisConfig{Prefix: prefix, Shards: 8})
	// The master of shard 0, and which shards it has.
	master, err := c.MasterForKey(ctx, s.genKeys("g", 0, 0)[0])
	if err != nil {
		t.Fatal(err)
	}
	onMaster := make(map[uint32]bool)
	for k := range uint32(8) {
		m, err := c.MasterForKey(ctx, s.genKeys("g", k, 0)[0])
		if err != nil {
			t.Fatal(err)
		}
		onMaster[k] = m.Options().Addr == master.Options().Addr
	}
	for round, flush := range []bool{false, true} {
		// Every master has the scripts (other tests flush them)...
		if err := c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			for _, sc := range []*redis.Script{claimScript, markScript} {
				if err := sc.Load(ctx, n).Err(); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if flush {
			// ...but, in the second round, shard 0's.
			if err := master.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		ids := make([]string, 400)
		for i := range ids {
			ids[i] = "r" + strconv.Itoa(round) + "-" + strconv.Itoa(i)
		}
		cs, err := s.ClaimBatch(ctx, "g", ids, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.DoneBatch(ctx, cs); err != nil {
			t.Fatal(err)
		}
		g := s.generation()
		byToken := 0
		for k := range uint32(8) {
			keys := s.genKeys("g", k, g)
			count := c.HGet(ctx, keys[generations], "n:"+cs[0].Token).Val()
			marked := c.HExists(ctx, keys[generations], "t:"+cs[0].Token).Val()
			if marked {
				byToken++
			}
			if marked == (count == "x") {
				t.Errorf("round %d shard %d: count %q, marked by token %v", round, k, count, marked)
			}
			// The flushed node's calls ran once (after NOSCRIPT),
			// the others' twice.
			if want := !flush || onMaster[k]; marked != want {
				t.Errorf("round %d shard %d (on the flushed node %v): marked by token %v, want %v", round, k, flush && onMaster[k], marked, want)
			}
		}
		if flush && byToken == 8 {
			t.Errorf("after one node's NOSCRIPT: all 8 shards marked by token")
		}
		again, err := other.ClaimBatch(ctx, "g", ids, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		for _, cl := range again {
			if cl.Status != Done {
				t.Fatalf("round %d: %s %v, want done", round, cl.ID, cl.Status)
			}
		}
	}
}
