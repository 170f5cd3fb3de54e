package kafka

import (
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Header names of the CloudEvents Kafka protocol binding, binary content mode.
// Every context attribute but datacontenttype is a "ce_" header; extensions
// are "ce_<name>"; datacontenttype is the "content-type" header.
const (
	HeaderPrefix      = "ce_"
	HeaderID          = "ce_id"
	HeaderSource      = "ce_source"
	HeaderSpecVersion = "ce_specversion"
	HeaderType        = "ce_type"
	HeaderSubject     = "ce_subject"
	HeaderTime        = "ce_time"
	HeaderDataSchema  = "ce_dataschema"
	HeaderContentType = "content-type"
)

// ErrMalformed is matched by every error Decode returns.
var ErrMalformed = errors.New("kafka: malformed record")

// DecodeError says why a record is not a CloudEvent this package can read. It
// matches ErrMalformed, and wraps the *events.ValidationError when the record
// decoded into an invalid event.
//
// A record's header keys and values, and the member names of a structured
// record's JSON object, may be as long as the producer wants: Error quotes
// at most the first 64 bytes of the header's key or the member's name, with
// its length when it is longer, a reason (the wrapped validation error's
// too) is at most 160 bytes and its length, and no error Decode returns
// quotes more of a record than that, so that logging it cannot flood a log.
type DecodeError struct {
	Header string // the offending header's key, in full; "" when the fault is not in one header
	Member string // the offending member of a structured-mode record's JSON object, in full; "" otherwise
	Reason string
	Err    error // the validation error, if any
}

func (e *DecodeError) Error() string {
	s := "kafka: malformed record"
	if e.Header != "" {
		s += ": header " + excerpt(e.Header)
	}
	if e.Member != "" {
		s += ": structured event member " + excerpt(e.Member)
	}
	return s + ": " + e.Reason
}

// maxQuoted is how many bytes of a record's header key an error quotes.
const maxQuoted = 64

// excerpt quotes s for an error message: all of it when it is short, else
// its first maxQuoted bytes and its length.
func excerpt(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:maxQuoted]) + "... (" + strconv.Itoa(len(s)) + " bytes)"
}

// Is makes errors.Is(err, ErrMalformed) true.
func (e *DecodeError) Is(target error) bool { return target == ErrMalformed }

// Unwrap returns the validation error, if any.
func (e *DecodeError) Unwrap() error { return e.Err }

// Record encodes e as a Kafka record for topic in the CloudEvents Kafka
// binding's binary mode, the one mode this package publishes in (Decode
// reads both): the data is the value, attributes are headers, and
// the key is e.Key() (the partitionkey extension, else the subject), so one
// entity's events go to one partition and stay in order. It does not
// validate e; Publish does.
//
// The record's timestamp is left zero, for the client to stamp with the time
// it is produced: Kafka's time-based retention counts from a record's
// timestamp, and an event's own time, which ce_time carries, may be older
// than the topic's retention (an outbox relay catching up, a replay), which
// would get the event deleted before anyone read it.
func Record(topic string, e events.Event) *kgo.Record {
	r := &kgo.Record{Topic: topic, Value: e.Data}
	k := e.Key()
	// The key and the header values share one allocation, each capped so
	// that nothing appended to one can overwrite the next.
	n := len(k) + len(e.SpecVersion) + len(e.ID) + len(e.Source) + len(e.Type) + len(e.Subject) +
		len(e.DataSchema) + len(e.DataContentType) + len(rfc3339NanoUTC)
	for _, v := range e.Extensions {
		n += len(v)
	}
	buf := make([]byte, 0, n)
	cut := func(start int) []byte { return buf[start:len(buf):len(buf)] }
	if k != "" {
		buf = append(buf, k...)
		r.Key = cut(0)
	}
	h := make([]kgo.RecordHeader, 0, 8+len(e.Extensions))
	add := func(k, v string) {
		if v != "" {
			start := len(buf)
			buf = append(buf, v...)
			h = append(h, kgo.RecordHeader{Key: k, Value: cut(start)})
		}
	}
	add(HeaderSpecVersion, e.SpecVersion)
	add(HeaderID, e.ID)
	add(HeaderSource, e.Source)
	add(HeaderType, e.Type)
	add(HeaderSubject, e.Subject)
	if !e.Time.IsZero() {
		start := len(buf)
		buf = e.Time.UTC().AppendFormat(buf, time.RFC3339Nano)
		h = append(h, kgo.RecordHeader{Key: HeaderTime, Value: cut(start)})
	}
	add(HeaderDataSchema, e.DataSchema)
	add(HeaderContentType, e.DataContentType)
	for k, v := range e.Extensions {
		add(HeaderPrefix+k, v)
	}
	r.Headers = h
	return r
}

