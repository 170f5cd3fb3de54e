package testenv

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/hashicorp/consul/api"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRedisSetGet(t *testing.T) {
	c := Redis(t)
	prefix := Name(t) + ":"
	CleanupRedisPrefix(t, c, prefix)
	ctx := ctxT(t)
	if err := c.Set(ctx, prefix+"k", "v", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, prefix+"k").Result()
	if err != nil || got != "v" {
		t.Fatalf("GET = %q, %v; want v", got, err)
	}
}

func TestRedisSentinelFindsMaster(t *testing.T) {
	sentinels, master := RedisSentinel(t)
	ctx := ctxT(t)
	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinels[0]})
	defer sc.Close()
	addr, err := sc.GetMasterAddrByName(ctx, master).Result()
	if err != nil || len(addr) != 2 {
		t.Fatalf("get-master-addr-by-name = %v, %v", addr, err)
	}
	c := RedisFailover(t)
	role, err := c.Do(ctx, "ROLE").Slice()
	if err != nil {
		t.Fatal(err)
	}
	if role[0] != "master" {
		t.Fatalf("the failover client reached a %v, want the master", role[0])
	}
	key := Name(t)
	CleanupRedisPrefix(t, c, key)
	if err := c.Set(ctx, key, "x", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Get(ctx, key).Result(); got != "x" {
		t.Fatalf("GET through Sentinel = %q", got)
	}
}

func TestRedisClusterRoutesBySlot(t *testing.T) {
	c := RedisCluster(t)
	ctx := ctxT(t)
	prefix := Name(t) + ":"
	CleanupRedisPrefix(t, c, prefix)
	// Write keys until three different masters hold one each, then read each
	// key straight from the node that owns its slot.
	owners := map[string]string{} // node address -> key
	for i := 0; i < 200 && len(owners) < 3; i++ {
		key := fmt.Sprintf("%s%d", prefix, i)
		if err := c.Set(ctx, key, key, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		node, err := c.MasterForKey(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		owners[node.Options().Addr] = key
	}
	if len(owners) < 3 {
		t.Fatalf("200 keys landed on %d masters, want 3: %v", len(owners), owners)
	}
	for addr, key := range owners {
		n := redis.NewClient(&redis.Options{Addr: addr})
		got, err := n.Get(ctx, key).Result()
		n.Close()
		if err != nil || got != key {
			t.Fatalf("node %s GET %s = %q, %v", addr, key, got, err)
		}
	}
}

func TestMemcachedSetGet(t *testing.T) {
	mc := memcache.New(MemcachedAddr(t))
	defer mc.Close()
	key := Name(t)
	if err := mc.Set(&memcache.Item{Key: key, Value: []byte("v"), Expiration: 60}); err != nil {
		t.Fatal(err)
	}
	it, err := mc.Get(key)
	if err != nil || string(it.Value) != "v" {
		t.Fatalf("get = %v, %v", it, err)
	}
	_ = mc.Delete(key)
}

func TestMongoInsertFind(t *testing.T) {
	c := Mongo(t)
	db := MongoDatabase(t, c)
	ctx := ctxT(t)
	coll := db.Collection("smoke")
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "a"}, {Key: "n", Value: 7}}); err != nil {
		t.Fatal(err)
	}
	var got struct {
		N int `bson:"n"`
	}
	if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: "a"}}).Decode(&got); err != nil || got.N != 7 {
		t.Fatalf("find = %+v, %v", got, err)
	}
	s, err := ProbeMongo(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("MongoDB-protocol server: %+v", s)
	if s.Flavour == "ferretdb" {
		for _, cp := range []MongoCapability{MongoTransactions, MongoChangeStreams, MongoTTLIndexes, MongoCausalClusterTime} {
			if s.Has(cp) {
				t.Errorf("FerretDB reported as having %s", cp)
			}
		}
		r := runRecorded(func(tb testing.TB) { RequireMongo(tb, c, MongoTransactions) })
		if !r.skipped || !strings.Contains(r.msg, "transactions") {
			t.Errorf("RequireMongo on FerretDB: skipped=%v msg=%q; want a skip naming transactions", r.skipped, r.msg)
		}
	}
}

func TestConsulRegisterAndKV(t *testing.T) {
	c := Consul(t)
	name := Name(t)
	CleanupConsulKV(t, c, name+"/")
	reg := &api.AgentServiceRegistration{ID: name, Name: name, Address: "127.0.0.1", Port: 8080}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Agent().ServiceDeregister(name) })
	svcs, _, err := c.Catalog().Service(name, "", nil)
	if err != nil || len(svcs) != 1 || svcs[0].ServicePort != 8080 {
		t.Fatalf("catalog service = %+v, %v", svcs, err)
	}
	if _, err := c.KV().Put(&api.KVPair{Key: name + "/k", Value: []byte("v")}, nil); err != nil {
		t.Fatal(err)
	}
	kv, _, err := c.KV().Get(name+"/k", nil)
	if err != nil || kv == nil || string(kv.Value) != "v" {
		t.Fatalf("kv get = %+v, %v", kv, err)
	}
}

