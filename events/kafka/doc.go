// Package kafka is the events adapter for Apache Kafka, on franz-go.
//
// # Why it exists
//
// In an active-active service every instance publishes and every instance
// consumes, and any of them can die between two steps. This adapter makes the
// Kafka half of the events promise (published at least once with a stable
// ID; acknowledged only after the effect) hold through those deaths:
//
//   - Publisher uses the idempotent producer with acks=all, franz-go's
//     defaults, and refuses a weaker client unless told to
//     (ErrWeakDurability): a resend after a lost acknowledgement or a leader
//     change never duplicates an event in the log, and an acknowledged event
//     is on every in-sync replica. An outcome the client cannot know (the
//     context ended after the records were sent) is events.ErrUncertain,
//     not a failure.
//   - Records are published in the CloudEvents Kafka binding's binary mode
//     (ce_ headers, content-type), so any Kafka consumer can read them, and
//     are keyed by the partitionkey extension or the subject, so one
//     entity's events stay in one partition, in order. Publishing is always
//     in binary mode.
//   - Decode, and so the Subscriber, reads both of the binding's content
//     modes: binary, and structured in the CloudEvents JSON event format
//     (content-type application/cloudevents+json), which other producers of
//     a fleet (the Java, .NET and Python SDKs, Debezium, Knative) often
//     write. The content-type header decides the mode, as the binding says.
//     A record in neither (another structured format, the JSON batch format,
//     which the binding does not allow on Kafka, or an invalid event) is
//     dead-lettered as malformed.
//   - Subscriber joins a consumer group (cooperative-sticky), handles each
//     partition in order and partitions concurrently, commits an offset only
//     after the handler succeeded and never across a rebalance, retries a
//     failing record in place, and dead-letters what cannot succeed (with
//     its key, headers, reason and attempt count) instead of blocking the
//     partition or crashing. An error marked events.Unavailable (the dedupe
//     store, or another dependency, is down) is the exception: nothing is
//     wrong with the event, so it is retried in place until the dependency
//     is back, never dead-lettered and never counted as an attempt, and an
//     outage delays the partition instead of emptying it into the
//     dead-letter topic.
//   - Preflight reports topics that could lose acknowledged events
//     (replication factor under 3, min.insync.replicas under 2, unclean
//     leader election), and CreateTopics makes them durable.
//
// Delivery is at least once: an instance that dies after a handler's effect
// and before its commit leaves the event to be delivered again. For an
// exactly-once effect, set SubscriberConfig.Batch to a dedupe.Deduper (two
// round trips to the dedupe store per partition per poll), or wrap the
// handler with dedupe.Middleware (two per event).
package kafka
