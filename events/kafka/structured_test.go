package kafka_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"maps"
	"mime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/eventstest"
	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/internal/testenv"
	"github.com/twmb/franz-go/pkg/kgo"
)

// structuredRecord is a record in the Kafka binding's structured content
// mode, as another producer writes it: the content-type header and the
// event in the JSON format as the value.
func structuredRecord(contentType, value string) *kgo.Record {
	return &kgo.Record{Value: []byte(value), Headers: []kgo.RecordHeader{{Key: "content-type", Value: []byte(contentType)}}}
}

// sameEvent reports how want and got differ, extensions compared both ways.
func sameEvent(want, got events.Event) error {
	if err := eventstest.Equal(want, got); err != nil {
		return err
	}
	if !maps.Equal(want.Extensions, got.Extensions) {
		return errors.New("extensions differ: got " + mapString(got.Extensions) + ", want " + mapString(want.Extensions))
	}
	return nil
}

func mapString(m map[string]string) string {
	b, _ := json.Marshal(m)
	return string(b)
}

// binaryRecord is a record in binary mode with the given headers and value,
// as the JSON format specification re-encodes its examples.
func binaryRecord(value string, kv ...string) *kgo.Record {
	r := &kgo.Record{Value: []byte(value)}
	for i := 0; i < len(kv); i += 2 {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: kv[i], Value: []byte(kv[i+1])})
	}
	return r
}

