package events

import (
	"maps"
	"time"

	"github.com/google/uuid"
)

// SpecVersion is the CloudEvents specification version this package speaks.
const SpecVersion = "1.0"

// Names of the extension attributes this package gives a meaning to.
const (
	// ExtPartitionKey is the CloudEvents partitioning extension: events
	// with the same key are kept in order by adapters that order per key.
	ExtPartitionKey = "partitionkey"
	// ExtTraceParent and ExtTraceState are the CloudEvents distributed
	// tracing extension: the W3C trace context of the producer.
	ExtTraceParent = "traceparent"
	ExtTraceState  = "tracestate"
	// ExtDeadLetterReason and ExtDeadLetterAttempts are set by the
	// DeadLetter middleware on the copy it publishes.
	ExtDeadLetterReason   = "deadletterreason"
	ExtDeadLetterAttempts = "deadletterattempts"
)

// Event is a CloudEvents 1.0 event: the context attributes, the data, and
// extension attributes.
//
// An empty string means an optional attribute is absent, and a zero Time means
// time is absent. Extension values are strings, which is how every binding
// this package speaks (Kafka headers, MQ properties) carries them.
//
// Event is a value; copying it shares the Extensions map and the Data slice,
// so use Clone before changing either on a copy.
type Event struct {
	// ID identifies the event; with Source it is unique, and a
	// redelivery or republication of the same event keeps it. New
	// assigns a UUIDv7, which sorts by creation time.
	ID string
	// Source identifies the context in which the event happened, as a
	// URI-reference, for example "/orders-service" or
	// "urn:activekit:orders".
	Source string
	// SpecVersion is "1.0". New sets it.
	SpecVersion string
	// Type describes the kind of event, for example
	// "com.example.order.created".
	Type string

	// Subject is the entity the event is about within Source, for
	// example an order ID. Adapters that order per key use it as the key
	// when the partitionkey extension is absent.
	Subject string
	// Time is when the occurrence happened.
	Time time.Time
	// DataContentType is the media type of Data (RFC 2046), for example
	// "application/json".
	DataContentType string
	// DataSchema is an absolute URI of the schema Data adheres to.
	DataSchema string

	// Data is the event payload, opaque to this package.
	Data []byte

	// Extensions holds extension attributes by name. Names are lowercase
	// ASCII letters and digits, at most 20 characters.
	Extensions map[string]string
}

// New returns an event with a fresh UUIDv7 ID, SpecVersion "1.0", the given
// source and type, and Time set to now (UTC, truncated to microseconds, which
// every binding carries exactly).
func New(source, typ string, data []byte) Event {
	return Event{
		ID:          NewID(),
		Source:      source,
		SpecVersion: SpecVersion,
		Type:        typ,
		Time:        time.Now().UTC().Truncate(time.Microsecond),
		Data:        data,
	}
}

// NewID returns a new UUIDv7 as a string: unique, and sortable by creation
// time, so IDs make good keys for a dedupe store and for logs.
func NewID() string {
	// uuid.NewV7 fails only when crypto/rand fails, which since Go 1.24
	// never returns an error (the runtime aborts instead).
	return uuid.Must(uuid.NewV7()).String()
}

// Key returns the key that keeps one entity's events in order: the
// partitionkey extension when set, else Subject. It is empty when neither is
// set, and then an adapter may spread the events over partitions.
func (e Event) Key() string {
	if k := e.Extensions[ExtPartitionKey]; k != "" {
		return k
	}
	return e.Subject
}

// Extension returns the value of the extension attribute name, or "".
func (e Event) Extension(name string) string { return e.Extensions[name] }

// SetExtension sets the extension attribute name to value, allocating the
// map when needed. An empty value removes the attribute. The name is checked
// by Validate, not here.
func (e *Event) SetExtension(name, value string) {
	if value == "" {
		delete(e.Extensions, name)
		return
	}
	if e.Extensions == nil {
		e.Extensions = make(map[string]string, 2)
	}
	e.Extensions[name] = value
}

// Clone returns a deep copy of e: its Data and Extensions are its own.
func (e Event) Clone() Event {
	c := e
	if e.Data != nil {
		c.Data = append([]byte(nil), e.Data...)
	}
	c.Extensions = maps.Clone(e.Extensions)
	return c
}
