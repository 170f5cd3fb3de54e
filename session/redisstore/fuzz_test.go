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
	f.Fuzz(func(t *testing.T, f1, v1, f2, v2 string) {
		rec, err := decode("id", []any{f1, v1, f2, v2})
		if err != nil {
			return
		}
		for _, fv := range [][2]string{{f1, v1}, {f2, v2}} {
			if !strings.HasPrefix(fv[0], "k:") || (fv[0] == f1 && f1 == f2 && fv[1] == v1) {
				continue
			}
			ver, data, _ := strings.Cut(fv[1], ":")
			got, ok := rec.Values[fv[0][2:]]
			if !ok || string(got.Data) != data || ver == "" {
				t.Fatalf("field %q=%q decoded to %+v", fv[0], fv[1], got)
			}
		}
	})
}