// TestDecodeStructuredSpecExamples decodes the examples of the CloudEvents
// JSON event format specification (section 3.2) and checks each against the
// event it describes and against its binary-mode re-encoding, which the
// specification gives beside it.
func TestDecodeStructuredSpecExamples(t *testing.T) {
	thrift := []byte{0x80, 0x01, 0x00, 0x01, 0xff, 0x00}
	when := time.Date(2018, 4, 5, 17, 31, 0, 0, time.UTC)
	exts := map[string]string{"comexampleextension1": "value", "comexampleothervalue": "5"}
	common := []string{"ce_specversion", "1.0", "ce_type", "com.example.someevent", "ce_source", "/mycontext",
		"ce_time", "2018-04-05T17:31:00Z", "ce_comexampleextension1", "value", "ce_comexampleothervalue", "5"}
	event := func(id, ct string, data string) events.Event {
		e := events.Event{SpecVersion: "1.0", Type: "com.example.someevent", Source: "/mycontext", ID: id,
			Time: when, DataContentType: ct, Extensions: maps.Clone(exts)}
		if data != "" {
			e.Data = []byte(data)
		}
		return e
	}
	tests := []struct {
		name   string
		json   string
		want   events.Event
		binary *kgo.Record
	}{
		{
			name: "binary data",
			json: `{
    "specversion" : "1.0",
    "type" : "com.example.someevent",
    "source" : "/mycontext",
    "id" : "A234-1234-1234",
    "time" : "2018-04-05T17:31:00Z",
    "comexampleextension1" : "value",
    "comexampleothervalue" : 5,
    "datacontenttype" : "application/vnd.apache.thrift.binary",
    "data_base64" : "` + base64.StdEncoding.EncodeToString(thrift) + `"
}`,
			want:   event("A234-1234-1234", "application/vnd.apache.thrift.binary", string(thrift)),
			binary: binaryRecord(string(thrift), append(common, "ce_id", "A234-1234-1234", "content-type", "application/vnd.apache.thrift.binary")...),
		},
		{
			name: "XML string data, an unset extension",
			json: `{
    "specversion" : "1.0",
    "type" : "com.example.someevent",
    "source" : "/mycontext",
    "id" : "B234-1234-1234",
    "time" : "2018-04-05T17:31:00Z",
    "comexampleextension1" : "value",
    "comexampleothervalue" : 5,
    "unsetextension": null,
    "datacontenttype" : "application/xml",
    "data" : "<much wow=\"xml\"/>"
}`,
			want:   event("B234-1234-1234", "application/xml", `<much wow="xml"/>`),
			binary: binaryRecord(`<much wow="xml"/>`, append(common, "ce_id", "B234-1234-1234", "content-type", "application/xml")...),
		},
		{
			name: "JSON object data, a null subject",
			json: `{
    "specversion" : "1.0",
    "type" : "com.example.someevent",
    "source" : "/mycontext",
    "subject": null,
    "id" : "C234-1234-1234",
    "time" : "2018-04-05T17:31:00Z",
    "comexampleextension1" : "value",
    "comexampleothervalue" : 5,
    "datacontenttype" : "application/json",
    "data" : {"appinfoA":"abc","appinfoB":123,"appinfoC":true}
}`,
			want:   event("C234-1234-1234", "application/json", `{"appinfoA":"abc","appinfoB":123,"appinfoC":true}`),
			binary: binaryRecord(`{"appinfoA":"abc","appinfoB":123,"appinfoC":true}`, append(common, "ce_id", "C234-1234-1234", "content-type", "application/json")...),
		},
		{
			name: "JSON number data",
			json: `{"specversion":"1.0","type":"com.example.someevent","source":"/mycontext","subject":null,"id":"C234-1234-1234",
				"time":"2018-04-05T17:31:00Z","comexampleextension1":"value","comexampleothervalue":5,
				"datacontenttype":"application/json","data":1.5}`,
			want:   event("C234-1234-1234", "application/json", `1.5`),
			binary: binaryRecord(`1.5`, append(common, "ce_id", "C234-1234-1234", "content-type", "application/json")...),
		},
		{
			// No datacontenttype: the data is JSON, a JSON string, and
			// the binary re-encoding says application/json explicitly.
			name: "JSON string data without datacontenttype",
			json: `{"specversion":"1.0","type":"com.example.someevent","source":"/mycontext","subject":null,"id":"D234-1234-1234",
				"time":"2018-04-05T17:31:00Z","comexampleextension1":"value","comexampleothervalue":5,
				"data":"I'm just a string"}`,
			want:   event("D234-1234-1234", "application/json", `"I'm just a string"`),
			binary: binaryRecord(`"I'm just a string"`, append(common, "ce_id", "D234-1234-1234", "content-type", "application/json")...),
		},
		{
			// data_base64 without datacontenttype: no type is inferred.
			name: "base64 data without datacontenttype",
			json: `{"specversion":"1.0","type":"com.example.someevent","source":"/mycontext","id":"D234-1234-1234",
				"data_base64":"eyAieHl6IjogMTIzIH0="}`,
			want:   events.Event{SpecVersion: "1.0", Type: "com.example.someevent", Source: "/mycontext", ID: "D234-1234-1234", Data: []byte(`{ "xyz": 123 }`)},
			binary: binaryRecord(`{ "xyz": 123 }`, "ce_specversion", "1.0", "ce_type", "com.example.someevent", "ce_source", "/mycontext", "ce_id", "D234-1234-1234"),
		},
		{
			name: "text/plain string data, charset, every optional attribute",
			json: `{"specversion":"1.0","type":"t","source":"urn:x","id":"1","subject":"order-7",
				"dataschema":"https://example.com/s","time":"2026-01-01T01:00:00.123456789+01:00",
				"datacontenttype":"text/plain; charset=utf-8","data":"h\u00e9llo\n"}`,
			want: events.Event{SpecVersion: "1.0", Type: "t", Source: "urn:x", ID: "1", Subject: "order-7",
				DataSchema: "https://example.com/s", Time: time.Date(2026, 1, 1, 0, 0, 0, 123456789, time.UTC),
				DataContentType: "text/plain; charset=utf-8", Data: []byte("héllo\n")},
			binary: binaryRecord("héllo\n", "ce_specversion", "1.0", "ce_type", "t", "ce_source", "urn:x", "ce_id", "1",
				"ce_subject", "order-7", "ce_dataschema", "https://example.com/s", "ce_time", "2026-01-01T00:00:00.123456789Z",
				"content-type", "text/plain; charset=utf-8"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, ct := range []string{"application/cloudevents+json", "application/cloudevents+json; charset=utf-8", "Application/CloudEvents+JSON; Charset=UTF-8"} {
				got, err := kafka.Decode(structuredRecord(ct, tt.json))
				if err != nil {
					t.Fatalf("Decode with content-type %q: %v", ct, err)
				}
				if err := sameEvent(tt.want, got); err != nil {
					t.Fatalf("content-type %q: %v", ct, err)
				}
			}
			bin, err := kafka.Decode(tt.binary)
			if err != nil {
				t.Fatalf("Decode of the binary re-encoding: %v", err)
			}
			if err := sameEvent(bin, tt.want); err != nil {
				t.Fatalf("structured and binary differ: %v", err)
			}
		})
	}
}

