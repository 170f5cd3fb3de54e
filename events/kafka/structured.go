package kafka

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/activekit/activekit/events"
)

// Media types of the CloudEvents structured content mode.
const (
	// structuredJSON is the JSON event format's media type, the one
	// structured format Decode reads.
	structuredJSON = "application/cloudevents+json"
	// structuredBatchJSON is the JSON batch format's, which the Kafka
	// binding does not allow: a record carries one event.
	structuredBatchJSON = "application/cloudevents-batch+json"
)

// decodeStructured reads value, the value of a record in the Kafka binding's
// structured content mode with content-type ct, as an event in the
// CloudEvents JSON event format, and validates it.
func decodeStructured(ct string, value []byte) (events.Event, error) {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return events.Event{}, &DecodeError{Header: HeaderContentType, Reason: "structured content mode: not a media type: " + err.Error()}
	}
	switch mt {
	case structuredJSON:
	case structuredBatchJSON:
		return events.Event{}, &DecodeError{Header: HeaderContentType,
			Reason: "the JSON batch format (" + structuredBatchJSON + ") is not allowed on Kafka: the binding carries one event per record"}
	default:
		return events.Event{}, &DecodeError{Header: HeaderContentType,
			Reason: "structured content mode in event format " + excerpt(mt) + " is not supported, only " + structuredJSON}
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return events.Event{}, &DecodeError{Header: HeaderContentType, Reason: "charset " + excerpt(cs) + " is not utf-8, which JSON is"}
	}
	if !utf8.Valid(value) {
		return events.Event{}, &DecodeError{Reason: "structured content mode: the JSON value is not valid UTF-8"}
	}

	dec := json.NewDecoder(bytes.NewReader(value))
	notJSON := func(err error) error {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return &DecodeError{Reason: "structured content mode: the value is not a JSON object: " + err.Error() +
			" (at byte " + strconv.FormatInt(dec.InputOffset(), 10) + ")"}
	}
	if tok, err := dec.Token(); err != nil {
		return events.Event{}, notJSON(err)
	} else if tok != json.Delim('{') {
		return events.Event{}, &DecodeError{Reason: "structured content mode: the value is a JSON " + kindOf(tok) + ", not an object"}
	}

	var e events.Event
	var data, data64 json.RawMessage // the data and data_base64 members, nil when absent
	seen := make(map[string]struct{}, 8)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return events.Event{}, notJSON(err)
		}
		name, _ := tok.(string) // a key, in an object
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return events.Event{}, notJSON(err)
		}
		if _, dup := seen[name]; dup {
			return events.Event{}, &DecodeError{Member: name, Reason: "appears more than once"}
		}
		seen[name] = struct{}{}
		var f *string // the attribute's field, for a String-typed attribute
		switch name {
		case "specversion":
			f = &e.SpecVersion
		case "id":
			f = &e.ID
		case "source":
			f = &e.Source
		case "type":
			f = &e.Type
		case "subject":
			f = &e.Subject
		case "datacontenttype":
			f = &e.DataContentType
		case "dataschema":
			f = &e.DataSchema
		case "data":
			data = raw
			continue
		case "data_base64":
			if raw[0] != 'n' { // null is absent
				data64 = raw
			}
			continue
		case "time":
			s, err := stringMember(name, raw)
			if err != nil {
				return events.Event{}, err
			}
			if s == "" {
				continue
			}
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return events.Event{}, &DecodeError{Member: name, Reason: "not an RFC 3339 time"}
			}
			e.Time = t
			continue
		default:
			v, err := extensionValue(name, raw)
			if err != nil {
				return events.Event{}, err
			}
			if v != "" {
				e.SetExtension(name, v)
			}
			continue
		}
		s, err := stringMember(name, raw)
		if err != nil {
			return events.Event{}, err
		}
		*f = s
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return events.Event{}, notJSON(err)
	}
	if tok, err := dec.Token(); err != io.EOF {
		if err != nil {
			return events.Event{}, notJSON(err)
		}
		return events.Event{}, &DecodeError{Reason: "structured content mode: a JSON " + kindOf(tok) + " after the event's object"}
	}

	if e.SpecVersion == "" {
		return events.Event{}, &DecodeError{Member: "specversion", Reason: "missing: not a CloudEvent"}
	}
	if err := e.Validate(); err != nil {
		ve := boundedValidation(err)
		return events.Event{}, &DecodeError{Member: ve.Attribute, Reason: ve.Reason, Err: ve}
	}
	switch {
	case data != nil && data64 != nil:
		return events.Event{}, &DecodeError{Member: "data_base64", Reason: "present with data: an event has one or the other"}
	case data64 != nil:
		s, err := stringMember("data_base64", data64)
		if err != nil {
			return events.Event{}, err
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return events.Event{}, &DecodeError{Member: "data_base64", Reason: "not base64 (RFC 4648, with padding)"}
		}
		if len(b) > 0 {
			e.Data = b
		}
	case data != nil && (e.DataContentType == "" || jsonMediaType(e.DataContentType)):
		// The JSON value is the data, as it is written.
		e.Data = data
		if e.DataContentType == "" {
			// What the JSON format implies, made explicit for the
			// bindings the event may be sent on next.
			e.DataContentType = "application/json"
		}
	case data != nil:
		switch data[0] {
		case '"':
			s, err := jsonString("data", data)
			if err != nil {
				return events.Event{}, err
			}
			if s != "" {
				e.Data = []byte(s)
			}
		case 'n': // null: no data
		default:
			return events.Event{}, &DecodeError{Member: "data", Reason: "a JSON " + kindOf(data) + " with datacontenttype " +
				excerpt(e.DataContentType) + ", which is not JSON: want a string, or data_base64"}
		}
	}
	return e, nil
}

