package consul_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/activekit/activekit/discovery/consul"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/hashicorp/consul/api"
)

// lossyAgent is an http.RoundTripper to the real agent that can lose the
// reply to the first service registration after the agent applied it, as
// a dropped connection or a caller's deadline does, or answer it with a
// refusal without sending it. It records the deregistrations sent.
type lossyAgent struct {
	base *http.Transport
	// register decides what becomes of the first registration:
	// "reset" delivers it and fails with a transport error, "hold"
	// delivers it and holds the reply until the caller gives up,
	// "refuse" answers 400 without delivering it.
	register string
	// holdDeregister holds every deregistration until its caller gives
	// up, as a wedged agent does.
	holdDeregister bool

	mu    sync.Mutex
	lost  bool
	dereg []string
}

func (l *lossyAgent) RoundTrip(r *http.Request) (*http.Response, error) {
	if id, ok := strings.CutPrefix(r.URL.Path, "/v1/agent/service/deregister/"); ok {
		l.mu.Lock()
		l.dereg = append(l.dereg, id)
		l.mu.Unlock()
		if l.holdDeregister {
			<-r.Context().Done()
			return nil, r.Context().Err()
		}
		return l.base.RoundTrip(r)
	}
	if r.URL.Path != "/v1/agent/service/register" {
		return l.base.RoundTrip(r)
	}
	l.mu.Lock()
	first := !l.lost
	l.lost = true
	l.mu.Unlock()
	if !first {
		return l.base.RoundTrip(r)
	}
	if l.register == "refuse" {
		return &http.Response{StatusCode: http.StatusBadRequest, Status: "400 Bad Request",
			Body: io.NopCloser(strings.NewReader("Invalid service")), Header: http.Header{}, Request: r}, nil
	}
	// The agent gets the request whole and applies it; its reply is lost.
	resp, err := l.base.RoundTrip(r.WithContext(context.WithoutCancel(r.Context())))
	if err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, errors.New("lossyAgent: the agent refused the registration: " + resp.Status)
	}
	if l.register == "hold" {
		<-r.Context().Done()
		return nil, r.Context().Err()
	}
	return nil, errors.New("read: connection reset by peer")
}

func (l *lossyAgent) deregistrations() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.dereg...)
}

func lossyClient(t *testing.T, l *lossyAgent) *api.Client {
	t.Helper()
	l.base = http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(l.base.CloseIdleConnections)
	c, err := api.NewClient(&api.Config{Address: testenv.ConsulAddr(t), HttpClient: &http.Client{Transport: l}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestFirstRegistrationLostReply: the agent applied the first registration
// but its reply was lost (the caller's deadline passed, or the connection
// dropped), so Register fails and the caller never gets a Registration to
// Close. The instance must not stay in the agent (a zombie: passing until
// its TTL lapses, listed until DeregisterCriticalAfter, for an instance
// that never started): Register deregisters it before returning the
// original error.
func TestFirstRegistrationLostReply(t *testing.T) {
	for _, tc := range []struct {
		name, register string
		timeout        time.Duration
		want           error
	}{
		{"caller deadline", "hold", 500 * time.Millisecond, context.DeadlineExceeded},
		{"connection dropped", "reset", 10 * time.Second, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &lossyAgent{register: tc.register}
			c := lossyClient(t, l)
			plain := testenv.Consul(t)
			service := testenv.Name(t)
			id := service + "-1"
			t.Cleanup(func() { _ = plain.Agent().ServiceDeregister(id) }) // a zombie left by a failure
			reg := newRegistry(t, c, consul.RegistryConfig{TTL: 30 * time.Second})

			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			g, err := reg.RegisterInstance(ctx, instance(service, id, 9001))
			if err == nil {
				_ = g.Close(context.Background())
				t.Fatal("Register succeeded with its reply lost")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("Register = %v, want the original error (%v)", err, tc.want)
			}
			if tc.want == nil && !strings.Contains(err.Error(), "connection reset") {
				t.Errorf("Register = %v, want the original error", err)
			}
			services, err := plain.Agent().Services()
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := services[id]; ok {
				t.Fatalf("%s is registered with the agent after its Register failed (deregistrations sent: %v)", id, l.deregistrations())
			}
		})
	}
}

// TestFirstRegistrationRefusedNotDeregistered: an agent that refused the
// registration (a 4xx answer) registered nothing, so nothing is
// deregistered: a deregistration would remove a registration of the same
// ID the refusal left in place.
func TestFirstRegistrationRefusedNotDeregistered(t *testing.T) {
	l := &lossyAgent{register: "refuse"}
	c := lossyClient(t, l)
	service := testenv.Name(t)
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: 30 * time.Second})
	_, err := reg.RegisterInstance(context.Background(), instance(service, service+"-1", 9001))
	if se := (api.StatusError{}); !errors.As(err, &se) || se.Code != http.StatusBadRequest {
		t.Fatalf("Register = %v, want the agent's 400", err)
	}
	if d := l.deregistrations(); len(d) != 0 {
		t.Fatalf("deregistrations %v after a refused registration, want none", d)
	}
}

// TestFirstRegistrationCleanupBounded: when the agent does not answer the
// deregistration either (it is wedged), Register still returns soon after
// the caller's deadline, with the original error, and leaves nothing
// running (goleak checks).
func TestFirstRegistrationCleanupBounded(t *testing.T) {
	l := &lossyAgent{register: "hold", holdDeregister: true}
	c := lossyClient(t, l)
	plain := testenv.Consul(t)
	service := testenv.Name(t)
	id := service + "-1"
	t.Cleanup(func() { _ = plain.Agent().ServiceDeregister(id) })
	reg := newRegistry(t, c, consul.RegistryConfig{TTL: 30 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := reg.RegisterInstance(ctx, instance(service, id, 9001))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Register = %v, want the caller's deadline", err)
	}
	if d := l.deregistrations(); len(d) != 1 || d[0] != id {
		t.Fatalf("deregistrations %v, want one of %s", d, id)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Register took %v with a wedged agent: the deregistration is not bounded", took)
	}
}
