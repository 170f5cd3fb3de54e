package consulsource

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/config"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/retry"
	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type fleetConfig struct {
	Version  int           `json:"version"`
	Level    string        `json:"level"`
	MaxConns int           `json:"max_conns"`
	Timeout  time.Duration `json:"timeout"`
	Listen   string        `json:"listen" config:"restart"`
	Token    config.Secret `json:"token"`
}

func (c *fleetConfig) Validate() error {
	if c.MaxConns < 0 {
		return errors.New("max_conns must not be negative")
	}
	return nil
}

// instance is one member of the fleet: a store watching the prefix, and
// the time each version was swapped in.
type instance struct {
	store *config.Store[fleetConfig]
	mu    sync.Mutex
	seen  map[int]time.Time
	ch    chan int
}

func put(t *testing.T, c *api.Client, key, value string) {
	t.Helper()
	if _, err := c.KV().Put(&api.KVPair{Key: key, Value: []byte(value)}, nil); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func startFleet(t *testing.T, client *api.Client, prefix string, n int, opts ...Option) []*instance {
	t.Helper()
	fleet := make([]*instance, n)
	for i := range fleet {
		s, err := config.New(context.Background(), config.Options[fleetConfig]{
			Defaults: fleetConfig{Level: "info", MaxConns: 10, Listen: ":8080"},
			Sources:  []config.Source{Prefix(client, prefix, opts...)},
			Name:     fmt.Sprint("instance-", i),
		})
		if err != nil {
			t.Fatalf("instance %d: %v", i, err)
		}
		in := &instance{store: s, seen: map[int]time.Time{}, ch: make(chan int, 1024)}
		s.Subscribe(func(_, n fleetConfig) {
			now := time.Now()
			in.mu.Lock()
			in.seen[n.Version] = now
			in.mu.Unlock()
			in.ch <- n.Version
		})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Watch(ctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("Watch = %v", err)
			}
			_ = s.Close()
		})
		fleet[i] = in
	}
	return fleet
}

// await waits until every instance has swapped in version v.
func await(t *testing.T, fleet []*instance, v int) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for i, in := range fleet {
		for got := -1; got != v; {
			select {
			case got = <-in.ch:
			case <-timeout:
				t.Fatalf("instance %d never reached version %d (at %d, last error %v)", i, v, in.store.Load().Version, in.store.LastError())
			}
		}
	}
}

// waitFor polls cond: nothing signals "a change was refused" on every
// instance but its error accessor.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func sameHash(t *testing.T, fleet []*instance) string {
	t.Helper()
	h := fleet[0].store.Hash()
	for i, in := range fleet[1:] {
		if in.store.Hash() != h {
			t.Errorf("instance %d has hash %s, instance 0 %s: drift", i+1, in.store.Hash(), h)
		}
	}
	return h
}

