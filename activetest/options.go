package activetest

import "fmt"

// Policy is how the balancer picks an instance for a request.
type Policy int

const (
	// RoundRobin sends each request to the next live instance in turn.
	RoundRobin Policy = iota
	// Random sends each request to a live instance picked uniformly at
	// random.
	Random
)

func (p Policy) String() string {
	switch p {
	case RoundRobin:
		return "round-robin"
	case Random:
		return "random"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// DefaultConnectRetries is how many other instances the balancer tries,
// by default, after a connection to the one it picked fails to open.
const DefaultConnectRetries = 2

// An Option configures a Fleet.
type Option interface{ apply(*options) }

type options struct {
	policy         Policy
	connectRetries int
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithPolicy sets how the balancer picks an instance (default RoundRobin).
func WithPolicy(p Policy) Option { return optionFunc(func(o *options) { o.policy = p }) }

// WithConnectRetries sets how many other live instances the balancer tries
// when the connection to the instance it picked fails to open (default
// DefaultConnectRetries). Only requests no handler took are retried,
// whatever their method: those no byte of which was written to an instance,
// and those an instance being drained closed unread (Fleet.Drain); 0 turns
// retries off, so that a request that picked an instance killed an instant
// before reaches the client as a 503.
func WithConnectRetries(n int) Option {
	return optionFunc(func(o *options) { o.connectRetries = n })
}

func (o options) validate() error {
	if o.policy != RoundRobin && o.policy != Random {
		return fmt.Errorf("activetest: unknown %v", o.policy)
	}
	if o.connectRetries < 0 {
		return fmt.Errorf("activetest: negative connect retries %d", o.connectRetries)
	}
	return nil
}