// rfc3339NanoUTC is as long as the longest time Record writes for a year
// of four digits.
const rfc3339NanoUTC = "2006-01-02T15:04:05.999999999Z"

// Decode reads a record written in either content mode of the CloudEvents
// Kafka binding back into an event and validates it. As the binding says,
// the content-type header decides the mode: a record whose content-type
// starts with application/cloudevents (in any case) is in structured mode,
// whatever its other headers, and any other record is in binary mode.
//
// In binary mode the attributes are "ce_*" headers and content-type, and the
// value is the data; other headers are ignored. A ce_datacontenttype header,
// which producers that write every attribute as a ce_ header (the
// JavaScript SDK) add, is the datacontenttype when content-type is missing,
// and must agree with content-type otherwise. A duplicated CloudEvents
// header, a missing specversion, or a time that is not RFC 3339 is an error.
//
// In structured mode the value is the whole event in the CloudEvents JSON
// event format (content-type application/cloudevents+json, optionally with
// charset=utf-8), and the record's headers are ignored. Other event formats,
// and the JSON batch format, which the binding does not allow on Kafka, are
// errors. The JSON object's members are the attributes: the context
// attributes are JSON strings (time in RFC 3339), and null means absent.
// Other members are extensions, whose JSON string, boolean or integer (32
// bits, signed) values become the strings a binary-mode header would carry
// ("v", "true", "-5"). The data is data_base64's bytes, or data's: when
// datacontenttype is absent or a JSON media type (subtype json or *+json),
// the JSON value exactly as written in the record (an explicit null is the
// data "null"), and datacontenttype becomes application/json when absent,
// as the format implies; for any other datacontenttype, data must be a JSON
// string, whose contents are the data. A value that is not one JSON object
// in UTF-8, a repeated member, a member of the wrong JSON type (an object,
// an array, a number that is not an integer), a string with an escaped
// unpaired surrogate (which no CloudEvents string holds), an empty
// extension, both data and data_base64, or a missing specversion is an
// error.
//
// In either mode an event that fails Validate is an error, and every error
// is a *DecodeError matching ErrMalformed. Publishing always uses binary
// mode (see Record).
func Decode(r *kgo.Record) (events.Event, error) {
	if ct, ok := contentType(r.Headers); ok && structured(ct) {
		return decodeStructured(string(ct), r.Value)
	}
	// The values of the headers read become strings of the event: one
	// string, holding them all, cut into each.
	var n int
	for _, h := range r.Headers {
		if ceHeader(h.Key) {
			n += len(h.Value)
		}
	}
	var all strings.Builder
	all.Grow(n)
	for _, h := range r.Headers {
		if ceHeader(h.Key) {
			all.Write(h.Value)
		}
	}
	vs := all.String()
	var e events.Event
	var seen uint8 // the context attributes read, a bit each; extensions are in e.Extensions
	const specVersionSeen, contentTypeSeen = 1, 1 << 5
	var ceContentType *string // a ce_datacontenttype header's value
	for _, h := range r.Headers {
		if !ceHeader(h.Key) {
			continue
		}
		v := vs[:len(h.Value)]
		vs = vs[len(h.Value):]
		var bit uint8 // the attribute's bit in seen; 0 for an extension
		var f *string // the attribute's field; nil for the time and extensions
		switch h.Key {
		case HeaderSpecVersion:
			bit, f = specVersionSeen, &e.SpecVersion
		case HeaderID:
			bit, f = 1<<1, &e.ID
		case HeaderSource:
			bit, f = 1<<2, &e.Source
		case HeaderType:
			bit, f = 1<<3, &e.Type
		case HeaderSubject:
			bit, f = 1<<4, &e.Subject
		case HeaderContentType:
			bit, f = contentTypeSeen, &e.DataContentType
		case HeaderDataSchema:
			bit, f = 1<<6, &e.DataSchema
		case HeaderTime:
			bit = 1 << 7
		}
		if seen&bit != 0 {
			return events.Event{}, &DecodeError{Header: h.Key, Reason: "appears more than once"}
		}
		seen |= bit
		switch {
		case f != nil:
			*f = v
		case bit != 0:
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return events.Event{}, &DecodeError{Header: h.Key, Reason: "not an RFC 3339 time"}
			}
			e.Time = t
		default:
			name := h.Key[len(HeaderPrefix):]
			if name == "datacontenttype" {
				// Not an extension: the datacontenttype, as producers
				// that write every attribute as a ce_ header (the
				// JavaScript SDK) also write it; checked below.
				if ceContentType != nil {
					return events.Event{}, &DecodeError{Header: h.Key, Reason: "appears more than once"}
				}
				ceContentType = &v
				continue
			}
			if _, dup := e.Extensions[name]; dup {
				return events.Event{}, &DecodeError{Header: h.Key, Reason: "appears more than once"}
			}
			if v == "" { // an empty extension header is not absent
				return events.Event{}, &DecodeError{Header: h.Key, Reason: "empty value"}
			}
			e.SetExtension(name, v)
		}
	}
	if seen&specVersionSeen == 0 {
		return events.Event{}, &DecodeError{Header: HeaderSpecVersion, Reason: "missing: not a CloudEvent"}
	}
	if ceContentType != nil {
		switch {
		case seen&contentTypeSeen == 0:
			e.DataContentType = *ceContentType
		case *ceContentType != e.DataContentType:
			return events.Event{}, &DecodeError{Header: HeaderPrefix + "datacontenttype", Reason: "differs from the content-type header"}
		}
	}
	if len(r.Value) > 0 {
		e.Data = r.Value
	}
	if err := e.Validate(); err != nil {
		ve := boundedValidation(err)
		return events.Event{}, &DecodeError{Header: headerOf(ve.Attribute), Reason: ve.Reason, Err: ve}
	}
	return e, nil
}