// TestFleetFollowsChanges: three instances watch one prefix; 100 successive
// changes reach all three, and the delay from the write to the swapped
// snapshot is measured on the real clock (the SLO is p99 <= 50ms).
func TestFleetFollowsChanges(t *testing.T) {
	client := testenv.Consul(t)
	prefix := testenv.Name(t) + "/"
	testenv.CleanupConsulKV(t, client, prefix)
	put(t, client, prefix+"version", "0")
	put(t, client, prefix+"level", "debug")
	put(t, client, prefix+"token", "s3cret")
	fleet := startFleet(t, client, prefix, 3)
	for i, in := range fleet {
		if c := in.store.Load(); c.Version != 0 || c.Level != "debug" || c.Token.Reveal() != "s3cret" {
			t.Fatalf("instance %d booted with %+v", i, c)
		}
	}
	sameHash(t, fleet)

	const changes = 100
	written := make([]time.Time, changes+1)
	for v := 1; v <= changes; v++ {
		written[v] = time.Now()
		put(t, client, prefix+"version", strconv.Itoa(v))
		await(t, fleet, v)
	}
	var lat []time.Duration
	for _, in := range fleet {
		in.mu.Lock()
		for v := 1; v <= changes; v++ {
			at, ok := in.seen[v]
			if !ok {
				t.Errorf("version %d never applied", v)
				continue
			}
			lat = append(lat, at.Sub(written[v]))
		}
		in.mu.Unlock()
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
	t.Logf("write-to-swap latency over %d swaps (3 instances x %d changes): p50=%v p90=%v p99=%v max=%v",
		len(lat), changes, pct(0.50), pct(0.90), pct(0.99), lat[len(lat)-1])
	if p99 := pct(0.99); p99 > 50*time.Millisecond {
		t.Errorf("p99 write-to-swap latency %v, want <= 50ms", p99)
	}
	h := sameHash(t, fleet)
	for _, in := range fleet {
		if in.store.Version() != changes+1 {
			t.Errorf("store version %d, want %d (one per change)", in.store.Version(), changes+1)
		}
	}
	t.Logf("fleet hash %s", h)
}

// TestFleetRefusesBadChange: each bad change leaves all three instances on
// the last good configuration, with the failure visible, and a fix clears it.
func TestFleetRefusesBadChange(t *testing.T) {
	client := testenv.Consul(t)
	prefix := testenv.Name(t) + "/"
	testenv.CleanupConsulKV(t, client, prefix)
	put(t, client, prefix+"version", "1")
	put(t, client, prefix+"max_conns", "5")
	fleet := startFleet(t, client, prefix, 3)
	good := fleet[0].store.Load()
	goodHash := sameHash(t, fleet)

	for _, tc := range []struct {
		name, key, value string
		want             error
	}{
		{"fails validation", "max_conns", "-1", config.ErrInvalid},
		{"unknown key", "max_connz", "7", config.ErrDecode},
		{"wrong type", "max_conns", "many", config.ErrDecode},
		{"restart-only key", "listen", ":9090", config.ErrRestartRequired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			put(t, client, prefix+tc.key, tc.value)
			for i, in := range fleet {
				waitFor(t, fmt.Sprintf("instance %d refuses", i), func() bool { return errors.Is(in.store.LastError(), tc.want) })
				if c := in.store.Load(); c != good || in.store.Hash() != goodHash {
					t.Errorf("instance %d moved to %+v", i, c)
				}
				if st := in.store.Status(context.Background()); st.Level != config.LevelWarn {
					t.Errorf("instance %d status %+v, want warn", i, st)
				}
			}
			// Put things back: the error clears, the config is unchanged.
			if tc.key == "max_conns" {
				put(t, client, prefix+tc.key, "5")
			} else if _, err := client.KV().Delete(prefix+tc.key, nil); err != nil {
				t.Fatal(err)
			}
			for i, in := range fleet {
				waitFor(t, fmt.Sprintf("instance %d recovers", i), func() bool { return in.store.LastError() == nil })
				if in.store.Load() != good || in.store.Version() != 1 {
					t.Errorf("instance %d: %+v v%d", i, in.store.Load(), in.store.Version())
				}
			}
		})
	}
	// A good change still goes through afterwards.
	put(t, client, prefix+"version", "2")
	await(t, fleet, 2)
	sameHash(t, fleet)
}

