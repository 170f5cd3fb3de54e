package redisstore

import (
	"strings"
	"testing"
)

// FuzzDecode: a hash read back from Redis decodes without panicking, and
// every value keeps its bytes and version.
func FuzzDecode(f *testing.F) {
	f.Add("_v", "3", "k:a", "3:hello")
	f.Add("_c", "1700000000000", "k:", "1:")
	f.Add("_a", "x", "k:b", "nocolon")
	f.Add("k:c", "18446744073709551616:v", "_u", "alice")
	f.Add("_s", "12", "k:d", ":empty version")
	f.Fuzz(func(t *testing.T, f1, v1, f2, v2 string) {
		h := map[string]string{f1: v1, f2: v2}
		rec, err := decode("id", h)
		if err != nil {
			return
		}
		for f, v := range h {
			if !strings.HasPrefix(f, "k:") {
				continue
			}
			ver, data, _ := strings.Cut(v, ":")
			got, ok := rec.Values[f[2:]]
			if !ok || string(got.Data) != data || ver == "" {
				t.Fatalf("field %q=%q decoded to %+v", f, v, got)
			}
		}
	})
}
