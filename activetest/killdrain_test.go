package activetest_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/activekit/activekit/activetest"
)

// Kill during a Drain is a process killed while it shuts down: the
// requests in flight are cut at once, not at the end of the drain timeout.
func TestKillDuringDrain(t *testing.T) {
	b := newBlocker()
	var closed atomic.Int32
	f := activetest.NewFleet(t, 1, func(int) http.Handler { return &closingHandler{Handler: b, closed: &closed} })
	c := f.Client()
	go func() {
		resp, err := c.Get(f.URL() + "?id=x&block=1")
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-b.entered
	drained := make(chan error, 1)
	go func() { drained <- f.Drain(0, time.Minute) }()
	eventually(t, "slot 0 out of the balancer", func() bool { return len(f.Live()) == 0 })
	f.Kill(0)
	select {
	case err := <-b.ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("handler ended with %v, want canceled", err)
		}
	case <-time.After(5 * time.Second):
		close(b.release)
		t.Fatal("Kill during Drain did not cut the request in flight")
	}
	if err := <-drained; err == nil {
		t.Error("Drain cut by a Kill returned nil")
	}
	eventually(t, "handler closed", func() bool { return closed.Load() >= 1 })
	if n := closed.Load(); n != 1 {
		t.Errorf("handler closed %d times, want 1", n)
	}
}

// upgrader answers an Upgrade request with 101 and echoes lines on the
// connection it takes over, as a WebSocket handler does, until the
// connection ends.
func upgrader(entered chan<- struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		_ = brw.Flush()
		entered <- struct{}{}
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			_, _ = brw.WriteString(line)
			_ = brw.Flush()
		}
	})
}

// dialUpgrade opens an upgraded (echo) connection through the balancer.
func dialUpgrade(t *testing.T, f *activetest.Fleet) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(f.URL(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	return conn, br
}

// Kill ends the connections an instance's handlers took over (a
// WebSocket): a dead process keeps none open.
func TestKillEndsHijacked(t *testing.T) {
	entered := make(chan struct{}, 1)
	f := activetest.NewFleet(t, 1, func(int) http.Handler { return upgrader(entered) })
	conn, br := dialUpgrade(t, f)
	<-entered
	f.Kill(0)
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(conn, "ping\n")
	if line, err := br.ReadString('\n'); err == nil {
		t.Errorf("a killed instance answered %q on a hijacked connection", line)
	}
}

// Drain bounds its wait for handlers of hijacked connections (which
// http.Server.Shutdown does not track) by its timeout, then cuts them.
func TestDrainBoundsHijacked(t *testing.T) {
	entered := make(chan struct{}, 1)
	f := activetest.NewFleet(t, 1, func(int) http.Handler { return upgrader(entered) })
	dialUpgrade(t, f)
	<-entered
	done := make(chan error, 1)
	go func() { done <- f.Drain(0, 100*time.Millisecond) }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Drain returned nil with a hijacked connection's handler running")
		}
	case <-time.After(5 * time.Second):
		f.Kill(0)
		t.Fatal("Drain did not return within 5s of its 100ms timeout")
	}
}

// The cleanup kills an instance being drained (after Restart replaced it):
// nothing runs after the test.
func TestCleanupKillsDraining(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	b := newBlocker()
	var closed atomic.Int32
	drained := make(chan error, 1)
	t.Run("fleet", func(t *testing.T) {
		f := activetest.NewFleet(t, 1, func(int) http.Handler { return &closingHandler{Handler: b, closed: &closed} })
		c := f.Client()
		go func() {
			resp, err := c.Get(f.URL() + "?id=x&block=1")
			if err == nil {
				resp.Body.Close()
			}
		}()
		<-b.entered
		go func() { drained <- f.Drain(0, time.Minute) }()
		eventually(t, "slot 0 out of the balancer", func() bool { return len(f.Live()) == 0 })
		f.Restart(0)
	})
	select {
	case err := <-drained:
		if err == nil {
			t.Error("Drain cut by the cleanup returned nil")
		}
	case <-time.After(5 * time.Second):
		close(b.release)
		<-drained
		t.Fatal("the cleanup left the drain running")
	}
	if n := closed.Load(); n != 2 {
		t.Errorf("%d handlers closed, want 2", n)
	}
	goleak.VerifyNone(t, ignore)
}

// Restart during a Drain brings the replacement up beside the draining
// instance, as a rolling update does: the drain goes on and its request
// finishes.
func TestRestartDuringDrain(t *testing.T) {
	b := newBlocker()
	f := activetest.NewFleet(t, 1, func(int) http.Handler { return b })
	c := f.Client()
	res := getAsync(t, c, f.URL()+"?id=x&block=1")
	<-b.entered
	drained := make(chan error, 1)
	go func() { drained <- f.Drain(0, 5*time.Second) }()
	eventually(t, "slot 0 out of the balancer", func() bool { return len(f.Live()) == 0 })
	f.Restart(0)
	if code, _, _ := get(t, c, f.URL()+"?id=new"); code != http.StatusOK {
		t.Errorf("the replacement answered %d", code)
	}
	close(b.release)
	if err := <-b.ended; err != nil {
		t.Errorf("the draining request was cut: %v", err)
	}
	if code := <-res; code != http.StatusOK {
		t.Errorf("the draining request: %d, want 200", code)
	}
	if err := <-drained; err != nil {
		t.Errorf("Drain: %v", err)
	}
}
