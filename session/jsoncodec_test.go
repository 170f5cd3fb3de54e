package session_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/activekit/activekit/session"
)

// FuzzJSONCodec: the default codec's shortcuts (strings, integers, bools)
// give exactly encoding/json's bytes and results, errors included, for any
// input.
func FuzzJSONCodec(f *testing.F) {
	for _, s := range []string{"alice", "", "a<b", "x&y", `q"uote`, `back\slash`, "tab\t", "é", "\xff", "1e3", "-0", "007"} {
		f.Add(s, int64(len(s)), []byte(`"`+s+`"`))
	}
	f.Add("", int64(-1<<63), []byte("-9223372036854775808"))
	f.Add("", int64(1<<62), []byte("9223372036854775808"))
	f.Add("", int64(0), []byte(` "a" `))
	f.Add("", int64(0), []byte(`"\u0061"`))
	f.Add("", int64(0), []byte("true"))
	for _, n := range []string{"007", "-01", "-", "1.0", "-0", "42"} {
		f.Add("", int64(0), []byte(n))
	}
	f.Fuzz(func(t *testing.T, s string, i int64, data []byte) {
		var c session.JSONCodec
		for _, v := range []any{s, i, int(i), i%2 == 0} {
			got, gerr := c.Marshal(v)
			want, werr := json.Marshal(v)
			if !bytes.Equal(got, want) || (gerr == nil) != (werr == nil) {
				t.Fatalf("Marshal(%#v) = %q, %v; encoding/json: %q, %v", v, got, gerr, want, werr)
			}
		}
		check := func(got, want any) {
			t.Helper()
			gerr := c.Unmarshal(data, got)
			werr := json.Unmarshal(data, want)
			if (gerr == nil) != (werr == nil) || fmt.Sprint(deref(got)) != fmt.Sprint(deref(want)) {
				t.Fatalf("Unmarshal(%q) into %T: %v, %v; encoding/json: %v, %v", data, got, deref(got), gerr, deref(want), werr)
			}
		}
		// Into values holding something already: a failed decode must leave
		// the same thing as encoding/json leaves.
		gs, ws := "before", "before"
		check(&gs, &ws)
		gi, wi := int64(7), int64(7)
		check(&gi, &wi)
		gn, wn := 7, 7
		check(&gn, &wn)
		var gp, wp *string
		check(gp, wp)
	})
}

func deref(v any) any {
	switch p := v.(type) {
	case *string:
		if p != nil {
			return *p
		}
	case *int64:
		return *p
	case *int:
		return *p
	}
	return v
}