func TestKFakeProduceConsume(t *testing.T) {
	cluster := KFake(t)
	brokers := cluster.ListenAddrs()
	if len(brokers) != 3 {
		t.Fatalf("kfake has %d brokers, want 3", len(brokers))
	}
	topic := Name(t)
	CreateTopic(t, brokers, topic, 3)
	ctx := ctxT(t)
	p, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.ProduceSync(ctx, &kgo.Record{Key: []byte("k"), Value: []byte("v")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	c, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fs := c.PollFetches(ctx)
	if err := fs.Err(); err != nil {
		t.Fatal(err)
	}
	recs := fs.Records()
	if len(recs) != 1 || string(recs[0].Value) != "v" {
		t.Fatalf("consumed %d records: %v", len(recs), recs)
	}
	r := runRecorded(func(tb testing.TB) { RequireKafka(tb, brokers, KafkaReplication) })
	if !r.skipped || !strings.Contains(r.msg, "kfake") {
		t.Errorf("RequireKafka(replication) on kfake: skipped=%v msg=%q; want a skip naming kfake", r.skipped, r.msg)
	}
}

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct {
		value, want, err string
	}{
		{"127.0.0.1:6379", "127.0.0.1:6379", ""},
		{" localhost:1 ", "localhost:1", ""},
		{"[::1]:6379", "[::1]:6379", ""},
		{"127.0.0.1", "", "not a host:port"},
		{":6379", "", "no host"},
		{"host:http", "", "want a number"},
		{"host:70000", "", "want a number"},
	} {
		got, err := ParseAddr("ACTIVEKIT_X", tc.value)
		if tc.err == "" {
			if err != nil || got != tc.want {
				t.Errorf("ParseAddr(%q) = %q, %v; want %q", tc.value, got, err, tc.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "ACTIVEKIT_X") || !strings.Contains(err.Error(), strings.TrimSpace(tc.value)) {
			t.Errorf("ParseAddr(%q) error = %v; want one naming the variable, the value and %q", tc.value, err, tc.err)
		}
	}
	if _, err := ParseAddrList("ACTIVEKIT_Y", "a:1,b"); err == nil || !strings.Contains(err.Error(), "ACTIVEKIT_Y") {
		t.Errorf("ParseAddrList with a bad element: %v", err)
	}
	if _, err := ParseAddrList("ACTIVEKIT_Y", " , "); err == nil {
		t.Error("ParseAddrList of nothing: no error")
	}
}

// The resolution rule: a server that is named but does not answer skips the
// test, or fails it under ACTIVEKIT_REQUIRE_INTEGRATION=1, naming the variable;
// a malformed value always fails, naming the variable and the value.
func TestResolutionRule(t *testing.T) {
	closed := "127.0.0.1:1" // nothing listens on port 1
	resolvers := map[string]func(e env, tb testing.TB){
		EnvRedisAddr:      func(e env, tb testing.TB) { e.redisAddr(tb) },
		EnvMemcachedAddr:  func(e env, tb testing.TB) { e.memcachedAddr(tb) },
		EnvConsulAddr:     func(e env, tb testing.TB) { e.consulAddr(tb) },
		EnvKafkaBrokers:   func(e env, tb testing.TB) { e.kafkaBrokers(tb) },
		EnvRedisCluster:   func(e env, tb testing.TB) { e.redisCluster(tb) },
		EnvRedisSentinels: func(e env, tb testing.TB) { e.redisSentinel(tb) },
		EnvMongoURI:       func(e env, tb testing.TB) { e.mongoURI(tb) },
	}
	for variable, resolve := range resolvers {
		value := closed
		if variable == EnvMongoURI {
			value = "mongodb://" + closed + "/"
		}
		for _, require := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/require=%v", variable, require), func(t *testing.T) {
				t.Parallel()
				vars := map[string]string{variable: value, EnvRedisMaster: "m"}
				if require {
					vars[EnvRequire] = "1"
				}
				r := runRecorded(func(tb testing.TB) { resolve(env(func(k string) string { return vars[k] }), tb) })
				if require && (!r.failed || r.skipped) {
					t.Fatalf("with %s=1: failed=%v skipped=%v, want a failure", EnvRequire, r.failed, r.skipped)
				}
				if !require && (!r.skipped || r.failed) {
					t.Fatalf("without %s: failed=%v skipped=%v, want a skip", EnvRequire, r.failed, r.skipped)
				}
				if !strings.Contains(r.msg, variable) {
					t.Fatalf("message %q does not name %s", r.msg, variable)
				}
			})
		}
	}
	for variable, resolve := range resolvers {
		bad := "not-an-address"
		if variable == EnvMongoURI {
			bad = "http://example"
		}
		t.Run(variable+"/malformed", func(t *testing.T) {
			vars := map[string]string{variable: bad, EnvRedisMaster: "m"}
			r := runRecorded(func(tb testing.TB) { resolve(env(func(k string) string { return vars[k] }), tb) })
			if !r.failed || !strings.Contains(r.msg, variable) || !strings.Contains(r.msg, bad) {
				t.Fatalf("malformed %s=%q: failed=%v msg=%q; want a failure naming both", variable, bad, r.failed, r.msg)
			}
		})
	}
}

// recorder is a testing.TB that records Fatal and Skip instead of acting on
// the real test, so the resolution rule itself can be tested.
type recorder struct {
	testing.TB
	mu       sync.Mutex
	failed   bool
	skipped  bool
	msg      string
	cleanups []func()
}

func (r *recorder) Helper()      {}
func (r *recorder) Name() string { return "TestRecorded" }
func (r *recorder) Logf(string, ...any) {
}
func (r *recorder) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.failed, r.msg = true, fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}
func (r *recorder) Skipf(format string, args ...any) {
	r.mu.Lock()
	r.skipped, r.msg = true, fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}

type recorded struct {
	failed, skipped bool
	msg             string
}

func runRecorded(f func(tb testing.TB)) recorded {
	r := &recorder{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	return recorded{r.failed, r.skipped, r.msg}
}
