//go:build race

package main

// raceEnabled says the test binary was built with -race, so the service
// binary the rolling-restart test builds is too: it reuses the compiled
// dependencies of the test, and races under load fail the test.
const raceEnabled = true
