package main

import (
	"crypto/rand"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/activekit/activekit/internal/testenv"
)

// The service reaches a Redis that wants a user name and password (an ACL
// user made for the test): visits count. The password never reaches its
// logs or its health answers. With a wrong password it answers 503, fails
// readiness and hands out no session, and its logs do not quote the
// password it was given either.
func TestRedisAuth(t *testing.T) {
	rdb := testenv.Redis(t)
	user, pw := "ak-"+rand.Text()[:12], rand.Text()
	if err := rdb.Do(t.Context(), "ACL", "SETUSER", user, "on", ">"+pw, "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Do(t.Context(), "ACL", "DELUSER", user).Err() })

	env := baseEnv(t, "svc-auth")
	sessionPrefix(t, env)
	env["ACTIVEKIT_REDIS_USERNAME"] = user
	env["ACTIVEKIT_REDIS_PASSWORD"] = pw
	good := startInstance(t, env)
	c := newClient(t)
	waitReady(t, c, good.base)
	for i := 1; i <= 2; i++ {
		if v := visit(t, c, good.base); v.Visits != i {
			t.Fatalf("visit %d: %+v", i, v)
		}
	}

	// This Redis lets the default user in without a password: the visits
	// prove nothing unless the instance's connections are the ACL user's.
	clients, err := rdb.ClientList(t.Context()).Result()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(clients, " user="+user+" ") {
		t.Errorf("no connection of user %s in CLIENT LIST:\n%s", user, clients)
	}

	wrong := maps.Clone(env)
	wrong["ACTIVEKIT_INSTANCE_ID"] = "svc-auth-wrong"
	wrong["ACTIVEKIT_REDIS_PASSWORD"] = "not-" + pw
	bad := startInstance(t, wrong)
	bc := newClient(t)
	code, body := get(t, bc, bad.base+"/visits")
	if code != http.StatusServiceUnavailable {
		t.Errorf("visit with a wrong Redis password: %d %s, want 503", code, body)
	}
	if u, _ := http.NewRequest(http.MethodGet, bad.base, nil); len(bc.Jar.Cookies(u.URL)) != 0 {
		t.Errorf("a session cookie was handed out without Redis: %v", bc.Jar.Cookies(u.URL))
	}
	eventually(t, 10*time.Second, "readiness failing without Redis", func() bool {
		code, _ := get(t, bc, bad.base+"/readyz")
		return code == http.StatusServiceUnavailable
	})

	for _, in := range []*instance{good, bad} {
		for _, path := range []string{"/readyz", "/livez", "/startupz"} {
			if _, body := get(t, c, in.base+path); strings.Contains(string(body), pw) {
				t.Errorf("%s%s shows the Redis password: %s", in.base, path, body)
			}
		}
		if logs := in.log.text(); strings.Contains(logs, pw) {
			t.Errorf("the logs of %s hold the Redis password", in.base)
		}
	}
}

// text returns every log line the sink has kept, as one string.
func (s *logSink) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, l := range s.lines {
		fmt.Fprintln(&b, l)
	}
	return b.String()
}
