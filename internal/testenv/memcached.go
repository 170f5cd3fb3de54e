package testenv

import (
	"net"
	"os"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go/wait"
)

var memcachedContainer = containerSpec{
	key:   "memcached",
	image: "memcached:1.6",
	ports: []string{"11211/tcp"},
	wait:  wait.ForListeningPort("11211/tcp"),
}

// MemcachedAddr returns the address of a Memcached server:
// ACTIVEKIT_MEMCACHED_ADDR, else a container. It checks that the server
// answers the version command.
func MemcachedAddr(t testing.TB) string {
	t.Helper()
	return env(os.Getenv).memcachedAddr(t)
}

func (e env) memcachedAddr(t testing.TB) string {
	t.Helper()
	addr, ok := e.lookupAddr(t, EnvMemcachedAddr)
	if !ok {
		host, ports, up, why := container(t, memcachedContainer)
		if !up {
			e.unavailable(t, EnvMemcachedAddr, "not set, and no container: %s", why)
			return ""
		}
		addr = net.JoinHostPort(host, ports["11211/tcp"])
	}
	if err := memcachedVersion(addr); err != nil {
		e.unavailable(t, EnvMemcachedAddr, "Memcached at %q does not answer: %v", addr, err)
	}
	return addr
}

func memcachedVersion(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("version\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if n < 8 || string(buf[:8]) != "VERSION " {
		return errUnexpected(string(buf[:n]))
	}
	return nil
}

type errUnexpected string

func (e errUnexpected) Error() string { return "unexpected answer " + string(e) }
