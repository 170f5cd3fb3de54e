package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

// The containers started for one test binary are shared by its tests, which
// isolate themselves by name (Name); testcontainers' reaper removes them when
// the process exits. This cache is the package's one piece of mutable state,
// kept because starting a container per test would cost seconds each.
var containers struct {
	once    sync.Once
	docker  bool
	why     string
	mu      sync.Mutex
	started map[string]*started
}

type started struct {
	once sync.Once
	host string
	port map[string]string // container port ("6379/tcp") -> host port
	err  error
}

// dockerAnswers reports whether a Docker engine answers, asking at most once
// per process. Without a socket or DOCKER_HOST it does not ask at all, so a
// machine without Docker pays nothing.
func dockerAnswers() (bool, string) {
	containers.once.Do(func() {
		if os.Getenv(EnvTestcontainers) == "0" {
			containers.why = "containers are turned off (" + EnvTestcontainers + "=0)"
			return
		}
		if os.Getenv("DOCKER_HOST") == "" {
			if _, err := os.Stat("/var/run/docker.sock"); err != nil {
				containers.why = "no Docker engine (no DOCKER_HOST, no /var/run/docker.sock)"
				return
			}
		}
		p, err := testcontainers.NewDockerProvider()
		if err != nil {
			containers.why = fmt.Sprintf("no Docker engine: %v", err)
			return
		}
		defer p.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Health(ctx); err != nil {
			containers.why = fmt.Sprintf("Docker engine does not answer: %v", err)
			return
		}
		containers.docker = true
	})
	return containers.docker, containers.why
}

// containerSpec describes one container a resolver may start.
type containerSpec struct {
	key     string // cache key, e.g. "redis"
	image   string
	ports   []string // container ports, "6379/tcp"
	fixed   bool     // bind each port to the same free host port (for servers that advertise their address)
	cmd     func(hostPorts map[string]string) []string
	env     map[string]string
	wait    wait.Strategy
	postRun func(ctx context.Context, host string, ports map[string]string) error
}

// container starts spec once per process and returns the host and the host
// port of each container port. ok is false when Docker is not available; the
// string then says why.
func container(t testing.TB, spec containerSpec) (host string, ports map[string]string, ok bool, why string) {
	t.Helper()
	if up, why := dockerAnswers(); !up {
		return "", nil, false, why
	}
	containers.mu.Lock()
	if containers.started == nil {
		containers.started = map[string]*started{}
	}
	s := containers.started[spec.key]
	if s == nil {
		s = &started{}
		containers.started[spec.key] = s
	}
	containers.mu.Unlock()

	s.once.Do(func() { s.host, s.port, s.err = runContainer(spec) })
	if s.err != nil {
		t.Fatalf("testenv: starting %s container %s: %v", spec.key, spec.image, s.err)
	}
	return s.host, s.port, true, ""
}

func runContainer(spec containerSpec) (string, map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	req := testcontainers.ContainerRequest{Image: spec.image, Env: spec.env, WaitingFor: spec.wait}
	fixedPorts := map[string]string{}
	for _, p := range spec.ports {
		if spec.fixed {
			hp, err := freePort()
			if err != nil {
				return "", nil, err
			}
			fixedPorts[p] = hp
			req.ExposedPorts = append(req.ExposedPorts, hp+":"+p)
		} else {
			req.ExposedPorts = append(req.ExposedPorts, p)
		}
	}
	if spec.cmd != nil {
		req.Cmd = spec.cmd(fixedPorts)
	}
	c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{ContainerRequest: req, Started: true})
	if err != nil {
		return "", nil, err
	}
	host, err := c.Host(ctx)
	if err != nil {
		return "", nil, err
	}
	ports := map[string]string{}
	for _, p := range spec.ports {
		mp, err := c.MappedPort(ctx, p)
		if err != nil {
			return "", nil, err
		}
		ports[p] = mp.Port()
	}
	if spec.postRun != nil {
		if err := spec.postRun(ctx, host, ports); err != nil {
			return "", nil, err
		}
	}
	return host, ports, nil
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port), nil
}
