package config

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/activekit/activekit/retry"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type serverConfig struct {
	Timeout  time.Duration `json:"timeout"`
	MaxConns int           `json:"max_conns"`
}

type testConfig struct {
	Listen   string          `json:"listen" config:"restart"`
	Server   serverConfig    `json:"server"`
	Features map[string]bool `json:"features"`
	Password Secret          `json:"password"`
	Level    string          `json:"level"`
	// A and B are always changed together; readers check they agree.
	A int `json:"a"`
	B int `json:"b"`
}

var errNegative = errors.New("server.max_conns must not be negative")

func (c *testConfig) Validate() error {
	if c.Server.MaxConns < 0 {
		return errNegative
	}
	return nil
}

func defaults() testConfig {
	return testConfig{Listen: ":8080", Server: serverConfig{Timeout: time.Second, MaxConns: 10}, Level: "info"}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func environ(vars ...string) func() []string { return func() []string { return vars } }

func TestLayersMergeInOrder(t *testing.T) {
	yml := writeFile(t, "a.yaml", "server:\n  timeout: 5s\n  max_conns: 20\nlevel: debug\nfeatures:\n  x: true\n")
	jsn := writeFile(t, "b.json", `{"server": {"max_conns": 30}, "features": {"y": true}}`)
	tml := writeFile(t, "c.toml", "level = \"warn\"\n")
	s, err := New(context.Background(), Options[testConfig]{
		Defaults: defaults(),
		Sources: []Source{File(yml), File(jsn), File(tml), OptionalFile(filepath.Join(t.TempDir(), "missing.yaml")),
			Env("APP_", environ("APP_SERVER__MAX_CONNS=40", "APP_PASSWORD=hunter2", "OTHER_LEVEL=x", "PATH=/bin"))},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := s.Load()
	if got.Listen != ":8080" || got.Server.Timeout != 5*time.Second || got.Server.MaxConns != 40 ||
		got.Level != "warn" || !got.Features["x"] || !got.Features["y"] || got.Password.Reveal() != "hunter2" {
		t.Errorf("merged config = %+v (password %q)", got, got.Password.Reveal())
	}
	if s.Version() != 1 || len(s.Hash()) != 16 {
		t.Errorf("version %d hash %q", s.Version(), s.Hash())
	}
	if st := s.Status(context.Background()); st.Level != LevelPass || st.Err != nil {
		t.Errorf("status %+v", st)
	}
}

func TestNewRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  Source
		want error
	}{
		{"unknown key", Map("m", map[string]any{"nope": 1}), ErrDecode},
		{"unknown nested key", Map("m", map[string]any{"server": map[string]any{"port": 1}}), ErrDecode},
		{"key of the wrong case", Map("m", map[string]any{"Level": "x"}), ErrDecode},
		{"wrong type", Map("m", map[string]any{"server": map[string]any{"max_conns": "many"}}), ErrDecode},
		{"bool for int", Map("m", map[string]any{"a": true}), ErrDecode},
		{"fraction for int", Map("m", map[string]any{"a": 1.5}), ErrDecode},
		{"map for scalar", Map("m", map[string]any{"level": map[string]any{"x": 1}}), ErrDecode},
		{"bad duration", Map("m", map[string]any{"server": map[string]any{"timeout": "soon"}}), ErrDecode},
		{"invalid", Map("m", map[string]any{"server": map[string]any{"max_conns": -1}}), ErrInvalid},
		{"bad env", Env("APP_", environ("APP_A=x")), ErrDecode},
		{"bad yaml", File(writeFile(t, "bad.yaml", "a: [1,\n")), ErrSource},
		{"missing file", File(filepath.Join(t.TempDir(), "nope.yaml")), ErrSource},
		{"unknown extension", File(writeFile(t, "x.ini", "a=1")), ErrSource},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(context.Background(), Options[testConfig]{Defaults: defaults(), Sources: []Source{tc.src}})
			if !errors.Is(err, tc.want) {
				t.Fatalf("New = %v, want %v", err, tc.want)
			}
			var ce *ChangeError
			if !errors.As(err, &ce) {
				t.Fatalf("error %T is not a *ChangeError", err)
			}
		})
	}
}

