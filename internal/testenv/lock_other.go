//go:build !unix

package testenv

import (
	"os"
	"time"
)

// Without flock(2) the tests of different packages are not kept from each
// other; run 'go test -p 1' when a test stops a shared server.
func flock(*os.File, bool, time.Duration) error { return nil }
func funlock(*os.File) error                    { return nil }
