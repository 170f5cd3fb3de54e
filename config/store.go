package config

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/activekit/activekit/retry"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Validator is implemented by configuration types that check themselves.
// New and every change call Validate on the decoded value (through a
// pointer, so either receiver works) before it may become the snapshot.
type Validator interface {
	Validate() error
}

// Options configures a Store. The zero value of every field but Sources
// means the default.
type Options[T any] struct {
	// Defaults is the bottom layer: every key the sources leave out keeps
	// its value here.
	Defaults T
	// Sources are merged over Defaults in order, later over earlier.
	Sources []Source
	// Validate, when set, is called after T's own Validate method.
	Validate func(*T) error
	// Debounce, when positive, waits that long after a source changes
	// before applying, so that a burst of changes is applied once. Zero
	// applies at once; changes that arrive while one is being applied
	// are coalesced either way (the latest wins).
	Debounce time.Duration
	// Clock is the time source for Debounce and timestamps; nil means the
	// system clock.
	Clock retry.Clock
	// Logger receives a line for each change applied (the keys changed,
	// never their values) or rejected; nil means no logging.
	Logger *slog.Logger
	// MeterProvider provides the store's metrics; nil means the global
	// provider (a no-op unless the application set one).
	MeterProvider metric.MeterProvider
	// Name tells this store's metrics apart when a process has several;
	// "default" when empty.
	Name string
}

// Store holds the current configuration of type T as an immutable
// snapshot behind an atomic pointer: Load never locks and never sees half a
// change. A change runs one pipeline (fetch, merge, strict decode,
// validate, diff, restart check, swap, notify) and either applies whole or
// not at all; a refused change keeps the last good snapshot and is reported
// by LastError, Status, a log line and a metric.
//
// A Store is safe for concurrent use. It starts no goroutine: Watch, run by
// the caller, follows the sources that change.
type Store[T any] struct {
	opts     Options[T]
	clock    retry.Clock
	log      *slog.Logger
	restart  []string
	defaults map[string]any

	cur atomic.Pointer[snapshot[T]]

	mu       sync.Mutex // guards the fields below
	layers   []map[string]any
	gens     []uint64 // per source: layers set by its watch, so that Reload never puts back an older one
	reloads  uint64   // Reloads started: each reads the sources after the ones before it
	reloaded uint64   // the latest Reload (by start) whose layers were stored
	srcErrs  []error  // per source: the last read error, nil once it reads again
	lastErr  error    // the last pipeline error, nil after a success
	failedAt time.Time
	subs     map[uint64]func(old, new T)
	nextSub  uint64
	watching bool

	applyMu sync.Mutex // serialises the pipeline (Watch and Reload)
	kick    chan struct{}
	secrets secretCache // used by build only: New's before the store is shared, then under applyMu

	applied  metric.Int64Counter
	rejected metric.Int64Counter
	attrs    attribute.Set
	reg      metric.Registration
}

// snapshot is one applied configuration.
type snapshot[T any] struct {
	value     T
	hash      string
	flat      map[string]string
	version   uint64
	appliedAt time.Time
}

// New loads every source, merges them over the defaults, decodes, validates
// and returns a Store holding the result. At boot every key may take any
// value, restart-only keys included. Any failure is returned, and there is
// no Store: a service must not start on a configuration it cannot read.
func New[T any](ctx context.Context, o Options[T]) (*Store[T], error) {
	if reflect.TypeFor[T]().Kind() != reflect.Struct {
		return nil, fmt.Errorf("%w: the configuration type must be a struct, not %v", ErrInvalidOptions, reflect.TypeFor[T]())
	}
	if o.Debounce < 0 {
		return nil, fmt.Errorf("%w: negative debounce %v", ErrInvalidOptions, o.Debounce)
	}
	for i, s := range o.Sources {
		if s == nil {
			return nil, fmt.Errorf("%w: source %d is nil", ErrInvalidOptions, i)
		}
	}
	if o.Name == "" {
		o.Name = "default"
	}
	s := &Store[T]{
		opts:     o,
		clock:    o.Clock,
		log:      o.Logger,
		restart:  restartPaths(reflect.TypeFor[T]()),
		defaults: defaultsTree(o.Defaults),
		layers:   make([]map[string]any, len(o.Sources)),
		gens:     make([]uint64, len(o.Sources)),
		srcErrs:  make([]error, len(o.Sources)),
		subs:     map[uint64]func(old, new T){},
		kick:     make(chan struct{}, 1),
		attrs:    attribute.NewSet(attribute.String("config.name", o.Name)),
	}
	if s.clock == nil {
		s.clock = systemClock{}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for i, src := range o.Sources {
		m, err := src.Load(ctx)
		if err != nil {
			return nil, &ChangeError{Stage: StageFetch, Source: src.Name(), Err: wrapSource(err)}
		}
		s.layers[i] = m
	}
	snap, _, err := s.build(s.layers, nil)
	if err != nil {
		return nil, err
	}
	snap.version = 1
	s.cur.Store(snap)
	if err := s.initMetrics(); err != nil {
		return nil, err
	}
	return s, nil
}

func wrapSource(err error) error {
	if errors.Is(err, ErrSource) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrSource, err)
}