func TestInvalidOptions(t *testing.T) {
	if _, err := New(context.Background(), Options[int]{}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("non-struct type: %v", err)
	}
	if _, err := New(context.Background(), Options[testConfig]{Debounce: -1}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("negative debounce: %v", err)
	}
	if _, err := New(context.Background(), Options[testConfig]{Sources: []Source{nil}}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("nil source: %v", err)
	}
}

// mutable is a Source whose layer the test sets, for Reload.
type mutable struct {
	mu  sync.Mutex
	m   map[string]any
	raw []byte // for the fuzz target
}

func (s *mutable) Name() string { return "mutable" }
func (s *mutable) set(m map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m = m
}
func (s *mutable) Load(context.Context) (map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return copyMap(s.m), nil
}

func copyMap(m map[string]any) map[string]any {
	b, _ := json.Marshal(m)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	if out == nil {
		out = map[string]any{}
	}
	return out
}

// recorder captures log records.
type recorder struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.Write(p)
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.String()
}

func counter(t *testing.T, rd *sdkmetric.ManualReader, name string, attrs ...attribute.KeyValue) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := rd.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			var pts []metricdata.DataPoint[int64]
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				pts = d.DataPoints
			case metricdata.Gauge[int64]:
				pts = d.DataPoints
			}
		points:
			for _, p := range pts {
				for _, a := range attrs {
					if v, ok := p.Attributes.Value(a.Key); !ok || v != a.Value {
						continue points
					}
				}
				total += p.Value
			}
		}
	}
	return total
}