// maxReason is how long the reason of a validation error Decode returns may
// be, in bytes.
const maxReason = 160

// boundedValidation returns err's *events.ValidationError, or a copy whose
// reason is cut to maxReason bytes and its length when longer: Validate's
// reason may quote a whole value (url.Parse's errors do, for a source or
// dataschema), and a record's values may be megabytes long.
func boundedValidation(err error) *events.ValidationError {
	var ve *events.ValidationError
	errors.As(err, &ve)
	if len(ve.Reason) <= maxReason {
		return ve
	}
	return &events.ValidationError{Attribute: ve.Attribute,
		Reason: strings.ToValidUTF8(ve.Reason[:maxReason], "") + "... (" + strconv.Itoa(len(ve.Reason)) + " bytes)"}
}

// structuredPrefix starts the content-type of a record in the binding's
// structured content mode, matched case-insensitively.
const structuredPrefix = "application/cloudevents"

// structured reports whether a record with content-type ct is in the
// binding's structured content mode, whatever its other headers.
func structured[T string | []byte](ct T) bool {
	return len(ct) >= len(structuredPrefix) && strings.EqualFold(string(ct[:len(structuredPrefix)]), structuredPrefix)
}

// contentType returns the value of r's one content-type header, and false
// when it has none or several.
func contentType(hs []kgo.RecordHeader) ([]byte, bool) {
	var ct []byte
	n := 0
	for _, h := range hs {
		if h.Key == HeaderContentType {
			ct = h.Value
			n++
		}
	}
	return ct, n == 1
}

// ceHeader reports whether Decode reads the header named k.
func ceHeader(k string) bool {
	return k == HeaderContentType || strings.HasPrefix(k, HeaderPrefix)
}

func headerOf(attr string) string {
	if attr == "datacontenttype" {
		return HeaderContentType
	}
	return HeaderPrefix + attr
}
