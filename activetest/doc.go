// Package activetest runs a fleet of in-process instances of a service behind
// a balancer, with faults, so that a service author can prove in go test that
// the service survives the loss of an instance.
//
// # Why
//
// In an active-active fleet every instance takes traffic at once behind a load
// balancer, and any of them can die at any moment: a crash, an OOM kill, a
// node drained, a rolling update. The claim "this service keeps nothing a
// user needs in the instance" is easy to make and easy to break (a cache
// that is really the only copy, a session in memory, a counter kept until
// the next flush). activetest turns the claim into a test: start n
// instances, send concurrent traffic through a balancer, kill one in the
// middle, bring a replacement up, and assert that no acknowledged write was
// lost and no user lost their session.
//
// # What a fleet is
//
// [NewFleet] calls newInstance(i) for each of n slots and serves each
// handler with its own http.Server on its own loopback listener
// (127.0.0.1:0). In front of them a real loopback reverse proxy ([Fleet.URL],
// [Fleet.Client]) spreads requests over the live instances, round-robin or at
// random ([WithPolicy]), as an L7 load balancer would: keep-alive connections
// to each instance, the Host header passed through, a 503 when no instance is
// live, a 502 when an instance fails a request it was sent. Each response
// carries the slot that served it in [InstanceHeader], and [Fleet.Served]
// counts requests per slot.
//
// By default the balancer knows at once that an instance was killed or
// stopped through the fleet (as if the orchestrator removed its endpoint as
// it acted), so it sends it no new request, and it does not probe
// readiness. With [WithReadinessProbe] it knows only what it probes, as
// HAProxy's option httpchk, Envoy's active health checks or a Kubernetes
// readinessProbe do: it requests each instance's readiness path every
// interval, takes an instance out of the rotation after a number of
// failed probes in a row and back in after a number of passed ones, and
// sends a new instance nothing before its readiness passes (see Readiness
// below). A connection that
// fails to open (a request picked just before the kill, or a [Fault] that
// refuses connections) is retried on another instance, like HAProxy's
// "retry-on conn-failure" with redispatch or Envoy's "connect-failure"
// retry policy: the request never reached the instance, so retrying it is
// safe whatever its method ([WithConnectRetries], default
// [DefaultConnectRetries]; 0 turns it off). A request whose headers were
// written to an instance is never sent again, even a GET on a reused
// connection (which Go's http.Transport alone would replay): once sent, the
// instance may have acted on it, and the client sees the failure, as behind
// a real balancer. The one exception is a request, with its body, that an
// instance being drained closed the connection of without handing it to a
// handler (see Drain below).
//
// # Faults
//
// Every fault is a method, safe to call while traffic flows:
//
//   - [Fleet.Kill] is a process dying: the listener and every open
//     connection (hijacked ones included) close at once, even during a
//     Drain; requests in flight fail (the client gets a
//     502) and the balancer stops sending to the instance (with probing,
//     once its probes fail).
//   - [Fleet.Drain] is a stop done right: the instance leaves the balancer,
//     then http.Server.Shutdown lets the requests in flight finish. A
//     request the balancer had already sent on a keep-alive connection
//     that the server closed, idle, without reading it goes to another
//     instance: a real balancer stops routing before the server stops (the
//     drain delay), so it never meets that race. A request the instance's
//     handler took is never sent elsewhere, even if its answer was then
//     lost (a reset fault, an aborted handler): the client gets a 502.
//     With probing, Drain is only the shutdown, the balancer stops routing
//     when the probes say so, and that race is the service's to avoid
//     with its drain delay (see Readiness).
//   - [Fleet.Restart] starts a replacement from newInstance(i) on a new
//     listener, as a new process would come up, and the balancer uses it
//     (with probing, once its readiness passes).
//   - [Fleet.SetFault] degrades the network path from the balancer to one
//     instance: added latency, refused connections, or connections reset as
//     the response starts to arrive (the instance did the work; the client
//     never hears of it).
//
// # Backend faults
//
// The other half of active-active failure is an instance that stays up
// and loses its path to a backend while the rest of the fleet keeps
// theirs. [NewProxy] starts a TCP proxy a test puts between one instance
// and one backend (Redis, Memcached, MongoDB, Consul, a Kafka broker): the
// instance's client dials [Proxy.Addr], and the test cuts the path
// ([Proxy.Cut]: connections reset, commands fail fast), partitions it
// ([Proxy.Blackhole]: nothing passes, clients hang until their timeouts;
// or the replies alone are lost, so writes run and their clients time out),
// slows it ([Proxy.SetLatency], per direction) and heals it
// ([Proxy.Heal]), at run time, while traffic flows. A proxy per slot
// (newInstance(i) uses proxies[i].Addr()) partitions one instance alone
// and outlives its Restarts; [Proxy.Stats] counts connections and bytes
// for assertions. examples/service's backendfault_test.go partitions one
// instance of a fleet from Redis under load.
//
// # Readiness
//
// A service proves its drain sequence (readiness fails, the drain delay
// passes while requests are still served, then the server shuts down and
// the requests in flight finish: health.Lifecycle) only behind a balancer
// that reacts to readiness. With [WithReadinessProbe], Kill and Drain no
// longer take the instance out of the rotation: its probes do, once they
// fail. A test then drains an instance as its process would on SIGTERM:
// fail the instance's readiness (health.Registry.MarkDraining), wait the
// drain delay, then call Drain, which is the shutdown. Requests the
// balancer sends to an instance whose listener closed before its probes
// failed meet a closed port (retried on another instance, or a 503 with
// WithConnectRetries(0), as behind a Kubernetes Service), and one sent on
// a connection the instance closed fails with a 502: a drain that shuts
// down at once is seen to lose requests, one that fails its readiness
// first and waits long enough is seen to lose none. Probes are not load:
// [Fleet.Served] and the load's [Report] do not count them.
//
// # Load
//
// [Fleet.Run] and [Fleet.Start] run concurrent workers, each one user with
// its own cookie jar, until stopped, and count calls that succeeded, failed
// (by error text) and were cut by the stop ([Report]); [Load.WaitOK] waits
// for traffic to have flowed. A test then reads: start the load, wait for
// some successes, kill an instance, wait for more, restart it, stop the
// load, and assert that every acknowledged update is there (see
// examples/service's fleet_test.go for a whole one, against Redis).
//
// # What it proves, and what it does not
//
// All instances share one process, one heap and one clock. A fleet proves
// properties of the state a service keeps outside the instance (in Redis,
// MongoDB, Kafka...) and of how the service and its clients behave when an
// instance vanishes or is replaced: sessions that survive, updates that are
// not lost, requests that fail loudly rather than silently. It proves
// nothing about memory isolation (package-level variables are shared by
// every instance, so state kept in them survives a Kill here and would not
// in production), about machine or zone loss, about your real load
// balancer's timings (the probing balancer has the thresholds you give it,
// not your balancer's, nor its endpoint propagation delays), or about
// start-up and shut-down of the real binary (signals, the lifecycle's own
// timers: test those against the process, as examples/service's rolling
// restart test does).
//
// A killed instance's handlers are goroutines of this process: Kill cuts
// their connections and cancels their request contexts, but a handler that
// ignores its context runs on, and a write it already sent to a backend
// lands, as a write sent just before a real crash would. Assertions must
// therefore allow a failed request to have taken effect: every update that
// was acknowledged must be there, and an update that failed may or may not
// be.
//
// # Goroutines
//
// NewFleet starts, per instance, the goroutine serving it, and one serving
// the balancer; with WithReadinessProbe, each instance has one more that
// probes it, from its start until it is down and out of the rotation (or
// replaced); Kill and a Drain that times out start one per instance that
// waits for its handlers to return before closing it; Start starts one per
// worker, ended by Load.Stop or the test's cleanup. All of them end in the
// fleet's t.Cleanup, which waits for every handler to return (it fails the
// test after 10s), then closes each handler that implements io.Closer. A
// Proxy starts one goroutine accepting and up to four per connection, all
// ended in its own t.Cleanup, whatever fault holds them. A test whose
// TestMain runs goleak sees none left.
package activetest