func TestRuntimeChangeRefusedKeepsLastGood(t *testing.T) {
	src := &mutable{m: map[string]any{"level": "debug"}}
	rd := sdkmetric.NewManualReader()
	logs := &recorder{}
	s, err := New(context.Background(), Options[testConfig]{
		Defaults:      defaults(),
		Sources:       []Source{src},
		MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(rd)),
		Logger:        slog.New(slog.NewJSONHandler(logs, nil)),
		Validate: func(c *testConfig) error {
			if c.Level == "forbidden" {
				return errors.New("level forbidden is not allowed")
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	good, goodHash := s.Load(), s.Hash()
	if counter(t, rd, "activekit.config.info", attribute.String("config.hash", goodHash)) != 1 {
		t.Errorf("info gauge does not carry the hash %s", goodHash)
	}

	for _, tc := range []struct {
		name  string
		layer map[string]any
		want  error
		stage Stage
	}{
		{"fails Validate method", map[string]any{"server": map[string]any{"max_conns": -5}}, ErrInvalid, StageValidate},
		{"fails validate option", map[string]any{"level": "forbidden"}, ErrInvalid, StageValidate},
		{"unknown key", map[string]any{"level": "debug", "surprise": 1}, ErrDecode, StageDecode},
		{"wrong type", map[string]any{"level": "debug", "a": "one"}, ErrDecode, StageDecode},
		{"restart-only key", map[string]any{"level": "debug", "listen": ":9090"}, ErrRestartRequired, StageRestart},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := counter(t, rd, "activekit.config.changes.rejected", attribute.String("stage", string(tc.stage)))
			src.set(tc.layer)
			err := s.Reload(context.Background())
			if !errors.Is(err, tc.want) {
				t.Fatalf("Reload = %v, want %v", err, tc.want)
			}
			var ce *ChangeError
			if !errors.As(err, &ce) || ce.Stage != tc.stage {
				t.Fatalf("error %v: want stage %s", err, tc.stage)
			}
			if got := s.Load(); fmt.Sprint(got) != fmt.Sprint(good) || s.Hash() != goodHash || s.Version() != 1 {
				t.Errorf("snapshot changed to %+v after a refused change", got)
			}
			if !errors.Is(s.LastError(), tc.want) {
				t.Errorf("LastError = %v", s.LastError())
			}
			st := s.Status(context.Background())
			if st.Level != LevelWarn || !strings.Contains(st.Message, goodHash) || !errors.Is(st.Err, tc.want) {
				t.Errorf("status %+v, want warn naming %s", st, goodHash)
			}
			if after := counter(t, rd, "activekit.config.changes.rejected", attribute.String("stage", string(tc.stage))); after != before+1 {
				t.Errorf("rejected counter for %s went from %d to %d", tc.stage, before, after)
			}
			if !strings.Contains(logs.String(), `"stage":"`+string(tc.stage)+`"`) {
				t.Errorf("no log line for stage %s in %s", tc.stage, logs.String())
			}
		})
	}
	if ce := (*ChangeError)(nil); errors.As(s.LastError(), &ce) && fmt.Sprint(ce.Keys) != "[listen]" {
		t.Errorf("restart error keys %v, want [listen]", ce.Keys)
	}

	// A good change applies, clears the error and notifies.
	var notes []string
	unsub := s.Subscribe(func(o, n testConfig) { notes = append(notes, o.Level+"->"+n.Level) })
	src.set(map[string]any{"level": "error"})
	if err := s.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s.Load().Level != "error" || s.Version() != 2 || s.Hash() == goodHash || s.LastError() != nil {
		t.Errorf("after a good change: %+v v%d hash %s err %v", s.Load(), s.Version(), s.Hash(), s.LastError())
	}
	if st := s.Status(context.Background()); st.Level != LevelPass {
		t.Errorf("status %+v after recovery", st)
	}
	if fmt.Sprint(notes) != "[debug->error]" {
		t.Errorf("notifications %v", notes)
	}
	if counter(t, rd, "activekit.config.changes.applied") != 1 {
		t.Errorf("applied counter not 1")
	}
	// No change: no notification, no new version.
	if err := s.Reload(context.Background()); err != nil || s.Version() != 2 || len(notes) != 1 {
		t.Errorf("a reload without change made version %d, notes %v, err %v", s.Version(), notes, err)
	}
	unsub()
	src.set(map[string]any{"level": "warn"})
	if err := s.Reload(context.Background()); err != nil || len(notes) != 1 {
		t.Errorf("notified after unsubscribe: %v %v", notes, err)
	}
	if strings.Contains(logs.String(), "hunter") {
		t.Error("secret in logs")
	}
}

func TestRestartKeyAcceptedAtBoot(t *testing.T) {
	s, err := New(context.Background(), Options[testConfig]{Defaults: defaults(), Sources: []Source{Map("m", map[string]any{"listen": ":1"})}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Load().Listen != ":1" {
		t.Errorf("listen %q", s.Load().Listen)
	}
}

func TestHashStableAcrossSyntaxAndOrder(t *testing.T) {
	newStore := func(srcs ...Source) *Store[testConfig] {
		t.Helper()
		s, err := New(context.Background(), Options[testConfig]{Defaults: defaults(), Sources: srcs})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	a := newStore(File(writeFile(t, "a.yaml", "features: {x: true, y: false}\nserver: {max_conns: 12}\npassword: pw\n")))
	b := newStore(File(writeFile(t, "b.json", `{"password":"pw","server":{"max_conns":12},"features":{"y":false,"x":true}}`)))
	c := newStore(Map("m1", map[string]any{"features": map[string]any{"y": false}}),
		Env("X_", environ("X_FEATURES__X=true", "X_SERVER__MAX_CONNS=12", "X_PASSWORD=pw")))
	if a.Hash() != b.Hash() || b.Hash() != c.Hash() {
		t.Errorf("hashes differ for one configuration: %s %s %s", a.Hash(), b.Hash(), c.Hash())
	}
	d := newStore(Map("m", map[string]any{"features": map[string]any{"x": true, "y": false}, "server": map[string]any{"max_conns": 12}, "password": "other"}))
	if d.Hash() == a.Hash() {
		t.Error("a different secret gives the same hash: a rotated secret would not show as drift")
	}
	v := a.Load()
	canon, _, err := canonical(&v, &secretCache{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(canon), `"pw"`) {
		t.Errorf("the hash preimage holds the secret in clear: %s", canon)
	}
}

func TestSecretNeverPrints(t *testing.T) {
	s := NewSecret("hunter2")
	c := testConfig{Password: s}
	var logs bytes.Buffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("x", "secret", s, "cfg", c)
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "secret", s)
	j, _ := json.Marshal(c)
	for _, out := range []string{
		fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s %q %x %d", s, s, s, s, s, s, s),
		fmt.Sprintf("%v %+v %#v", c, c, &c), string(j), logs.String(), s.String(), s.GoString(),
	} {
		if strings.Contains(out, "hunter2") || strings.Contains(out, "68756e74") {
			t.Errorf("secret printed: %s", out)
		}
		if !strings.Contains(out, "REDACTED") {
			t.Errorf("no redaction marker in %s", out)
		}
	}
	if s.Reveal() != "hunter2" || s.IsZero() || !(Secret{}).IsZero() {
		t.Error("Reveal/IsZero")
	}
	var u Secret
	if err := u.UnmarshalText([]byte("x")); err != nil || u.Reveal() != "x" {
		t.Error("UnmarshalText")
	}
}

// pusher is a Watcher the test drives.
type pusher struct {
	initial map[string]any
	ch      chan map[string]any
	errs    chan error
	handled chan struct{} // one token per change, once the store has taken it
}

// push hands m to the store and returns once the store has recorded it, so
// that a test's next step never races the store's intake of this change.
func (p *pusher) push(m map[string]any) {
	p.ch <- m
	<-p.handled
}

func newPusher(initial map[string]any) *pusher {
	return &pusher{initial: initial, ch: make(chan map[string]any), errs: make(chan error), handled: make(chan struct{}, 1)}
}

func (p *pusher) Name() string                                 { return "pusher" }
func (p *pusher) Load(context.Context) (map[string]any, error) { return copyMap(p.initial), nil }
func (p *pusher) Watch(ctx context.Context, update func(map[string]any, error)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m := <-p.ch:
			update(m, nil)
			p.handled <- struct{}{}
		case err := <-p.errs:
			update(nil, err)
		}
	}
}

func watch[T any](t *testing.T, s *Store[T]) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Watch = %v", err)
		}
	})
}