func TestKeyDocument(t *testing.T) {
	client := testenv.Consul(t)
	key := testenv.Name(t) + "/config.yaml"
	testenv.CleanupConsulKV(t, client, key)
	src := Key(client, key, config.YAML)
	if _, err := config.New(context.Background(), config.Options[fleetConfig]{Sources: []config.Source{src}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing required key: %v", err)
	}
	s, err := config.New(context.Background(), config.Options[fleetConfig]{Sources: []config.Source{Key(client, key, config.YAML, Optional())}})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	put(t, client, key, "version: 3\ntimeout: 2s\n")
	s, err = config.New(context.Background(), config.Options[fleetConfig]{Sources: []config.Source{src}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if c := s.Load(); c.Version != 3 || c.Timeout != 2*time.Second {
		t.Fatalf("loaded %+v", c)
	}
	changed := make(chan fleetConfig, 4)
	s.Subscribe(func(_, n fleetConfig) { changed <- n })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx) }()
	defer func() { cancel(); <-done }()
	put(t, client, key, "version: [")
	waitFor(t, "bad YAML refused", func() bool { return errors.Is(s.LastError(), config.ErrSource) })
	put(t, client, key, "version: 4\n")
	select {
	case c := <-changed:
		if c.Version != 4 {
			t.Errorf("applied %+v", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("change not applied")
	}
	if s.LastError() != nil {
		t.Errorf("error not cleared: %v", s.LastError())
	}
}

// TestConsulRestartRecovers: the fleet's Consul agent dies (a private agent
// of this test's own). Every instance keeps its configuration and says so.
// The agent comes back empty with low indexes (a dev agent forgets
// everything, as a restore to an older snapshot would go backwards): the
// missing keys are reported, never applied as "no configuration". Once the
// keys are written again the watches recover by themselves.
func TestConsulRestartRecovers(t *testing.T) {
	a := startAgent(t)
	prefix := testenv.Name(t) + "/"
	for v := range 20 { // push the index up, so that it goes backwards at the restart
		a.put(prefix+"version", strconv.Itoa(v))
	}
	a.put(prefix+"version", "1")
	fleet := startFleet(t, a.Client, prefix, 3,
		WithBackoff(retry.Policy{InitialInterval: 50 * time.Millisecond, MaxInterval: 500 * time.Millisecond}),
		WithWaitTime(5*time.Second))
	good := fleet[0].store.Load()

	a.Stop()
	for i, in := range fleet {
		waitFor(t, fmt.Sprintf("instance %d reports Consul down", i), func() bool { return errors.Is(in.store.LastError(), config.ErrSource) })
		if in.store.Load() != good || in.store.Status(context.Background()).Level != config.LevelWarn {
			t.Errorf("instance %d while Consul is down: %+v %+v", i, in.store.Load(), in.store.Status(context.Background()))
		}
	}
	a.Start()
	for i, in := range fleet {
		waitFor(t, fmt.Sprintf("instance %d reports the keys missing", i), func() bool { return errors.Is(in.store.LastError(), ErrNotFound) })
		if in.store.Load() != good || in.store.Status(context.Background()).Level != config.LevelWarn {
			t.Errorf("instance %d with the keys missing: %+v %+v", i, in.store.Load(), in.store.Status(context.Background()))
		}
	}
	a.put(prefix+"version", "2")
	await(t, fleet, 2)
	for i, in := range fleet {
		waitFor(t, fmt.Sprintf("instance %d clears its error", i), func() bool { return in.store.LastError() == nil })
	}
	sameHash(t, fleet)
}

// WithQueryOptions reaches every query: the same key read through an
// unknown datacenter fails, through the agent's own it loads.
func TestWithQueryOptions(t *testing.T) {
	client := testenv.Consul(t)
	key := testenv.Name(t) + "/config.yaml"
	testenv.CleanupConsulKV(t, client, key)
	put(t, client, key, "version: 5\n")
	self, err := client.Agent().Self()
	if err != nil {
		t.Fatal(err)
	}
	dc, _ := self["Config"]["Datacenter"].(string)
	if dc == "" {
		t.Fatalf("agent reports no datacenter: %v", self["Config"])
	}
	src := Key(client, key, config.YAML, WithQueryOptions(api.QueryOptions{Datacenter: "no-such-dc"}))
	if _, err := config.New(context.Background(), config.Options[fleetConfig]{Sources: []config.Source{src}}); err == nil {
		t.Fatal("a query to an unknown datacenter succeeded: the option was not used")
	}
	src = Key(client, key, config.YAML, WithQueryOptions(api.QueryOptions{Datacenter: dc, RequireConsistent: true}))
	s, err := config.New(context.Background(), config.Options[fleetConfig]{Sources: []config.Source{src}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if c := s.Load(); c.Version != 5 {
		t.Fatalf("loaded %+v", c)
	}
}

// gate is a source whose Load, once armed, says it has started and waits
// to be released: it holds a Reload between reading the sources before it
// and storing what they said.
type gate struct {
	armed    chan struct{} // closed: the next Load waits
	started  chan struct{}
	released chan struct{}
	once     sync.Once
}

func (g *gate) Name() string { return "gate" }

func (g *gate) Load(ctx context.Context) (map[string]any, error) {
	select {
	case <-g.armed:
		g.once.Do(func() { close(g.started) })
		select {
		case <-g.released:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	default:
	}
	return map[string]any{}, nil
}

// TestReloadDoesNotUndoWatchedChange: a Reload reads the Consul key, and
// before it stores the layers the watch delivers a newer value of that key.
// The Reload must not put the older value back: the watch will not send
// the newer one again until the key changes once more, so the instance
// would run a configuration Consul no longer holds, and say nothing.
func TestReloadDoesNotUndoWatchedChange(t *testing.T) {
	client := testenv.Consul(t)
	prefix := testenv.Name(t) + "/"
	testenv.CleanupConsulKV(t, client, prefix)
	put(t, client, prefix+"version", "1")
	g := &gate{armed: make(chan struct{}), started: make(chan struct{}), released: make(chan struct{})}
	s, err := config.New(context.Background(), config.Options[fleetConfig]{
		Sources: []config.Source{Prefix(client, prefix), g},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx) }()
	defer func() { cancel(); <-done }()

	close(g.armed)
	reloaded := make(chan error, 1)
	go func() { reloaded <- s.Reload(context.Background()) }()
	<-g.started // the Reload has read version 1 from Consul
	put(t, client, prefix+"version", "2")
	waitFor(t, "watch applies version 2", func() bool { return s.Load().Version == 2 })
	close(g.released)
	if err := <-reloaded; err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if v := s.Load().Version; v != 2 {
		t.Fatalf("after the Reload the store runs version %d; Consul holds 2 (last error %v)", v, s.LastError())
	}
}

// TestKeyWithoutFormat: a Key whose format is not one config.Parse knows
// (config.FormatOf of a name with another extension gives "") is a
// configuration error of the program, reported as such; it must not
// quietly read every key that starts with the key's name as a prefix
// (with Optional, an empty layer: the defaults, fleet-wide).
func TestKeyWithoutFormat(t *testing.T) {
	client := testenv.Consul(t)
	key := testenv.Name(t) + "/app.conf"
	testenv.CleanupConsulKV(t, client, key)
	put(t, client, key, "version: 3\n")
	put(t, client, key+".bak/version", "7")
	for _, tc := range []struct {
		key  string
		opts []Option
	}{{key, nil}, {key, []Option{Optional()}}, {key + ".missing", []Option{Optional()}}} {
		src := Key(client, tc.key, config.FormatOf(tc.key), tc.opts...)
		s, err := config.New(context.Background(), config.Options[fleetConfig]{Sources: []config.Source{src}})
		if err == nil {
			_ = s.Close()
			t.Fatalf("Key with format %q loaded %+v", config.FormatOf(key), s.Load())
		}
		if errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "format") {
			t.Errorf("Key with no format: %v, want an unknown format error", err)
		}
	}
}

// TestBadWatchOptionsFailAtBoot: options the watch cannot use must stop
// the service at New, not let every instance start and then never follow
// Consul (the watch refuses them only once Watch runs).
func TestBadWatchOptionsFailAtBoot(t *testing.T) {
	client := testenv.Consul(t)
	key := testenv.Name(t) + "/config.yaml"
	testenv.CleanupConsulKV(t, client, key)
	put(t, client, key, "version: 1\n")
	for name, opt := range map[string]Option{
		"wait time above Consul's cap": WithWaitTime(time.Hour),
		"negative wait time":           WithWaitTime(-time.Second),
		"invalid backoff":              WithBackoff(retry.Policy{Multiplier: 0.5}),
	} {
		t.Run(name, func(t *testing.T) {
			s, err := config.New(context.Background(), config.Options[fleetConfig]{Sources: []config.Source{Key(client, key, config.YAML, opt)}})
			if err == nil {
				_ = s.Close()
				t.Fatal("New accepted options the watch refuses")
			}
			if !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("New = %v, want ErrInvalidOption", err)
			}
		})
	}
}

// TestSnapshotRestoreGoesBack: an operator restores a Consul snapshot taken
// before the last changes. The KV index goes backwards; the fleet must
// follow Consul back to what it now holds, not keep a configuration Consul
// no longer has while its watches wait for an index that will not come.
func TestSnapshotRestoreGoesBack(t *testing.T) {
	a := startAgent(t)
	prefix := testenv.Name(t) + "/"
	a.put(prefix+"version", "1")
	snap, _, err := a.Client.Snapshot().Save(nil)
	if err != nil {
		t.Fatal(err)
	}
	saved, err := io.ReadAll(snap)
	_ = snap.Close()
	if err != nil {
		t.Fatal(err)
	}
	base := a.blockingQueries()
	fleet := startFleet(t, a.Client, prefix, 3, WithWaitTime(time.Minute))
	for v := 2; v <= 20; v++ {
		a.put(prefix+"version", strconv.Itoa(v))
	}
	await(t, fleet, 20)
	// The restore wakes the blocking queries the agent holds: wait until
	// it holds the three watches' (a query sent after the restore, with
	// the old index, would block for its whole wait time; nothing but a
	// shorter wait time helps there).
	waitFor(t, "the watches block", func() bool { return a.blockingQueries() >= base+3 })
	if err := a.Client.Snapshot().Restore(nil, bytes.NewReader(saved)); err != nil {
		t.Fatal(err)
	}
	await(t, fleet, 1)
	for i, in := range fleet {
		if err := in.store.LastError(); err != nil {
			t.Errorf("instance %d: %v", i, err)
		}
	}
	sameHash(t, fleet)
}
