package kafka_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/eventstest"
	"github.com/activekit/activekit/events/kafka"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestRecordDecodeRoundTrip(t *testing.T) {
	e := events.New("urn:x", "t", []byte{0, 1, 2})
	e.Subject = "s"
	e.DataContentType = "application/octet-stream"
	e.DataSchema = "https://example.com/s"
	e.Time = time.Date(2026, 1, 1, 0, 0, 0, 1, time.FixedZone("x", 3600))
	e.SetExtension("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	r := kafka.Record("topic", e)
	if r.Topic != "topic" || string(r.Key) != "s" {
		t.Fatalf("record topic %q key %q", r.Topic, r.Key)
	}
	got, err := kafka.Decode(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := eventstest.Equal(e, got); err != nil {
		t.Fatal(err)
	}
}

func TestDecodeErrors(t *testing.T) {
	base := func() []kgo.RecordHeader {
		return []kgo.RecordHeader{{Key: "ce_specversion", Value: []byte("1.0")}, {Key: "ce_id", Value: []byte("1")},
			{Key: "ce_source", Value: []byte("/s")}, {Key: "ce_type", Value: []byte("t")}}
	}
	tests := []struct {
		name    string
		headers []kgo.RecordHeader
		header  string
	}{
		{"no headers", nil, "ce_specversion"},
		{"missing id", base()[:1], "ce_id"},
		{"wrong specversion", append(base()[1:], kgo.RecordHeader{Key: "ce_specversion", Value: []byte("0.3")}), "ce_specversion"},
		{"duplicate type", append(base(), kgo.RecordHeader{Key: "ce_type", Value: []byte("u")}), "ce_type"},
		{"bad time", append(base(), kgo.RecordHeader{Key: "ce_time", Value: []byte("2026-01-01")}), "ce_time"},
		{"empty extension", append(base(), kgo.RecordHeader{Key: "ce_ext", Value: nil}), "ce_ext"},
		{"long extension name", append(base(), kgo.RecordHeader{Key: "ce_" + strings.Repeat("a", 21), Value: []byte("v")}), "ce_" + strings.Repeat("a", 21)},
		{"bad content type", append(base(), kgo.RecordHeader{Key: "content-type", Value: []byte("json")}), "content-type"},
		// A ce_datacontenttype header (see TestDecodeCEDataContentType)
		// that contradicts content-type, or appears twice.
		{"ce_datacontenttype against content-type", append(base(), kgo.RecordHeader{Key: "content-type", Value: []byte("text/plain")}, kgo.RecordHeader{Key: "ce_datacontenttype", Value: []byte("application/json")}), "ce_datacontenttype"},
		{"ce_datacontenttype twice", append(base(), kgo.RecordHeader{Key: "ce_datacontenttype", Value: []byte("text/plain")}, kgo.RecordHeader{Key: "ce_datacontenttype", Value: []byte("text/plain")}), "ce_datacontenttype"},
		// The binding matches the CloudEvents media type case-insensitively,
		// and a structured record may carry the binary mode's headers too:
		// its value is then the envelope, not the event's data, and a
		// structured format Decode does not read is refused.
		{"structured batch mode", []kgo.RecordHeader{{Key: "content-type", Value: []byte("application/cloudevents-batch+json")}}, "content-type"},
		{"structured batch mode, other case", []kgo.RecordHeader{{Key: "content-type", Value: []byte("Application/CloudEvents-Batch+JSON")}}, "content-type"},
		{"structured mode in another format with ce_ headers", append(base(), kgo.RecordHeader{Key: "content-type", Value: []byte("application/cloudevents+avro")}), "content-type"},
		{"structured mode with ce_ headers, no value", append(base(), kgo.RecordHeader{Key: "content-type", Value: []byte("application/cloudevents+json; charset=UTF-8")}), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := kafka.Decode(&kgo.Record{Headers: tt.headers})
			var de *kafka.DecodeError
			if !errors.Is(err, kafka.ErrMalformed) || !errors.As(err, &de) || de.Header != tt.header {
				t.Fatalf("Decode: %v, want a DecodeError on %s", err, tt.header)
			}
		})
	}
	// Other headers are ignored.
	if _, err := kafka.Decode(&kgo.Record{Headers: append(base(), kgo.RecordHeader{Key: "traceparent", Value: []byte("\xff")})}); err != nil {
		t.Fatalf("a non-CloudEvents header was read: %v", err)
	}
}

// FuzzDecode feeds arbitrary headers and values to Decode, in binary and in
// structured mode: it must never panic, and what it accepts must be a valid
// event that survives a round trip through Record (binary mode).
func FuzzDecode(f *testing.F) {
	f.Add("ce_specversion=1.0\nce_id=1\nce_source=/s\nce_type=t", []byte("data"), []byte("key"))
	f.Add("ce_specversion=1.0\nce_id=1\nce_source=/s\nce_type=t\nce_time=2026-01-01T00:00:00Z\ncontent-type=application/json\nce_ext=v", []byte(`{}`), []byte(nil))
	f.Add("content-type=application/cloudevents+json", []byte(`{"specversion":"1.0"}`), []byte(nil))
	// Structured mode.
	f.Add("content-type=application/cloudevents+json; charset=utf-8", []byte(`{"specversion":"1.0","id":"1","source":"/s","type":"t",`+
		`"subject":"s","time":"2026-01-01T00:00:00.5+01:00","dataschema":"https://x/s","ext":"v","n":-5,"b":true,"z":null,`+
		`"datacontenttype":"application/json","data":{"a":[1,"x",null]}}`), []byte("k"))
	f.Add("ce_id=2\ncontent-type=Application/CloudEvents+JSON", []byte(`{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"hi"}`), []byte(nil))
	f.Add("content-type=application/cloudevents+json", []byte(`{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"AAH/"}`), []byte(nil))
	f.Add("content-type=application/cloudevents+json", []byte(`{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"x","data_base64":"eA==","id":"2"}`), []byte(nil))
	f.Add("content-type=application/cloudevents+json", []byte(`{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":{"a":1},"n":1.5,"m":2147483648}`), []byte(nil))
	f.Add("content-type=application/cloudevents+json", []byte(`{"specversion":"1.0","id":"1","source":"/s","type":"t","data":[[[[[[`), []byte(nil))
	f.Add("content-type=application/cloudevents-batch+json", []byte(`[{"specversion":"1.0","id":"1","source":"/s","type":"t"}]`), []byte(nil))
	f.Add("content-type=application/cloudevents+json", []byte("{\"specversion\":\"1.0\",\"id\":\"\xff\"} trailing"), []byte(nil))
	f.Add("ce_specversion=1.0\nce_id=1\nce_source=:"+strings.Repeat("a", 500)+"\nce_type=t", []byte(nil), []byte(nil))
	f.Add("ce_specversion=1.0\nce_specversion=1.0", []byte(nil), []byte("k"))
	f.Add("ce_specversion=1.0\nce_id=1\nce_source=/s\nce_type=t\nce_time=9999-12-31T23:59:59-05:00", []byte(nil), []byte(nil))
	f.Add("ce_specversion=1.0\nce_id=\xff\nce_source=a b\nce_type=t\nce_X=1", []byte(nil), []byte(nil))
	f.Fuzz(func(t *testing.T, headers string, value, key []byte) {
		r := &kgo.Record{Key: key, Value: value}
		for _, line := range strings.Split(headers, "\n") {
			k, v, _ := strings.Cut(line, "=")
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
		}
		e, err := kafka.Decode(r)
		if err != nil {
			if !errors.Is(err, kafka.ErrMalformed) {
				t.Fatalf("Decode error %v does not match ErrMalformed", err)
			}
			for e := err; e != nil; e = errors.Unwrap(e) {
				if msg := e.Error(); len(msg) > 400 {
					t.Fatalf("%T error of %d bytes: %.400q...", e, len(msg), msg)
				}
			}
			return
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("Decode accepted an invalid event: %v", err)
		}
		if ct := strings.ToLower(e.DataContentType); strings.HasPrefix(ct, "application/cloudevents") {
			// A structured record may carry a CloudEvent as its data
			// (data_base64); binary mode cannot (Publish refuses it).
			return
		}
		back, err := kafka.Decode(kafka.Record("t", e))
		if err != nil {
			t.Fatalf("re-decoding %+v: %v", e, err)
		}
		if err := eventstest.Equal(e, back); err != nil {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// TestDecodeRepeatedHeaders: a CloudEvents header that appears twice is
// refused as such, whether it is a context attribute or an extension, and
// before its second value is read.
func TestDecodeRepeatedHeaders(t *testing.T) {
	base := []kgo.RecordHeader{{Key: "ce_specversion", Value: []byte("1.0")}, {Key: "ce_id", Value: []byte("1")},
		{Key: "ce_source", Value: []byte("/s")}, {Key: "ce_type", Value: []byte("t")},
		{Key: "ce_time", Value: []byte("2026-01-01T00:00:00Z")}, {Key: "content-type", Value: []byte("text/plain")},
		{Key: "ce_ext", Value: []byte("v")}, {Key: "ce_subject", Value: []byte("s")}, {Key: "ce_dataschema", Value: []byte("https://x/s")}}
	if _, err := kafka.Decode(&kgo.Record{Headers: base}); err != nil {
		t.Fatalf("the headers once each: %v", err)
	}
	for _, h := range base {
		for _, again := range []string{string(h.Value), "", "not a time"} {
			hs := append(slices.Clone(base), kgo.RecordHeader{Key: h.Key, Value: []byte(again)})
			_, err := kafka.Decode(&kgo.Record{Headers: hs})
			var de *kafka.DecodeError
			if !errors.As(err, &de) || de.Header != h.Key || de.Reason != "appears more than once" {
				t.Errorf("%s again as %q: %v, want it refused as repeated", h.Key, again, err)
			}
		}
	}
}

// TestDecodeOwnsItsStrings: the event Decode returns does not share the
// record's header bytes, which franz-go may reuse.
func TestDecodeOwnsItsStrings(t *testing.T) {
	e := events.New("/s", "t", []byte("d"))
	e.Subject = "subject"
	e.DataContentType = "text/plain"
	e.SetExtension("ext", "value")
	r := kafka.Record("topic", e)
	got, err := kafka.Decode(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range r.Headers {
		for i := range h.Value {
			h.Value[i] = 'X'
		}
	}
	if err := eventstest.Equal(e, got); err != nil {
		t.Fatalf("the event changed with the record's headers: %v", err)
	}
}

// TestDecodeErrorsBounded: a hostile record's header keys and values can be
// megabytes long; no error of Decode (nor any error it wraps) quotes more
// than a bounded excerpt of them, so logging the error cannot flood a log.
// Each excerpt comes with the length of what it cuts.
func TestDecodeErrorsBounded(t *testing.T) {
	const size = 1 << 20
	long := strings.Repeat("a", size)
	base := func(more ...kgo.RecordHeader) []kgo.RecordHeader {
		return append([]kgo.RecordHeader{{Key: "ce_specversion", Value: []byte("1.0")}, {Key: "ce_id", Value: []byte("1")},
			{Key: "ce_source", Value: []byte("/s")}, {Key: "ce_type", Value: []byte("t")}}, more...)
	}
	tests := []struct {
		name    string
		headers []kgo.RecordHeader
	}{
		{"long extension name", base(kgo.RecordHeader{Key: "ce_" + long, Value: []byte("v")})},
		{"long extension name, bad characters", base(kgo.RecordHeader{Key: "ce_\n" + long, Value: []byte("v")})},
		{"long extension name, empty value", base(kgo.RecordHeader{Key: "ce_" + long})},
		{"long extension name, repeated", base(kgo.RecordHeader{Key: "ce_" + long, Value: []byte("v")}, kgo.RecordHeader{Key: "ce_" + long, Value: []byte("v")})},
		{"long extension value, bad characters", base(kgo.RecordHeader{Key: "ce_ext", Value: []byte("\x00" + long)})},
		{"long specversion", append(base()[1:], kgo.RecordHeader{Key: "ce_specversion", Value: []byte(long)})},
		{"long source", append(base()[:2], kgo.RecordHeader{Key: "ce_type", Value: []byte("t")}, kgo.RecordHeader{Key: "ce_source", Value: []byte(" " + long)})},
		{"long time", base(kgo.RecordHeader{Key: "ce_time", Value: []byte(long)})},
		{"long content type", base(kgo.RecordHeader{Key: "content-type", Value: []byte(long)})},
		{"long dataschema", base(kgo.RecordHeader{Key: "ce_dataschema", Value: []byte(long)})},
		// url.Parse's errors quote the whole value.
		{"long source, no scheme", append(base()[:2], kgo.RecordHeader{Key: "ce_type", Value: []byte("t")}, kgo.RecordHeader{Key: "ce_source", Value: []byte(":" + long)})},
		{"long dataschema, unclosed IP literal", base(kgo.RecordHeader{Key: "ce_dataschema", Value: []byte("http://[::1" + long)})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := kafka.Decode(&kgo.Record{Headers: tt.headers})
			if !errors.Is(err, kafka.ErrMalformed) {
				t.Fatalf("Decode: %.200v, want ErrMalformed", err)
			}
			for e := err; e != nil; e = errors.Unwrap(e) {
				if msg := e.Error(); len(msg) > 300 {
					t.Fatalf("%T error of %d bytes: %.300q...", e, len(msg), msg)
				}
			}
			if strings.Contains(tt.name, "name") && !strings.Contains(err.Error(), "bytes") {
				t.Fatalf("error %q does not give the length of the name it cuts", err)
			}
		})
	}
}

// Record's key and header values share one allocation: appending to one
// must not change the next (each is capped), and every value must be the
// attribute's.
func TestRecordValuesDoNotOverlap(t *testing.T) {
	e := events.New("/src", "t.type", []byte("data"))
	e.Subject = "order-1"
	e.SetExtension("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	r := kafka.Record("topic", e)
	want := map[string]string{}
	for _, h := range r.Headers {
		want[h.Key] = string(h.Value)
	}
	key := string(r.Key)
	r.Key = append(r.Key, "XXXXXXXX"...)
	for i := range r.Headers {
		r.Headers[i].Value = append(r.Headers[i].Value, "XXXXXXXX"...)
	}
	for _, h := range r.Headers {
		if got := string(h.Value); got != want[h.Key]+"XXXXXXXX" {
			t.Errorf("header %s: %q after appending to every value, want %q", h.Key, got, want[h.Key]+"XXXXXXXX")
		}
	}
	if key != "order-1" || string(r.Key) != key+"XXXXXXXX" {
		t.Errorf("key %q, then %q", key, r.Key)
	}
	got, err := kafka.Decode(kafka.Record("topic", e))
	if err != nil || got.ID != e.ID || got.Subject != e.Subject || !got.Time.Equal(e.Time) || got.Extensions["traceparent"] != e.Extensions["traceparent"] {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, e)
	}
}

// TestDecodeCEDataContentType: the CloudEvents JavaScript SDK's binary mode
// writes every attribute as a ce_ header, datacontenttype too
// (ce_datacontenttype), besides the binding's content-type header. Such a
// record is the event it says: ce_datacontenttype agrees with content-type,
// and stands for it when content-type is missing.
func TestDecodeCEDataContentType(t *testing.T) {
	base := []kgo.RecordHeader{{Key: "ce_specversion", Value: []byte("1.0")}, {Key: "ce_id", Value: []byte("1")},
		{Key: "ce_source", Value: []byte("/s")}, {Key: "ce_type", Value: []byte("t")}}
	for name, hs := range map[string][]kgo.RecordHeader{
		"both, as the JavaScript SDK writes them": {{Key: "content-type", Value: []byte("application/json")}, {Key: "ce_datacontenttype", Value: []byte("application/json")}},
		"ce_datacontenttype first":                {{Key: "ce_datacontenttype", Value: []byte("application/json")}, {Key: "content-type", Value: []byte("application/json")}},
		"ce_datacontenttype alone":                {{Key: "ce_datacontenttype", Value: []byte("application/json")}},
	} {
		t.Run(name, func(t *testing.T) {
			r := &kgo.Record{Headers: append(slices.Clone(base), hs...), Value: []byte(`{"a":1}`)}
			e, err := kafka.Decode(r)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if e.DataContentType != "application/json" || len(e.Extensions) != 0 || string(e.Data) != `{"a":1}` {
				t.Fatalf("Decode: datacontenttype %q, extensions %v, data %q", e.DataContentType, e.Extensions, e.Data)
			}
		})
	}
}
