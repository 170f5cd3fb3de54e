package activetest_test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/activekit/activekit/activetest"
)

// upperServer stands in for a backend (Redis, a broker...): it answers
// each line with the line in upper case. It stops in t's cleanup.
func upperServer(t *exampleT) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				s := bufio.NewScanner(c)
				for s.Scan() {
					fmt.Fprintln(c, strings.ToUpper(s.Text()))
				}
				_ = c.Close()
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// A client talks to its backend through a Proxy; the test partitions the
// path (the client waits until its deadline; what it sent is held), heals
// it (the held request arrives, late), then cuts it (the client fails at
// once). In a fleet, give each instance its own proxy and fault one.
func ExampleProxy() {
	t := &exampleT{}
	defer t.done()

	p := activetest.NewProxy(t, upperServer(t))

	conn, err := net.Dial("tcp", p.Addr()) // the client dials the proxy, not the backend
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	ask := func(q string) {
		fmt.Fprintln(conn, q)
		_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		answer, err := r.ReadString('\n')
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			fmt.Printf("%s: timed out\n", q)
		case err != nil:
			fmt.Printf("%s: connection failed\n", q)
		default:
			fmt.Printf("%s: %s", q, answer)
		}
	}

	ask("ping")
	p.Blackhole()
	ask("partitioned")
	p.Heal()
	_ = conn.SetReadDeadline(time.Time{})
	late, _ := r.ReadString('\n')
	fmt.Print("after heal, late: ", late)
	ask("healed")
	p.Cut()
	ask("cut")
	st := p.Stats()
	fmt.Printf("accepted %d, cut %d, open %d\n", st.Accepted, st.Cut, st.Open)
	// Output:
	// ping: PING
	// partitioned: timed out
	// after heal, late: PARTITIONED
	// healed: HEALED
	// cut: connection failed
	// accepted 1, cut 1, open 0
}
