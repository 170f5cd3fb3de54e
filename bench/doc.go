// Package bench measures activekit against the libraries a user would pick
// instead, in the same run on the same servers.
//
// It is a module of its own, whose go.mod points back at activekit with a
// replace directive, so that users of activekit never download its rivals.
// It holds only tests and benchmarks:
//
//   - TestLostUpdates runs two instances of one application behind a
//     round-robin client, as an active-active fleet would, and counts the
//     session updates each library loses when concurrent requests of one user
//     land on both instances. activekit must lose none; the rivals' figures
//     are recorded, not judged.
//   - BenchmarkSessions times a read-only and a modifying request through
//     activekit's session middleware, alexedwards/scs with its Redis store,
//     gorilla/sessions with a Redis store, and a bare handler that makes one
//     Redis round trip (the floor).
//   - BenchmarkHTTP serves the same handlers over real HTTP (a net/http
//     server on loopback) and drives them with wrk, as a load test of a
//     service would: requests/s with what every request costs a Go service
//     whatever its session library. It needs wrk (scripts/services install
//     puts it there) and skips without it; run it with -benchtime=1x.
//     ACTIVEKIT_WRK_CONNECTIONS sets wrk's connections (by default as many
//     as BenchmarkSessions's goroutines: 8 × GOMAXPROCS) and
//     ACTIVEKIT_WRK_DURATION how long it runs (10s by default).
//
// All need a Redis server: ACTIVEKIT_REDIS_ADDR (eval "$(../scripts/services
// env)"). Without it they skip, unless ACTIVEKIT_REQUIRE_INTEGRATION=1, when
// they fail. Results and the commands that produced them are in
// docs/benchmarks.md.
package bench
