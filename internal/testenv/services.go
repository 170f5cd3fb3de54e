package testenv

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"
)

// StopService stops one server that scripts/services started (for example
// "redis-primary" to force a Sentinel failover, or "consul" to restart the
// agent), through the script named by ACTIVEKIT_SERVICES. Servers found any
// other way cannot be controlled, so the test is skipped or failed as for a
// missing server.
//
// It waits until no test in another process is using the server (tests hold
// it through the testenv function that resolved it), and keeps other
// processes' tests from starting to use it until StartService. If the test
// ends with the server still stopped, it is started again at cleanup.
func StopService(t testing.TB, name string) {
	t.Helper()
	if os.Getenv(EnvServicesControl) == "" {
		Unavailable(t, EnvServicesControl, "not set: this test stops and starts %s, which only servers run by scripts/services allow", name)
		return
	}
	stopLock(t, name)
	t.Cleanup(func() {
		if stopped(name) {
			runServices(t, "start", name)
			startUnlock(t, name)
		}
	})
	runServices(t, "stop", name)
}

// StartService starts a server stopped by StopService and waits until it
// answers.
func StartService(t testing.TB, name string) {
	t.Helper()
	runServices(t, "start", name)
	startUnlock(t, name)
}

func runServices(t testing.TB, verb, name string) {
	t.Helper()
	script := os.Getenv(EnvServicesControl)
	if script == "" {
		Unavailable(t, EnvServicesControl, "not set: this test stops and starts %s, which only servers run by scripts/services allow", name)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, script, verb, name).CombinedOutput()
	if err != nil {
		t.Fatalf("testenv: %s %s %s: %v\n%s", script, verb, name, err, out)
	}
}
