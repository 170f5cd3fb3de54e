// Package eventstest is the conformance suite every events.Publisher and
// events.Subscriber pair runs.
//
// Every adapter (Kafka today; IBM MQ and the outbox relay later) makes the
// same promises to a service whose instances publish and consume at once and
// die at any time: validated events, all-or-nothing refusal of invalid ones,
// at-least-once delivery, redelivery of what a dead instance did not finish,
// sharing within a consumer group, and per-key order where the backend has
// it. Stating those promises once, as tests, keeps the adapters honest and
// alike, as Watermill's pubsub tests and the Go CDK's drivertest do.
//
// An adapter's whole test is a feature list and a constructor:
//
//	func TestConformance(t *testing.T) {
//		eventstest.Run(t, eventstest.Features{OrderingPerKey: true, ...}, newPair)
//	}
//
// Each test uses its own topic (testenv.Name) and waits by signals, never by
// sleeping. Under -short the event counts are divided by ten. Stress is a
// longer run with several publishers and a group of three instances
// restarted at random.
package eventstest
