package retry_test

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/activekit/activekit/retry"
	"github.com/cenkalti/backoff/v4"
)

var now = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func TestParseRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"120", 120 * time.Second, true},
		{"0", 0, true},
		{"007", 7 * time.Second, true},
		{" 5\t", 5 * time.Second, true},
		{"86400", 24 * time.Hour, true},
		{"86401", 0, false},
		{"99999999999999999999999", 0, false},
		{"-1", 0, false},
		{"+1", 0, false},
		{"1.5", 0, false},
		{"1e3", 0, false},
		{"12 s", 0, false},
		{"", 0, false},
		{"   ", 0, false},
		{"soon", 0, false},
		{"Fri, 01 May 2026 12:02:00 GMT", 2 * time.Minute, true},
		{"Friday, 01-May-26 12:00:30 GMT", 30 * time.Second, true}, // RFC 850
		{"Fri May  1 12:00:10 2026", 10 * time.Second, true},       // asctime
		{"Fri, 01 May 2026 11:00:00 GMT", 0, true},                 // past: now
		{"Sat, 02 May 2026 12:00:01 GMT", 0, false},                // over a day
		{"Fri, 01 May 2026 12:02:00 GMT junk", 0, false},
		{"Fri, 01 May 2026 12:02:00 +0000", 0, false},
	} {
		got, ok := retry.ParseRetryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestResponseRetryAfter(t *testing.T) {
	resp := func(h map[string]string) *http.Response {
		r := &http.Response{Header: http.Header{}}
		for k, v := range h {
			r.Header.Set(k, v)
		}
		return r
	}
	for _, tc := range []struct {
		name string
		resp *http.Response
		want time.Duration
		ok   bool
	}{
		{"nil", nil, 0, false},
		{"absent", resp(nil), 0, false},
		{"seconds", resp(map[string]string{"Retry-After": "3"}), 3 * time.Second, true},
		{"date against our clock", resp(map[string]string{"Retry-After": "Fri, 01 May 2026 12:01:00 GMT"}), time.Minute, true},
		// The server's clock is 10 minutes behind ours: its Date header
		// gives the delay it meant.
		{"date against the server's Date", resp(map[string]string{
			"Retry-After": "Fri, 01 May 2026 11:51:00 GMT",
			"Date":        "Fri, 01 May 2026 11:50:00 GMT",
		}), time.Minute, true},
		{"invalid", resp(map[string]string{"Retry-After": "later"}), 0, false},
	} {
		got, ok := retry.ResponseRetryAfter(tc.resp, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: ResponseRetryAfter = %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "120", "86400", "86401", "-1", "1.5", "", " 7 ",
		"Fri, 01 May 2026 12:02:00 GMT", "Friday, 01-May-26 12:00:30 GMT", "Fri May  1 12:00:10 2026",
		"99999999999999999999", "\x00", "Sat, 02 May 2026 12:00:01 GMT"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := retry.ParseRetryAfter(s, now)
		if !ok {
			if d != 0 {
				t.Fatalf("ParseRetryAfter(%q) = %v, false; want 0 when rejected", s, d)
			}
			return
		}
		if d < 0 || d > retry.MaxRetryAfter {
			t.Fatalf("ParseRetryAfter(%q) = %v, outside [0, %v]", s, d, retry.MaxRetryAfter)
		}
		trimmed := strings.Trim(s, " \t")
		if n, err := strconv.ParseUint(trimmed, 10, 64); err == nil {
			// Plain digits: the delay is exactly that many seconds.
			if time.Duration(n)*time.Second != d {
				t.Fatalf("ParseRetryAfter(%q) = %v, want %ds", s, d, n)
			}
			return
		}
		if _, err := http.ParseTime(trimmed); err != nil {
			t.Fatalf("ParseRetryAfter(%q) accepted a value that is neither digits nor an HTTP-date", s)
		}
		if d2, ok2 := retry.ParseRetryAfter(s, now); d2 != d || !ok2 {
			t.Fatalf("ParseRetryAfter(%q) not deterministic", s)
		}
	})
}

func TestBackoffAsBackOff(t *testing.T) {
	clock := newManualClock()
	b, err := retry.NewBackoff(retry.Policy{
		InitialInterval: time.Second,
		MaxAttempts:     4,
		MaxElapsedTime:  -1,
		Jitter:          retry.NoJitter,
	}, clock)
	if err != nil {
		t.Fatal(err)
	}
	var bo backoff.BackOff = b
	for range 2 {
		var got []time.Duration
		for d := bo.NextBackOff(); d != backoff.Stop; d = bo.NextBackOff() {
			got = append(got, d)
		}
		want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}
		if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
			t.Fatalf("delays = %v, want %v", got, want)
		}
		bo.Reset()
	}

	// The elapsed limit applies from the last Reset.
	b, err = retry.NewBackoff(retry.Policy{InitialInterval: time.Second, MaxAttempts: -1,
		MaxElapsedTime: 10 * time.Second, Jitter: retry.NoJitter}, clock)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(9 * time.Second)
	if d := b.NextBackOff(); d != time.Second {
		t.Fatalf("NextBackOff = %v at 9s, want 1s", d)
	}
	if d := b.NextBackOff(); d != backoff.Stop {
		t.Fatalf("NextBackOff = %v at 9s with a 2s delay and a 10s limit, want Stop", d)
	}
}

func TestBackoffWithBackoffRetry(t *testing.T) {
	b, err := retry.NewBackoff(retry.Policy{InitialInterval: time.Microsecond, MaxAttempts: 3, Jitter: retry.NoJitter}, nil)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	err = backoff.Retry(func() error { calls++; return errTransient }, backoff.WithContext(b, context.Background()))
	if !errors.Is(err, errTransient) || calls != 3 {
		t.Fatalf("backoff.Retry = %v after %d calls, want errTransient after 3", err, calls)
	}
}