func (s *Store[T]) initMetrics() error {
	mp := s.opts.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter("github.com/activekit/activekit/config")
	var err error
	if s.applied, err = m.Int64Counter("activekit.config.changes.applied",
		metric.WithDescription("Configuration changes applied."), metric.WithUnit("{change}")); err != nil {
		return fmt.Errorf("config: metrics: %w", err)
	}
	if s.rejected, err = m.Int64Counter("activekit.config.changes.rejected",
		metric.WithDescription("Configuration changes refused, by stage; the last good configuration stays."),
		metric.WithUnit("{change}")); err != nil {
		return fmt.Errorf("config: metrics: %w", err)
	}
	info, err := m.Int64ObservableGauge("activekit.config.info",
		metric.WithDescription("1, with the hash of the effective configuration as the config.hash attribute: instances with different hashes have drifted."))
	if err != nil {
		return fmt.Errorf("config: metrics: %w", err)
	}
	s.reg, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(info, 1, metric.WithAttributeSet(s.attrs), metric.WithAttributes(attribute.String("config.hash", s.Hash())))
		return nil
	}, info)
	if err != nil {
		return fmt.Errorf("config: metrics: %w", err)
	}
	return nil
}

// Close unregisters the store's metric callback. It does not stop Watch;
// cancel Watch's context for that.
func (s *Store[T]) Close() error {
	if s.reg != nil {
		return s.reg.Unregister()
	}
	return nil
}

// Load returns the current configuration. It never blocks. The value is
// shared by every reader: maps, slices and pointers in it must not be
// modified.
func (s *Store[T]) Load() T { return s.cur.Load().value }

// Hash returns a short hex digest of the effective configuration: the
// first 8 bytes of the SHA-256 of its canonical JSON (sorted keys, each
// secret replaced by a slow derivation of it, see Secret). Instances with
// the same configuration report the same hash whatever the order or syntax
// of their sources.
func (s *Store[T]) Hash() string { return s.cur.Load().hash }

// Version counts the snapshots applied by this store, 1 at boot.
func (s *Store[T]) Version() uint64 { return s.cur.Load().version }

// LastError returns why the last change was refused, or why a watched
// source cannot be read, or nil when the current snapshot is what the
// sources say. It is a *ChangeError.
func (s *Store[T]) LastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErrLocked()
}

func (s *Store[T]) lastErrLocked() error {
	if s.lastErr != nil {
		return s.lastErr
	}
	for _, e := range s.srcErrs {
		if e != nil {
			return e
		}
	}
	return nil
}

// Subscribe calls fn with the old and new configuration after each applied
// change, until the returned function is called. Calls come from the
// goroutine applying changes (Watch's, or Reload's caller), in order, one at
// a time, outside any lock of the store; fn may call Load, Subscribe or the
// returned function, but a slow fn delays the next change (changes arriving
// meanwhile are coalesced).
func (s *Store[T]) Subscribe(fn func(old, new T)) (unsubscribe func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.nextSub
	s.nextSub++
	s.subs[id] = fn
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.subs, id)
	}
}

