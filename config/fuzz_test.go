package config

import (
	"context"
	"errors"
	"testing"
)

// FuzzDecode feeds arbitrary bytes, as each format, through the whole
// change pipeline: it must never panic, and a change is either applied
// whole (a valid snapshot, a new version) or refused with the last good
// snapshot untouched.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		"", "level: debug\n", "a: 1\nb: 1\n", "server: {max_conns: -1}\n", "listen: ':1'\n",
		`{"a": 1e400}`, `{"a": 9223372036854775808}`, `{"features": {"x": "yes"}}`,
		"server:\n  timeout: 5s\n", "password: 12\n", "a = 1\nb = 2\n", "[server]\nmax_conns = 3\n",
		"? [a]\n: 1\n", "a: &x 1\nb: *x\n", "1: 2\n", "- 1\n- 2\n", "features:\n  1: true\n",
		`{"server": null}`, `{"level": ["x"]}`, "server: {timeout: 1.5}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, format := range []Format{YAML, JSON, TOML} {
			src := &mutable{m: map[string]any{"level": "debug"}}
			s, err := New(context.Background(), Options[testConfig]{Defaults: defaults(), Sources: []Source{&parsed{src, format}}})
			if err != nil {
				t.Fatal(err)
			}
			before, hash := s.Load(), s.Hash()
			src.raw = data
			err = s.Reload(context.Background())
			_ = s.Close()
			if err != nil {
				var ce *ChangeError
				if !errors.As(err, &ce) {
					t.Fatalf("error %T %v is not a *ChangeError", err, err)
				}
				if s.Version() != 1 || s.Hash() != hash || !equalConfig(s.Load(), before) {
					t.Fatalf("refused change %v altered the snapshot", err)
				}
				continue
			}
			got := s.Load()
			if got.Validate() != nil || got.Listen != before.Listen {
				t.Fatalf("applied an invalid or restart-only change: %+v", got)
			}
		}
	})
}

// parsed is a source that parses the raw bytes of a mutable source.
type parsed struct {
	m      *mutable
	format Format
}

func (p *parsed) Name() string { return "fuzz" }
func (p *parsed) Load(ctx context.Context) (map[string]any, error) {
	p.m.mu.Lock()
	raw := p.m.raw
	p.m.mu.Unlock()
	if raw == nil {
		return p.m.Load(ctx)
	}
	return Parse(p.format, raw)
}

func equalConfig(a, b testConfig) bool {
	var secrets secretCache
	ca, _, errA := canonical(&a, &secrets)
	cb, _, errB := canonical(&b, &secrets)
	return errA == nil && errB == nil && string(ca) == string(cb)
}
