package memcachedstore_test

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/activekit/activekit/internal/testenv"
	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/sessiontest"
)

// itemSizeMax returns the test server's item size limit (memcached -I).
func itemSizeMax(t *testing.T) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", testenv.MemcachedAddr(t), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("stats settings\r\n")); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "STAT" && f[1] == "item_size_max" {
			n, err := strconv.Atoi(f[2])
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		if f[0] == "END" {
			break
		}
	}
	t.Fatalf("no item_size_max in stats settings: %v", sc.Err())
	return 0
}

// TestItemTooLarge: a session whose item is over the server's item size
// limit is refused with an error matching session.ErrTooLarge (the Manager
// answers 500 "session too large"), not as a store failure (which the
// Manager answers with 503 and Retry-After, and counts as Memcached being
// down, though retrying can never help), and changes nothing.
func TestItemTooLarge(t *testing.T) {
	c := newClient(t)
	s := newStore(t, c, prefix(t))
	big := bytes.Repeat([]byte("x"), itemSizeMax(t)+1)
	id := sessiontest.NewID(t, "")
	create(t, s, id, session.Delta{Set: map[string][]byte{"a": []byte("1")}})
	_, err := s.Apply(t.Context(), id, session.Delta{Set: map[string][]byte{"big": big}, Idle: hour})
	if !errors.Is(err, session.ErrTooLarge) {
		t.Errorf("Apply over the item size limit: %v, want an error matching session.ErrTooLarge", err)
	}
	rec, ok, err := s.Load(t.Context(), id, 0)
	if err != nil || !ok || rec.Version != 1 || len(rec.Values) != 1 {
		t.Errorf("after a refused write: %+v, %v, %v; want the record at version 1", rec, ok, err)
	}
	fresh := sessiontest.NewID(t, "")
	_, err = s.Apply(t.Context(), fresh, session.Delta{Create: &session.Create{Absolute: hour}, Set: map[string][]byte{"big": big}, Idle: hour})
	if !errors.Is(err, session.ErrTooLarge) {
		t.Errorf("create over the item size limit: %v, want an error matching session.ErrTooLarge", err)
	}
	if found(t, s, fresh) {
		t.Error("record created despite the error")
	}
}