// Reload reads every source again and applies the result, returning why
// it was refused, if it was. It is the pipeline Watch runs, called
// directly (on SIGHUP, say).
//
// A layer its watch delivered while Reload was reading is newer than what
// Reload read, and is kept; so are the layers of a Reload that started
// later and finished first.
func (s *Store[T]) Reload(ctx context.Context) error {
	s.mu.Lock()
	gens := append([]uint64(nil), s.gens...)
	s.reloads++
	seq := s.reloads
	s.mu.Unlock()
	layers := make([]map[string]any, len(s.opts.Sources))
	for i, src := range s.opts.Sources {
		m, err := src.Load(ctx)
		if err != nil {
			cerr := &ChangeError{Stage: StageFetch, Source: src.Name(), Err: wrapSource(err)}
			s.reject(ctx, cerr)
			return cerr
		}
		layers[i] = m
	}
	s.mu.Lock()
	if seq > s.reloaded { // else a Reload that started later, and read later, has stored its layers
		s.reloaded = seq
		for i, l := range layers {
			if s.gens[i] == gens[i] {
				s.layers[i] = l
			}
		}
	}
	s.mu.Unlock()
	return s.apply(ctx)
}

// ErrWatching is returned by Watch when another Watch is running on the
// same store.
var ErrWatching = errors.New("config: already watching")

// Watch follows every source that is a Watcher and applies its changes,
// until ctx ends; it then returns ctx's error. It runs one goroutine per
// watched source plus the caller's own, which applies changes and calls
// subscribers; all have ended when Watch returns. A source whose Watch
// returns while ctx lives (with an error or nil) is no longer followed:
// the store reports it (LastError, Status at warn) until that source
// delivers a layer again.
func (s *Store[T]) Watch(ctx context.Context) error {
	s.mu.Lock()
	if s.watching {
		s.mu.Unlock()
		return ErrWatching
	}
	s.watching = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.watching = false
		s.mu.Unlock()
	}()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel, which runs first (defers run last-in first-out)
	for i, src := range s.opts.Sources {
		w, ok := src.(Watcher)
		if !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := w.Watch(ctx, func(layer map[string]any, err error) { s.update(ctx, i, src, layer, err) })
			if ctx.Err() == nil { // the source is no longer followed, whatever it returned
				if err == nil {
					err = errWatchReturned
				}
				s.log.LogAttrs(ctx, slog.LevelError, "config source stopped watching",
					slog.String("source", src.Name()), slog.Any("error", err))
				s.mu.Lock()
				s.srcErrs[i] = &ChangeError{Stage: StageFetch, Source: src.Name(), Err: wrapSource(fmt.Errorf("watch ended: %w", err))}
				s.mu.Unlock()
			}
		}()
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.kick:
		}
		if d := s.opts.Debounce; d > 0 {
			t := s.clock.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C():
			}
			select { // changes that came during the wait are in this run
			case <-s.kick:
			default:
			}
		}
		_ = s.apply(ctx)
	}
}

// errWatchReturned is what a Watcher that returned nil before its context
// ended is reported with.
var errWatchReturned = errors.New("watch returned while the store still watches")

// update records a watched source's new layer (or its error) and wakes the
// applying loop.
func (s *Store[T]) update(ctx context.Context, i int, src Source, layer map[string]any, err error) {
	if err != nil {
		cerr := &ChangeError{Stage: StageFetch, Source: src.Name(), Err: wrapSource(err)}
		s.mu.Lock()
		s.srcErrs[i] = cerr
		s.mu.Unlock()
		s.rejected.Add(ctx, 1, metric.WithAttributeSet(s.attrs), metric.WithAttributes(attribute.String("stage", string(StageFetch))))
		s.log.LogAttrs(ctx, slog.LevelWarn, "config source unreadable, keeping the last good configuration",
			slog.String("source", src.Name()), slog.Any("error", err), slog.String("config.hash", s.Hash()))
		return
	}
	if layer == nil {
		layer = map[string]any{}
	}
	s.mu.Lock()
	s.layers[i] = layer
	s.gens[i]++
	s.srcErrs[i] = nil
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default: // a run is already pending; it will read this layer
	}
}