// TestWatchCoalescesAndNotifiesInOrder pushes changes while the only
// subscriber is blocked: it must see increasing values, one call at a time,
// and end on the last one.
func TestWatchCoalescesAndNotifiesInOrder(t *testing.T) {
	p := newPusher(map[string]any{"a": 0, "b": 0})
	s, err := New(context.Background(), Options[testConfig]{Defaults: defaults(), Sources: []Source{p}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var inFlight atomic.Int32
	release := make(chan struct{})
	seen := make(chan int, 200)
	s.Subscribe(func(o, n testConfig) {
		if inFlight.Add(1) != 1 {
			t.Error("subscriber called concurrently")
		}
		defer inFlight.Add(-1)
		if n.A <= o.A {
			t.Errorf("notified %d -> %d: out of order", o.A, n.A)
		}
		seen <- n.A
		<-release
	})
	watch(t, s)
	const n = 50
	p.push(map[string]any{"a": 1, "b": 1})
	if v := <-seen; v != 1 {
		t.Fatalf("first notification %d", v)
	}
	// Watch is running (it just applied a change): a second one is refused.
	if err := s.Watch(context.Background()); !errors.Is(err, ErrWatching) {
		t.Fatalf("second Watch = %v, want ErrWatching", err)
	}
	// While the subscriber blocks, push the rest: they coalesce.
	for i := 2; i <= n; i++ {
		p.push(map[string]any{"a": i, "b": i})
	}
	close(release)
	calls := 1
	for v := 0; v != n; calls++ {
		select {
		case v = <-seen:
		case <-time.After(5 * time.Second):
			t.Fatal("last change never notified")
		}
	}
	if calls > 4 {
		t.Errorf("%d notifications for %d changes pushed while blocked: not coalesced", calls, n)
	}
	if s.Load().A != n {
		t.Errorf("ended on %d, want %d", s.Load().A, n)
	}
}

// TestWatchSourceErrorIsVisible checks that a source that cannot be read
// makes the store warn without changing it, until it reads again.
func TestWatchSourceErrorIsVisible(t *testing.T) {
	p := newPusher(map[string]any{"level": "debug"})
	s, err := New(context.Background(), Options[testConfig]{Defaults: defaults(), Sources: []Source{p}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	watch(t, s)
	p.errs <- errors.New("connection refused")
	waitFor(t, func() bool { return s.LastError() != nil })
	if !errors.Is(s.LastError(), ErrSource) || s.Status(context.Background()).Level != LevelWarn || s.Load().Level != "debug" {
		t.Errorf("err %v status %+v", s.LastError(), s.Status(context.Background()))
	}
	p.push(map[string]any{"level": "debug"})
	waitFor(t, func() bool { return s.LastError() == nil })
}

// waitFor polls cond (the store offers no signal for "nothing changed").
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

// manualClock fires timers when the test says so.
type manualClock struct {
	timers chan chan time.Time
}

func (c *manualClock) Now() time.Time { return time.Unix(0, 0) }
func (c *manualClock) NewTimer(time.Duration) retry.Timer {
	ch := make(chan time.Time, 1)
	c.timers <- ch
	return manualTimer(ch)
}

type manualTimer chan time.Time

func (t manualTimer) C() <-chan time.Time { return t }
func (t manualTimer) Stop() bool          { return true }

func TestDebounceAppliesBurstOnce(t *testing.T) {
	p := newPusher(map[string]any{})
	clock := &manualClock{timers: make(chan chan time.Time, 16)} // buffered: a stray window must not wedge Watch
	s, err := New(context.Background(), Options[testConfig]{Defaults: defaults(), Sources: []Source{p}, Debounce: time.Second, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := make(chan testConfig, 10)
	s.Subscribe(func(_, n testConfig) { got <- n })
	watch(t, s)
	p.push(map[string]any{"a": 1, "b": 1})
	timer := <-clock.timers // the debounce window opened
	for i := 2; i <= 5; i++ {
		p.push(map[string]any{"a": i, "b": i})
	}
	if s.Version() != 1 {
		t.Fatal("applied before the debounce window closed")
	}
	timer <- time.Unix(1, 0)
	if n := <-got; n.A != 5 {
		t.Errorf("applied %d, want the burst's last value 5", n.A)
	}
	select {
	case n := <-got:
		t.Errorf("a second notification %+v for one burst", n)
	case timer := <-clock.timers:
		t.Errorf("another debounce window %v opened without a change", timer)
	default:
	}
	if s.Version() != 2 {
		t.Errorf("version %d, want 2", s.Version())
	}
}

// TestReadersDuringSwaps runs readers under -race while changes are applied
// continuously: every snapshot they see has A == B (set together), and
// never goes backwards.
func TestReadersDuringSwaps(t *testing.T) {
	p := newPusher(map[string]any{"a": 0, "b": 0})
	s, err := New(context.Background(), Options[testConfig]{Defaults: defaults(), Sources: []Source{p}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	watch(t, s)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := 0
			for {
				select {
				case <-stop:
					return
				default:
				}
				c := s.Load()
				_ = s.Hash()
				if c.A != c.B {
					t.Errorf("half-applied snapshot: a=%d b=%d", c.A, c.B)
					return
				}
				if c.A < last {
					t.Errorf("went back from %d to %d", last, c.A)
					return
				}
				last = c.A
				reads.Add(1)
			}
		}()
	}
	const n = 500
	for i := 1; i <= n; i++ {
		p.push(map[string]any{"a": i, "b": i, "features": map[string]any{fmt.Sprint("f", i%7): true}})
	}
	waitFor(t, func() bool { return s.Load().A == n })
	close(stop)
	wg.Wait()
	t.Logf("%d reads during %d pushes, %d snapshots applied", reads.Load(), n, s.Version()-1)
}

type listener struct {
	Addr    string        `json:"addr" config:"restart"`
	Timeout time.Duration `json:"timeout"`
}

type listenersConfig struct {
	ByName map[string]listener  `json:"by_name"`
	List   []listener           `json:"list"`
	Ptrs   map[string]*listener `json:"ptrs"`
}

// TestRestartKeyInMapOrSlice: a field tagged restart-only inside a struct
// reached through a map or a slice is refused at run time like any other:
// the tag was only followed through structs and pointers, so such a key
// (a listener's address) changed live.
func TestRestartKeyInMapOrSlice(t *testing.T) {
	boot := map[string]any{
		"by_name": map[string]any{"a": map[string]any{"addr": ":1", "timeout": "1s"}},
		"list":    []any{map[string]any{"addr": ":2", "timeout": "1s"}},
		"ptrs":    map[string]any{"p": map[string]any{"addr": ":3", "timeout": "1s"}},
	}
	tests := []struct {
		name    string
		change  func(m map[string]any)
		refused bool
	}{
		{"map value's restart key", func(m map[string]any) { m["by_name"].(map[string]any)["a"].(map[string]any)["addr"] = ":9" }, true},
		{"map value's live key", func(m map[string]any) { m["by_name"].(map[string]any)["a"].(map[string]any)["timeout"] = "2s" }, false},
		{"map entry added", func(m map[string]any) { m["by_name"].(map[string]any)["b"] = map[string]any{"addr": ":9"} }, true},
		{"slice element's restart key", func(m map[string]any) { m["list"].([]any)[0].(map[string]any)["addr"] = ":9" }, true},
		{"pointer map value's restart key", func(m map[string]any) { m["ptrs"].(map[string]any)["p"].(map[string]any)["addr"] = ":9" }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := &mutable{m: copyMap(boot)}
			s, err := New(context.Background(), Options[listenersConfig]{Sources: []Source{src}})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			next := copyMap(boot)
			tc.change(next)
			src.set(next)
			err = s.Reload(context.Background())
			if got := errors.Is(err, ErrRestartRequired); got != tc.refused {
				t.Fatalf("Reload = %v; refused as restart-only: %v, want %v", err, got, tc.refused)
			}
			if tc.refused && s.Version() != 1 {
				t.Errorf("refused change applied: version %d, %+v", s.Version(), s.Load())
			}
		})
	}
}

// TestDurationNeedsUnit: a duration written as a bare number ("timeout: 30"
// meaning 30 seconds) must be refused, as the environment's "30" is, not
// taken as 30 nanoseconds: a push of it would pass validation on every
// instance and time out every call of the fleet.
func TestDurationNeedsUnit(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  Source
		want time.Duration // 0: refused
	}{
		{"yaml number", File(writeFile(t, "a.yaml", "server:\n  timeout: 30\n")), 0},
		{"json number", File(writeFile(t, "a.json", `{"server": {"timeout": 30}}`)), 0},
		{"toml number", File(writeFile(t, "a.toml", "[server]\ntimeout = 30\n")), 0},
		{"yaml float", File(writeFile(t, "b.yaml", "server:\n  timeout: 2.0\n")), 0},
		{"env number", Env("APP_", environ("APP_SERVER__TIMEOUT=30")), 0},
		{"yaml with unit", File(writeFile(t, "c.yaml", "server:\n  timeout: 30s\n")), 30 * time.Second},
		{"env with unit", Env("APP_", environ("APP_SERVER__TIMEOUT=30s")), 30 * time.Second},
		{"map of a time.Duration", Map("m", map[string]any{"server": map[string]any{"timeout": 3 * time.Second}}), 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(context.Background(), Options[testConfig]{Defaults: defaults(), Sources: []Source{tc.src}})
			if tc.want == 0 {
				if !errors.Is(err, ErrDecode) {
					got := time.Duration(-1)
					if s != nil {
						got = s.Load().Server.Timeout
						s.Close()
					}
					t.Fatalf("New = %v (timeout %v), want %v", err, got, ErrDecode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if got := s.Load().Server.Timeout; got != tc.want {
				t.Fatalf("timeout = %v, want %v", got, tc.want)
			}
		})
	}
}

// quitter is a Watcher whose Watch gives up while the store still watches:
// with err, or with nil after a source-specific "nothing more to watch".
type quitter struct{ err error }

func (q quitter) Name() string                                 { return "quitter" }
func (q quitter) Load(context.Context) (map[string]any, error) { return map[string]any{}, nil }
func (q quitter) Watch(context.Context, func(map[string]any, error)) error {
	return q.err
}

// TestWatcherThatStopsIsVisible: a watched source that stops following its
// changes while the store still watches is no longer followed, so the store
// must say so (LastError, warn), whether the Watcher returned an error or
// nil: an instance that silently stops following Consul drifts from the
// fleet while reporting pass.
func TestWatcherThatStopsIsVisible(t *testing.T) {
	for _, err := range []error{errors.New("gave up"), nil} {
		t.Run(fmt.Sprint(err), func(t *testing.T) {
			s, nerr := New(context.Background(), Options[testConfig]{Defaults: defaults(), Sources: []Source{quitter{err}}})
			if nerr != nil {
				t.Fatal(nerr)
			}
			defer s.Close()
			watch(t, s)
			waitFor(t, func() bool { return s.LastError() != nil })
			if !errors.Is(s.LastError(), ErrSource) || s.Status(context.Background()).Level != LevelWarn {
				t.Errorf("err %v status %+v", s.LastError(), s.Status(context.Background()))
			}
			if err != nil && !errors.Is(s.LastError(), err) {
				t.Errorf("LastError %v does not wrap the watch's error %v", s.LastError(), err)
			}
		})
	}
}

// holdOnce is a Source whose first Load after arm waits for release; the
// others return at once.
type holdOnce struct {
	armed, started, released chan struct{}
	once                     sync.Once
}

func newHoldOnce() *holdOnce {
	return &holdOnce{armed: make(chan struct{}), started: make(chan struct{}), released: make(chan struct{})}
}

func (h *holdOnce) Name() string { return "hold" }
func (h *holdOnce) Load(ctx context.Context) (map[string]any, error) {
	select {
	case <-h.armed:
		first := false
		h.once.Do(func() { first = true; close(h.started) })
		if first {
			select {
			case <-h.released:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	default:
	}
	return map[string]any{}, nil
}

// TestConcurrentReloadsEndOnLatest: two Reloads overlap (SIGHUP and an
// admin endpoint, say); the one that read the sources first finishes last.
// It must not put the older read back over the newer one: the instance
// would run a file it no longer holds, with LastError nil.
func TestConcurrentReloadsEndOnLatest(t *testing.T) {
	src := &mutable{m: map[string]any{"a": 1, "b": 1}}
	h := newHoldOnce()
	s, err := New(context.Background(), Options[testConfig]{Defaults: defaults(), Sources: []Source{src, h}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	close(h.armed)
	first := make(chan error, 1)
	go func() { first <- s.Reload(context.Background()) }()
	<-h.started // the first Reload has read a=1 and waits
	src.set(map[string]any{"a": 2, "b": 2})
	// The second Reload reads a=2 and applies it, whether or not the
	// first is done.
	if err := s.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	close(h.released)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if got := s.Load().A; got != 2 {
		t.Fatalf("after both Reloads the store runs a=%d; the source holds 2", got)
	}
}
