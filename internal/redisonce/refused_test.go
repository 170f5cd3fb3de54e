package redisonce_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/activekit/activekit/internal/redisonce"
)

// refuser is a stand-in for a Redis node that answers the first refusals
// EVALSHA commands with reply (an error line such as "-TRYAGAIN ...") and
// the later ones with :1; any other command gets +OK. It counts the
// EVALSHAs it received.
type refuser struct {
	ln       net.Listener
	reply    string
	refusals int64
	evals    atomic.Int64
	wg       sync.WaitGroup
}

func newRefuser(t *testing.T, reply string, refusals int64) *refuser {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &refuser{ln: ln, reply: reply, refusals: refusals}
	var conns sync.Map
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true)
			r.wg.Go(func() { r.serve(c) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		conns.Range(func(c, _ any) bool { _ = c.(net.Conn).Close(); return true })
		r.wg.Wait()
	})
	return r
}

func (r *refuser) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		args, err := readCommand(br)
		if err != nil {
			return
		}
		out := "+OK\r\n"
		switch {
		case strings.EqualFold(args[0], "hello"): // a RESP2 server
			out = "-ERR unknown command 'HELLO'\r\n"
		case strings.EqualFold(args[0], "evalsha"):
			if r.evals.Add(1) <= r.refusals {
				out = r.reply + "\r\n"
			} else {
				out = ":1\r\n"
			}
		}
		if _, err := io.WriteString(c, out); err != nil {
			return
		}
	}
}

// readCommand reads one RESP array of bulk strings.
func readCommand(br *bufio.Reader) ([]string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(line, "*") {
		return nil, fmt.Errorf("not an array: %q", line)
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || n < 1 {
		return nil, fmt.Errorf("bad array length %q", line)
	}
	args := make([]string, n)
	for i := range args {
		if line, err = br.ReadString('\n'); err != nil {
			return nil, err
		}
		size, err := strconv.Atoi(strings.TrimSpace(line[1:]))
		if err != nil {
			return nil, err
		}
		b := make([]byte, size+2)
		if _, err := io.ReadFull(br, b); err != nil {
			return nil, err
		}
		args[i] = string(b[:size])
	}
	return args, nil
}

// A script that Redis refused without running it (a slot being migrated,
// a node loading, busy or become a replica) is sent again, a bounded number
// of times; any other error, and a refusal that outlasts the bound, is the
// caller's at once. Without this, every write script of session/redisstore
// failed during a Cluster slot migration or the seconds after a failover,
// and the user got a 503 that one more send would have spared.
func TestRefusedScriptSentAgain(t *testing.T) {
	for _, tc := range []struct {
		name      string
		reply     string
		refusals  int64
		wantSends int64
		wantErr   string // prefix; empty: success
	}{
		{"tryagain twice", "-TRYAGAIN Multiple keys request during rehashing of slot", 2, 3, ""},
		{"loading", "-LOADING Redis is loading the dataset in memory", 1, 2, ""},
		{"busy", "-BUSY Redis is busy running a script.", 3, 4, ""},
		{"readonly", "-READONLY You can't write against a read only replica.", 1, 2, ""},
		{"clusterdown", "-CLUSTERDOWN The cluster is down", 1, 2, ""},
		{"masterdown", "-MASTERDOWN Link with MASTER is down", 1, 2, ""},
		{"refused past the bound", "-TRYAGAIN Multiple keys request during rehashing of slot", 100, redisonce.Refusals, "TRYAGAIN"},
		{"a script's own error", "-ERR Error running script: boom", 1, 1, "ERR"},
		{"busygroup is no refusal", "-BUSYGROUP Consumer Group name already exists", 1, 1, "BUSYGROUP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRefuser(t, tc.reply, tc.refusals)
			c := redis.NewClient(&redis.Options{Addr: r.ln.Addr().String(), Protocol: 2, DisableIdentity: true, MaxRetries: -1})
			defer c.Close()
			err := redisonce.Scripter{C: c}.EvalSha(t.Context(), "0123456789012345678901234567890123456789", []string{"k"}).Err()
			if got := r.evals.Load(); got != tc.wantSends {
				t.Errorf("%d sends, want %d", got, tc.wantSends)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("EvalSha: %v, want success", err)
			case tc.wantErr != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.wantErr)):
				t.Errorf("EvalSha: %v, want %s", err, tc.wantErr)
			}
		})
	}
}

// The waits between sends end with ctx: a caller whose request ended gets
// the refusal at once, not after the remaining waits.
func TestRefusedScriptHonoursContext(t *testing.T) {
	r := newRefuser(t, "-TRYAGAIN Multiple keys request during rehashing of slot", 100)
	c := redis.NewClient(&redis.Options{Addr: r.ln.Addr().String(), Protocol: 2, DisableIdentity: true})
	defer c.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- redisonce.Scripter{C: c}.EvalSha(ctx, "0123456789012345678901234567890123456789", []string{"k"}).Err()
	}()
	for deadline := time.Now().Add(5 * time.Second); r.evals.Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no EVALSHA reached the server")
		}
		time.Sleep(time.Millisecond) // polling a counter the server goroutine sets
	}
	cancel()
	select {
	case err := <-done:
		if err == nil || !redisonce.NotRun(err) {
			t.Errorf("EvalSha: %v, want the refusal", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("EvalSha kept waiting after ctx ended")
	}
	if n := r.evals.Load(); n >= redisonce.Refusals {
		t.Errorf("%d sends after ctx ended early", n)
	}
}

func TestNotRun(t *testing.T) {
	if redisonce.NotRun(errors.New("TRYAGAIN not a reply")) {
		t.Error("a plain error with a refusal's words is no refusal")
	}
	if redisonce.NotRun(nil) {
		t.Error("nil is no refusal")
	}
}

// ErrorCode reads the code of a reply as Redis 7 sends it, and as a server
// before 7 wraps a script command's error.
func TestErrorCode(t *testing.T) {
	for _, tc := range []struct{ reply, want string }{
		{"READONLY You can't write against a read only replica.", "READONLY"},
		{"ERR Error running script (call to f_0123): @user_script:3: -READONLY You can't write against a read only replica.", "READONLY"},
		{"ERR Error running script (call to f_0123): @user_script:3: boom", "ERR"},
		{"BUSYGROUP Consumer Group name already exists", "BUSYGROUP"},
		{"LOADING", "LOADING"},
	} {
		if got := redisonce.ErrorCode(proto(tc.reply)); got != tc.want {
			t.Errorf("ErrorCode(%q) = %q, want %q", tc.reply, got, tc.want)
		}
	}
	if got := redisonce.ErrorCode(errors.New("READONLY but no reply")); got != "" {
		t.Errorf("ErrorCode of a plain error = %q", got)
	}
}

// proto is an error reply as go-redis returns one.
type proto string

func (e proto) Error() string { return string(e) }
func (proto) RedisError()     {}
