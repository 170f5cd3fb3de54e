package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Tests in different packages run as different processes at the same time,
// and a test that stops a shared server (StopService) would break the tests
// of other packages using it. So every test that uses a server that some test
// may stop holds a shared lock on it for its duration, and StopService takes
// the lock exclusively until the server is back. The locks are flock(2) locks
// on files in the system's temporary directory, so they bind every process on
// the machine and vanish with a crashed process. They are taken only for
// servers run by scripts/services (ACTIVEKIT_SERVICES set), the only ones a
// test can stop.
var serviceLocks struct {
	mu sync.Mutex
	m  map[string]*serviceLock
}

// serviceLock is this process's lock on one server: one open file, shared by
// the tests of this process that use the server.
type serviceLock struct {
	f         *os.File
	shared    int  // tests of this process holding it shared
	exclusive bool // a test of this process stopped the server
}

const lockWait = 3 * time.Minute

func lockFor(t testing.TB, name string) *serviceLock {
	t.Helper()
	if serviceLocks.m == nil {
		serviceLocks.m = map[string]*serviceLock{}
	}
	l := serviceLocks.m[name]
	if l == nil {
		path := filepath.Join(os.TempDir(), "activekit-service-"+name+".lock")
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o666)
		if err != nil {
			t.Fatalf("testenv: lock file for %s: %v", name, err)
		}
		l = &serviceLock{f: f}
		serviceLocks.m[name] = l
	}
	return l
}

// useService holds a shared lock on the server name until the end of t, so
// that no test in another process stops it meanwhile.
func useService(t testing.TB, name string) {
	t.Helper()
	if os.Getenv(EnvServicesControl) == "" {
		return
	}
	serviceLocks.mu.Lock()
	defer serviceLocks.mu.Unlock()
	l := lockFor(t, name)
	if l.shared == 0 && !l.exclusive {
		if err := flock(l.f, false, lockWait); err != nil {
			t.Fatalf("testenv: waiting for %s, which another test has stopped: %v", name, err)
		}
	}
	l.shared++
	t.Cleanup(func() {
		serviceLocks.mu.Lock()
		defer serviceLocks.mu.Unlock()
		l.shared--
		if l.shared == 0 && !l.exclusive {
			_ = funlock(l.f)
		}
	})
}

// stopLock takes the server's lock exclusively: it waits until no test of
// another process uses the server.
func stopLock(t testing.TB, name string) {
	t.Helper()
	serviceLocks.mu.Lock()
	defer serviceLocks.mu.Unlock()
	l := lockFor(t, name)
	if l.exclusive {
		return
	}
	if err := flock(l.f, true, lockWait); err != nil {
		t.Fatalf("testenv: waiting for the other users of %s to finish: %v", name, err)
	}
	l.exclusive = true
}

// startUnlock gives the exclusive lock back: shared again if tests of this
// process still use the server, else released.
func startUnlock(t testing.TB, name string) {
	t.Helper()
	serviceLocks.mu.Lock()
	defer serviceLocks.mu.Unlock()
	l := lockFor(t, name)
	if !l.exclusive {
		return
	}
	l.exclusive = false
	var err error
	if l.shared > 0 {
		err = flock(l.f, false, lockWait)
	} else {
		err = funlock(l.f)
	}
	if err != nil {
		t.Fatalf("testenv: releasing %s: %v", name, err)
	}
}

func stopped(name string) bool {
	serviceLocks.mu.Lock()
	defer serviceLocks.mu.Unlock()
	l := serviceLocks.m[name]
	return l != nil && l.exclusive
}

var errLockTimeout = fmt.Errorf("gave up after %v", lockWait)