// stringMember returns the string value of the member name, "" for null.
func stringMember(name string, raw json.RawMessage) (string, error) {
	switch raw[0] {
	case '"':
		return jsonString(name, raw)
	case 'n':
		return "", nil
	}
	return "", &DecodeError{Member: name, Reason: "a JSON " + kindOf(raw) + ", want a string"}
}

// jsonString returns the contents of raw, a JSON string that is the value
// of the member name. An escaped surrogate that is not half of a pair is an
// error: encoding/json would make it U+FFFD, changing the value, and a
// CloudEvents string has no surrogates.
func jsonString(name string, raw json.RawMessage) (string, error) {
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		i++ // the escaped character; the decoder has checked the escapes
		if raw[i] != 'u' {
			continue
		}
		r := hex4(raw[i+1:])
		i += 4
		if r < 0xd800 || r > 0xdfff {
			continue
		}
		if r >= 0xdc00 || i+6 >= len(raw) || raw[i+1] != '\\' || raw[i+2] != 'u' {
			return "", &DecodeError{Member: name, Reason: "a string with an unpaired surrogate (\\u" + string(raw[i-3:i+1]) + ")"}
		}
		if lo := hex4(raw[i+3:]); lo < 0xdc00 || lo > 0xdfff {
			return "", &DecodeError{Member: name, Reason: "a string with an unpaired surrogate (\\u" + string(raw[i-3:i+1]) + ")"}
		}
		i += 6
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil { // cannot fail: the decoder scanned raw
		return "", &DecodeError{Member: name, Reason: "not a JSON string"}
	}
	return s, nil
}

// hex4 returns the value of the four hexadecimal digits b starts with.
func hex4(b []byte) rune {
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

// extensionValue returns the canonical string form of an extension
// attribute's value: a string as it is, a boolean as "true" or "false", an
// integer in decimal; "" for null, which is absent.
func extensionValue(name string, raw json.RawMessage) (string, error) {
	switch raw[0] {
	case '"':
		s, err := jsonString(name, raw)
		if err != nil {
			return "", err
		}
		if s == "" {
			return "", &DecodeError{Member: name, Reason: "empty value"}
		}
		return s, nil
	case 'n':
		return "", nil
	case 't':
		return "true", nil
	case 'f':
		return "false", nil
	case '{', '[':
		return "", &DecodeError{Member: name, Reason: "a JSON " + kindOf(raw) + ": extension values are strings, integers or booleans"}
	}
	// A number. The JSON format allows only an integer component, and the
	// CloudEvents Integer type is 32 bits, signed.
	if bytes.ContainsAny(raw, ".eE") {
		return "", &DecodeError{Member: name, Reason: "a JSON number that is not an integer: extension values are strings, integers or booleans"}
	}
	n, err := strconv.ParseInt(string(raw), 10, 32)
	if err != nil {
		return "", &DecodeError{Member: name, Reason: "an integer outside the CloudEvents Integer range (32 bits, signed)"}
	}
	return strconv.FormatInt(n, 10), nil
}

// kindOf names the kind of JSON value raw (a json.RawMessage) or tok (a
// json.Token) is.
func kindOf(v any) string {
	switch v := v.(type) {
	case json.RawMessage:
		switch v[0] {
		case '"':
			return "string"
		case '{':
			return "object"
		case '[':
			return "array"
		case 't', 'f':
			return "boolean"
		case 'n':
			return "null"
		}
		return "number"
	case json.Delim:
		if v == '[' {
			return "array"
		}
		return "delimiter"
	case string:
		return "string"
	case bool:
		return "boolean"
	case nil:
		return "null"
	}
	return "number"
}

// jsonMediaType reports whether the media type ct declares JSON data: its
// subtype is json or ends with +json, as the JSON event format says.
func jsonMediaType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	_, sub, _ := strings.Cut(mt, "/")
	return sub == "json" || strings.HasSuffix(sub, "+json")
}