// apply runs the pipeline on the current layers.
func (s *Store[T]) apply(ctx context.Context) error {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	s.mu.Lock()
	layers := append([]map[string]any(nil), s.layers...)
	s.mu.Unlock()

	old := s.cur.Load()
	next, changed, err := s.build(layers, old)
	if err != nil {
		s.reject(ctx, err)
		return err
	}
	s.mu.Lock()
	s.lastErr = nil
	s.mu.Unlock()
	if len(changed) == 0 {
		return nil
	}
	next.version = old.version + 1
	s.cur.Store(next)
	s.applied.Add(ctx, 1, metric.WithAttributeSet(s.attrs))
	s.log.LogAttrs(ctx, slog.LevelInfo, "config change applied",
		slog.Any("keys", changed), slog.String("config.hash", next.hash), slog.String("config.previous_hash", old.hash))

	s.mu.Lock()
	subs := make([]func(old, new T), 0, len(s.subs))
	for id := uint64(0); id < s.nextSub; id++ { // in subscription order
		if fn, ok := s.subs[id]; ok {
			subs = append(subs, fn)
		}
	}
	s.mu.Unlock()
	for _, fn := range subs {
		fn(old.value, next.value)
	}
	return nil
}

func (s *Store[T]) reject(ctx context.Context, err error) {
	stage := StageMerge
	var cerr *ChangeError
	if errors.As(err, &cerr) {
		stage = cerr.Stage
	}
	s.mu.Lock()
	s.lastErr = err
	s.failedAt = s.clock.Now()
	s.mu.Unlock()
	s.rejected.Add(ctx, 1, metric.WithAttributeSet(s.attrs), metric.WithAttributes(attribute.String("stage", string(stage))))
	s.log.LogAttrs(ctx, slog.LevelWarn, "config change rejected, keeping the last good configuration",
		slog.String("stage", string(stage)), slog.Any("error", err), slog.String("config.hash", s.Hash()))
}

// build merges layers over the defaults, decodes, validates and, when old
// is not nil (a change at run time), diffs and refuses restart-only keys.
// It returns the new snapshot and the keys changed.
func (s *Store[T]) build(layers []map[string]any, old *snapshot[T]) (_ *snapshot[T], _ []string, err error) {
	// The secrets' cache follows the configuration built only once it is
	// accepted: a refused change (a restart-only key) leaves the current
	// one's derivations.
	defer func() { s.secrets.done(err == nil) }()
	k := koanf.New("\x00")
	if err := k.Load(confmap.Provider(s.defaults, ""), nil); err != nil {
		return nil, nil, &ChangeError{Stage: StageMerge, Err: err}
	}
	for i, l := range layers {
		if err := k.Load(confmap.Provider(l, ""), nil); err != nil {
			return nil, nil, &ChangeError{Stage: StageMerge, Source: s.opts.Sources[i].Name(), Err: err}
		}
	}
	v, err := decode[T](k.Raw())
	if err != nil {
		return nil, nil, &ChangeError{Stage: StageDecode, Err: err}
	}
	if err := s.validate(&v); err != nil {
		return nil, nil, &ChangeError{Stage: StageValidate, Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
	}
	canon, flat, err := canonical(&v, &s.secrets)
	if err != nil {
		return nil, nil, &ChangeError{Stage: StageDecode, Err: fmt.Errorf("%w: canonical form: %w", ErrDecode, err)}
	}
	next := &snapshot[T]{value: v, hash: hashOf(canon), flat: flat, appliedAt: s.clock.Now()}
	if old == nil {
		return next, nil, nil
	}
	changed := diffKeys(old.flat, flat)
	if bad := touches(changed, s.restart); len(bad) > 0 {
		return nil, nil, &ChangeError{Stage: StageRestart, Keys: bad,
			Err: fmt.Errorf("%w: %v can only change with a restart", ErrRestartRequired, bad)}
	}
	return next, changed, nil
}

func (s *Store[T]) validate(v *T) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic in validation: %v", r)
		}
	}()
	if val, ok := any(v).(Validator); ok {
		if err := val.Validate(); err != nil {
			return err
		}
	}
	if s.opts.Validate != nil {
		return s.opts.Validate(v)
	}
	return nil
}

type systemClock struct{}

func (systemClock) Now() time.Time                       { return time.Now() }
func (systemClock) NewTimer(d time.Duration) retry.Timer { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (t systemTimer) C() <-chan time.Time { return t.t.C }
func (t systemTimer) Stop() bool          { return t.t.Stop() }