// TestDecodeStructuredExtensions: extension values of every JSON type the
// format allows become the canonical strings a binary-mode header carries.
func TestDecodeStructuredExtensions(t *testing.T) {
	tests := []struct {
		json string
		want string // "" for absent
	}{
		{`"v"`, "v"},
		{`"with \"quotes\" and \u00e9"`, `with "quotes" and é`},
		{`"5"`, "5"},
		{`"\ud83d\ude00 \uFFFD \\ud800"`, "\U0001F600 \uFFFD \\ud800"},
		{`true`, "true"},
		{`false`, "false"},
		{`0`, "0"},
		{`-0`, "0"},
		{`42`, "42"},
		{`-42`, "-42"},
		{`2147483647`, "2147483647"},
		{`-2147483648`, "-2147483648"},
		{`null`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.json, func(t *testing.T) {
			e, err := kafka.Decode(structuredRecord("application/cloudevents+json",
				`{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":`+tt.json+`}`))
			if err != nil {
				t.Fatal(err)
			}
			v, ok := e.Extensions["ext"]
			if v != tt.want || ok != (tt.want != "") {
				t.Fatalf("extension %q (present %v), want %q", v, ok, tt.want)
			}
		})
	}
}

// TestDecodeStructuredRefusals: every way a structured record can be wrong
// is a *DecodeError matching ErrMalformed, on the header or member at fault.
func TestDecodeStructuredRefusals(t *testing.T) {
	const ce = "application/cloudevents+json"
	obj := func(more string) string {
		return `{"specversion":"1.0","id":"1","source":"/s","type":"t"` + more + `}`
	}
	tests := []struct {
		name, ct, value string
		header, member  string
		reason          string // a part of the reason
	}{
		{"batch format", "application/cloudevents-batch+json", "[" + obj("") + "]", "content-type", "", "batch format"},
		{"batch format, other case", "Application/CloudEvents-Batch+JSON", "[" + obj("") + "]", "content-type", "", "not allowed on Kafka"},
		{"other event format", "application/cloudevents+avro", obj(""), "content-type", "", "not supported"},
		{"no format", "application/cloudevents", obj(""), "content-type", "", "not supported"},
		{"not a media type", "application/cloudevents+json; charset", obj(""), "content-type", "", "not a media type"},
		{"charset not utf-8", "application/cloudevents+json; charset=iso-8859-1", obj(""), "content-type", "", "charset"},
		{"empty value", ce, "", "", "", "not a JSON object"},
		{"not JSON", ce, "not json", "", "", "not a JSON object"},
		{"truncated", ce, obj("")[:20], "", "", "unexpected EOF"},
		{"an array", ce, "[" + obj("") + "]", "", "", "a JSON array, not an object"},
		{"a string", ce, `"x"`, "", "", "a JSON string, not an object"},
		{"trailing data", ce, obj("") + "{}", "", "", "after the event's object"},
		{"trailing garbage", ce, obj("") + "x", "", "", "not a JSON object"},
		{"invalid UTF-8", ce, obj(`,"ext":"` + "\xff" + `"`), "", "", "not valid UTF-8"},
		{"too deep", ce, obj(`,"data":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000)), "", "", "not a JSON object"},
		{"empty object", ce, "{}", "", "specversion", "missing"},
		{"null specversion", ce, `{"specversion":null,"id":"1","source":"/s","type":"t"}`, "", "specversion", "missing"},
		{"wrong specversion", ce, `{"specversion":"0.3","id":"1","source":"/s","type":"t"}`, "", "specversion", "want \"1.0\""},
		{"numeric specversion", ce, `{"specversion":1.0,"id":"1","source":"/s","type":"t"}`, "", "specversion", "a JSON number, want a string"},
		{"null id", ce, `{"specversion":"1.0","id":null,"source":"/s","type":"t"}`, "", "id", "required attribute is empty"},
		{"missing source", ce, `{"specversion":"1.0","id":"1","type":"t"}`, "", "source", "required attribute is empty"},
		{"missing type", ce, `{"specversion":"1.0","id":"1","source":"/s"}`, "", "type", "required attribute is empty"},
		{"numeric id", ce, `{"specversion":"1.0","id":1,"source":"/s","type":"t"}`, "", "id", "a JSON number, want a string"},
		{"object source", ce, `{"specversion":"1.0","id":"1","source":{},"type":"t"}`, "", "source", "a JSON object, want a string"},
		{"boolean type", ce, `{"specversion":"1.0","id":"1","source":"/s","type":true}`, "", "type", "a JSON boolean, want a string"},
		{"array subject", ce, obj(`,"subject":["a"]`), "", "subject", "a JSON array, want a string"},
		{"bad source", ce, `{"specversion":"1.0","id":"1","source":"a b","type":"t"}`, "", "source", "not a URI-reference"},
		{"control character", ce, obj(`,"subject":"a\u0000b"`), "", "subject", "control character"},
		{"bad time", ce, obj(`,"time":"2026-01-01"`), "", "time", "RFC 3339"},
		{"numeric time", ce, obj(`,"time":1767225600`), "", "time", "want a string"},
		{"relative dataschema", ce, obj(`,"dataschema":"/s"`), "", "dataschema", "absolute URI"},
		{"bad datacontenttype", ce, obj(`,"datacontenttype":"json"`), "", "datacontenttype", "media type"},
		{"repeated attribute", ce, obj(`,"id":"2"`), "", "id", "appears more than once"},
		{"repeated extension", ce, obj(`,"ext":"a","ext":"b"`), "", "ext", "appears more than once"},
		{"repeated extension after null", ce, obj(`,"ext":null,"ext":"b"`), "", "ext", "appears more than once"},
		{"repeated data", ce, obj(`,"data":1,"data":2`), "", "data", "appears more than once"},
		// Go's JSON decoder would turn an escaped lone surrogate into
		// U+FFFD, changing the value; CloudEvents strings have no
		// surrogates (binary mode cannot carry one in UTF-8).
		{"lone high surrogate", ce, obj(`,"subject":"a\ud800b"`), "", "subject", "surrogate"},
		{"lone low surrogate in an extension", ce, obj(`,"ext":"\udc00"`), "", "ext", "surrogate"},
		{"surrogates reversed", ce, obj(`,"ext":"\udc00\ud800"`), "", "ext", "surrogate"},
		{"lone surrogate in text data", ce, obj(`,"datacontenttype":"text/plain","data":"\ud83d"`), "", "data", "surrogate"},
		{"object extension", ce, obj(`,"ext":{"a":1}`), "", "ext", "a JSON object"},
		{"array extension", ce, obj(`,"ext":[1]`), "", "ext", "a JSON array"},
		{"fraction extension", ce, obj(`,"ext":1.5`), "", "ext", "not an integer"},
		{"exponent extension", ce, obj(`,"ext":1e3`), "", "ext", "not an integer"},
		{"integer extension too large", ce, obj(`,"ext":2147483648`), "", "ext", "Integer range"},
		{"integer extension too small", ce, obj(`,"ext":-2147483649`), "", "ext", "Integer range"},
		{"empty extension", ce, obj(`,"ext":""`), "", "ext", "empty value"},
		{"uppercase extension name", ce, obj(`,"Ext":"v"`), "", "Ext", "a-z and 0-9"},
		{"long extension name", ce, obj(`,"` + strings.Repeat("a", 21) + `":"v"`), "", strings.Repeat("a", 21), "longer than 20"},
		{"data and data_base64", ce, obj(`,"data":"x","data_base64":"eA=="`), "", "data_base64", "one or the other"},
		{"bad base64", ce, obj(`,"data_base64":"not base64!"`), "", "data_base64", "not base64"},
		{"unpadded base64", ce, obj(`,"data_base64":"eA"`), "", "data_base64", "not base64"},
		{"numeric data_base64", ce, obj(`,"data_base64":1`), "", "data_base64", "want a string"},
		{"object data, text type", ce, obj(`,"datacontenttype":"text/plain","data":{"a":1}`), "", "data", "a JSON object with datacontenttype \"text/plain\", which is not JSON"},
		{"number data, binary type", ce, obj(`,"datacontenttype":"application/octet-stream","data":5`), "", "data", "want a string, or data_base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := kafka.Decode(structuredRecord(tt.ct, tt.value))
			var de *kafka.DecodeError
			if !errors.Is(err, kafka.ErrMalformed) || !errors.As(err, &de) {
				t.Fatalf("Decode: %v (event %+v), want a DecodeError", err, e)
			}
			if de.Header != tt.header || de.Member != tt.member || !strings.Contains(de.Reason, tt.reason) {
				t.Fatalf("Decode: header %q member %q reason %q, want header %q member %q reason with %q",
					de.Header, de.Member, de.Reason, tt.header, tt.member, tt.reason)
			}
			if len(err.Error()) > 300 {
				t.Fatalf("error of %d bytes: %.300s", len(err.Error()), err)
			}
		})
	}
}

// TestDecodeStructuredDataTypes: data is the raw JSON value for every JSON
// media type (subtype json or *+json, in any case, with parameters), an
// explicit null included, and a string's contents for any other type.
func TestDecodeStructuredDataTypes(t *testing.T) {
	tests := []struct {
		ct, data string
		want     string // "" for no data
	}{
		{"application/json", `{"a": [1, 2]}`, `{"a": [1, 2]}`},
		{"application/json; charset=utf-8", `"s"`, `"s"`},
		{"Application/JSON", `true`, `true`},
		{"application/vnd.example+json", `[1]`, `[1]`},
		{"text/json", `{}`, `{}`},
		{"application/json", `null`, `null`},
		{"text/plain", `"plain"`, `plain`},
		{"text/plain", `""`, ""},
		{"text/plain", `null`, ""},
		{"application/xml", `"<a/>"`, `<a/>`},
		{"application/jsonx", `"x"`, `x`},
	}
	for _, tt := range tests {
		t.Run(tt.ct+" "+tt.data, func(t *testing.T) {
			e, err := kafka.Decode(structuredRecord("application/cloudevents+json",
				`{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"`+tt.ct+`","data":`+tt.data+`}`))
			if err != nil {
				t.Fatal(err)
			}
			if string(e.Data) != tt.want || (tt.want == "") != (e.Data == nil) {
				t.Fatalf("data %q, want %q", e.Data, tt.want)
			}
			if e.DataContentType != tt.ct {
				t.Fatalf("datacontenttype %q, want %q", e.DataContentType, tt.ct)
			}
		})
	}
	// Neither data nor data_base64, or null for both: no data, and no
	// datacontenttype is implied.
	for _, v := range []string{`{"specversion":"1.0","id":"1","source":"/s","type":"t"}`,
		`{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":null}`} {
		e, err := kafka.Decode(structuredRecord("application/cloudevents+json", v))
		if err != nil || e.Data != nil || e.DataContentType != "" {
			t.Fatalf("%s: data %q, datacontenttype %q, error %v; want none of them", v, e.Data, e.DataContentType, err)
		}
	}
}

// TestDecodeStructuredOverBinaryHeaders: a record with a structured
// content-type is in structured mode, as the binding says, even when it also
// carries ce_ headers (some producers add them for routing): the event is
// the value's, and the headers, even repeated or invalid ones, are ignored.
func TestDecodeStructuredOverBinaryHeaders(t *testing.T) {
	r := binaryRecord(`{"specversion":"1.0","id":"from-json","source":"/json","type":"t.json","data":{"k":1}}`,
		"ce_specversion", "1.0", "ce_id", "from-headers", "ce_source", "/headers", "ce_type", "t.headers",
		"ce_id", "again", "ce_Bad", "x", "ce_time", "not a time",
		"content-type", "application/cloudevents+json; charset=UTF-8")
	got, err := kafka.Decode(r)
	if err != nil {
		t.Fatal(err)
	}
	want := events.Event{SpecVersion: "1.0", ID: "from-json", Source: "/json", Type: "t.json",
		DataContentType: "application/json", Data: []byte(`{"k":1}`)}
	if err := sameEvent(want, got); err != nil {
		t.Fatal(err)
	}
	// Two content-type headers are not one mode or the other: refused.
	r.Headers = append(r.Headers, kgo.RecordHeader{Key: "content-type", Value: []byte("application/cloudevents+json")})
	var de *kafka.DecodeError
	if _, err := kafka.Decode(r); !errors.As(err, &de) {
		t.Fatalf("Decode with two content-types: %v, want a DecodeError", err)
	}
}

// writeStructured writes e in the CloudEvents JSON event format, as another
// SDK does: data as a JSON value for a JSON type, as a string for text, else
// as data_base64; extensions named in ints as JSON integers, the others as
// strings.
func writeStructured(t *testing.T, e events.Event, ints ...string) []byte {
	t.Helper()
	m := map[string]any{"specversion": e.SpecVersion, "id": e.ID, "source": e.Source, "type": e.Type}
	opt := map[string]string{"subject": e.Subject, "datacontenttype": e.DataContentType, "dataschema": e.DataSchema}
	for k, v := range opt {
		if v != "" {
			m[k] = v
		}
	}
	if !e.Time.IsZero() {
		m["time"] = e.Time.Format(time.RFC3339Nano)
	}
	for k, v := range e.Extensions {
		m[k] = v
	}
	for _, k := range ints {
		var n int
		if err := json.Unmarshal([]byte(e.Extensions[k]), &n); err != nil {
			t.Fatal(err)
		}
		m[k] = n
	}
	if e.Data != nil {
		mt, _, _ := mime.ParseMediaType(e.DataContentType)
		switch {
		case mt == "application/json" || strings.HasSuffix(mt, "+json"):
			m["data"] = json.RawMessage(e.Data)
		case strings.HasPrefix(mt, "text/") && utf8.Valid(e.Data):
			m["data"] = string(e.Data)
		default:
			m["data_base64"] = e.Data // encoding/json writes []byte in base64
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStructuredBinaryEquivalence: an event our Publisher published in
// binary mode and the same event written as structured JSON by another
// producer decode to equal events.
func TestStructuredBinaryEquivalence(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	p := c.publisher(t, topic)
	at := time.Date(2026, 3, 1, 12, 30, 0, 123456000, time.FixedZone("x", -5*3600))
	var evs []events.Event
	add := func(ct string, data []byte, f func(*events.Event)) {
		e := events.New("urn:activekit:test", "io.activekit.test", data)
		e.DataContentType = ct
		e.Time = at
		if f != nil {
			f(&e)
		}
		evs = append(evs, e)
	}
	add("application/json", []byte(`{"order":7,"lines":[{"sku":"a","qty":2}],"note":"é"}`), func(e *events.Event) {
		e.Subject = "order-7"
		e.DataSchema = "https://example.com/order.json"
		e.SetExtension("partitionkey", "customer-1")
		e.SetExtension("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
		e.SetExtension("attempt", "3")
		e.SetExtension("replay", "true")
	})
	add("application/vnd.example+json", []byte(`[1,2,3]`), nil)
	add("text/plain; charset=utf-8", []byte("line one\nline two\n"), func(e *events.Event) { e.SetExtension("negative", "-17") })
	add("application/octet-stream", []byte{0, 1, 2, 0xfe, 0xff}, nil)
	add("", nil, func(e *events.Event) { e.Time = time.Time{} })
	if err := p.Publish(context.Background(), evs...); err != nil {
		t.Fatal(err)
	}
	published := map[string]events.Event{}
	for _, r := range c.readAll(t, topic) {
		e, err := kafka.Decode(r)
		if err != nil {
			t.Fatal(err)
		}
		published[e.ID] = e
	}
	for i, e := range evs {
		bin, ok := published[e.ID]
		if !ok {
			t.Fatalf("event %d not in the log", i)
		}
		var ints []string
		for _, k := range []string{"attempt", "negative"} {
			if _, ok := e.Extensions[k]; ok {
				ints = append(ints, k)
			}
		}
		v := writeStructured(t, e, ints...)
		if _, ok := e.Extensions["replay"]; ok {
			// Written as a JSON boolean.
			v = []byte(strings.Replace(string(v), `"replay":"true"`, `"replay":true`, 1))
		}
		st, err := kafka.Decode(structuredRecord("application/cloudevents+json", string(v)))
		if err != nil {
			t.Fatalf("event %d as %s: %v", i, v, err)
		}
		if err := sameEvent(bin, st); err != nil {
			t.Fatalf("event %d: structured %s decodes unlike the published record: %v", i, v, err)
		}
		if err := sameEvent(st, bin); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if err := sameEvent(e, st); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
	}
}

// TestSubscribeStructured: records in structured mode written by plain
// franz-go, as another SDK's producer writes them, are handled like binary
// ones; only the record that cannot be decoded is dead-lettered, and the
// partition goes on.
func TestSubscribeStructured(t *testing.T) {
	c := newCluster(t)
	topic := testenv.Name(t)
	c.topics(t, topic)
	dlq := topic + kafka.DefaultDeadLetterSuffix
	prod, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	raw := []*kgo.Record{
		structuredRecord("application/cloudevents+json; charset=utf-8",
			`{"specversion":"1.0","id":"structured","source":"/java-sdk","type":"t","subject":"k",
			  "time":"2026-01-01T00:00:00Z","priority":5,"datacontenttype":"application/json","data":{"a":1}}`),
		structuredRecord("application/cloudevents-batch+json", `[{"specversion":"1.0","id":"batch","source":"/s","type":"t"}]`),
		binaryRecord("binary data", "ce_specversion", "1.0", "ce_id", "binary", "ce_source", "/s", "ce_type", "t"),
		structuredRecord("application/CloudEvents+JSON", `{"specversion":"1.0","id":"base64","source":"/s","type":"t","data_base64":"AAH/"}`),
	}
	for _, r := range raw {
		r.Key = []byte("same-key") // one partition, in order
	}
	if err := prod.ProduceSync(context.Background(), raw...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	s := c.subscriber(t, topic+"-g")
	handled := make(chan events.Event, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Subscribe(ctx, topic, func(_ context.Context, e events.Event) error {
			handled <- e
			return nil
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Subscribe: %v", err)
		}
	}()
	want := []events.Event{
		{SpecVersion: "1.0", ID: "structured", Source: "/java-sdk", Type: "t", Subject: "k", Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
			DataContentType: "application/json", Data: []byte(`{"a":1}`), Extensions: map[string]string{"priority": "5"}},
		{SpecVersion: "1.0", ID: "binary", Source: "/s", Type: "t", Data: []byte("binary data")},
		{SpecVersion: "1.0", ID: "base64", Source: "/s", Type: "t", Data: []byte{0, 1, 0xff}},
	}
	timer := time.After(wait)
	for i := range want {
		select {
		case got := <-handled:
			if err := sameEvent(want[i], got); err != nil {
				t.Fatalf("handled event %d: %v", i, err)
			}
		case <-timer:
			t.Fatalf("handled %d of %d events", i, len(want))
		}
	}
	dead := c.readAll(t, dlq)
	if len(dead) != 1 {
		t.Fatalf("%d dead letters, want 1 (the batch)", len(dead))
	}
	if reason := header(dead[0], "ce_deadletterreason"); !strings.Contains(reason, "batch format") || !strings.HasPrefix(reason, "malformed") {
		t.Fatalf("dead letter reason %q, want the batch format refused as malformed", reason)
	}
}

// TestDecodeStructuredErrorsBounded: a hostile structured record's member
// names, values and content-type can be megabytes long; no error of Decode
// (nor any error it wraps) quotes more than a bounded excerpt of them.
func TestDecodeStructuredErrorsBounded(t *testing.T) {
	const size = 1 << 20
	long := strings.Repeat("a", size)
	obj := func(more string) string {
		return `{"specversion":"1.0","id":"1","source":"/s","type":"t"` + more + `}`
	}
	tests := []struct{ name, ct, value string }{
		{"long member name", "application/cloudevents+json", obj(`,"` + long + `":"v"`)},
		{"long member name, object value", "application/cloudevents+json", obj(`,"` + long + `":{}`)},
		{"long member name, repeated", "application/cloudevents+json", obj(`,"` + long + `":"v","` + long + `":"v"`)},
		{"long member name, escaped", "application/cloudevents+json", obj(`,"\n` + long + `":"v"`)},
		{"long extension value, control character", "application/cloudevents+json", obj(`,"ext":"\u0001` + long + `"`)},
		{"long source", "application/cloudevents+json", `{"specversion":"1.0","id":"1","source":" ` + long + `","type":"t"}`},
		{"long source, no scheme", "application/cloudevents+json", `{"specversion":"1.0","id":"1","source":":` + long + `","type":"t"}`},
		{"long dataschema, unclosed IP literal", "application/cloudevents+json", obj(`,"dataschema":"http://[::1` + long + `"`)},
		{"long specversion", "application/cloudevents+json", `{"specversion":"` + long + `","id":"1","source":"/s","type":"t"}`},
		{"long time", "application/cloudevents+json", obj(`,"time":"` + long + `"`)},
		{"long datacontenttype", "application/cloudevents+json", obj(`,"datacontenttype":"` + long + `"`)},
		{"long datacontenttype, object data", "application/cloudevents+json", obj(`,"datacontenttype":"text/` + long + `","data":{}`)},
		{"long integer", "application/cloudevents+json", obj(`,"ext":` + strings.Repeat("9", size))},
		{"long base64", "application/cloudevents+json", obj(`,"data_base64":"` + long + `!"`)},
		{"long garbage", "application/cloudevents+json", obj("") + long},
		{"long format", "application/cloudevents+" + long, obj("")},
		{"long charset", "application/cloudevents+json; charset=" + long, obj("")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := kafka.Decode(structuredRecord(tt.ct, tt.value))
			if !errors.Is(err, kafka.ErrMalformed) {
				t.Fatalf("Decode: %.200v, want ErrMalformed", err)
			}
			for e := err; e != nil; e = errors.Unwrap(e) {
				if msg := e.Error(); len(msg) > 300 {
					t.Fatalf("%T error of %d bytes: %.300q...", e, len(msg), msg)
				}
			}
		})
	}
}
