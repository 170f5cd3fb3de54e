//go:build unix

package testenv

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A test that stops a server waits for the tests of other processes that use
// it, and they wait for it to be started again. Another process is stood for
// by a second open file description of the lock file, which flock(2) treats
// as a different owner.
func TestStopWaitsForOtherUsers(t *testing.T) {
	t.Setenv(EnvServicesControl, "/bin/true")
	name := Name(t)
	path := filepath.Join(os.TempDir(), "activekit-service-"+name+".lock")
	t.Cleanup(func() { os.Remove(path) })

	other, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_SH); err != nil {
		t.Fatal(err)
	}

	got := make(chan struct{})
	go func() {
		r := runRecorded(func(tb testing.TB) { stopLock(tb, name) })
		if r.failed {
			t.Errorf("stopLock: %s", r.msg)
		}
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("the exclusive lock was taken while another process used the server")
	case <-time.After(200 * time.Millisecond):
	}
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the exclusive lock was not taken after the other user left")
	}

	// Now stopped: another process cannot start using the server.
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
		t.Fatal("another process could use a stopped server")
	}
	r := runRecorded(func(tb testing.TB) { startUnlock(tb, name) })
	if r.failed {
		t.Fatal(r.msg)
	}
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		t.Fatalf("after the restart another process still cannot use the server: %v", err)
	}
}
