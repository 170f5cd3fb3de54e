package session

import "time"

// WithClock sets the Manager's clock (time.Now by default), for tests that
// move it with a store's clock.
func WithClock(now func() time.Time) Option {
	return optionFunc(func(c *config) { c.now = now })
}
