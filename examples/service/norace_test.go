//go:build !race

package main

// raceEnabled says the test binary was built with -race; see race_test.go.
const raceEnabled = false
