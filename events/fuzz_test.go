package events_test

import (
	"errors"
	"mime"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/activekit/activekit/events"
)

// FuzzValidate feeds arbitrary attributes to Validate: it must never panic,
// its error must be a short *ValidationError matching ErrInvalid, and an
// event it accepts must pass the specification's rules checked here
// independently.
func FuzzValidate(f *testing.F) {
	f.Add("1", "/s", "1.0", "t", "", "", "", "", "", int64(0))
	f.Add("A234-1234-1234", "https://[::1]:8443/x?q#f", "1.0", "com.example.x", "sub", "application/json; charset=utf-8", "https://x/s.json", "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", int64(1e9))
	f.Add("\xff", "a b", "0.3", "\n", "\u0085", "*/*", "/rel", "Ext", "", int64(-62167219201))
	f.Add("1", "http://h:"+strings.Repeat("a", 300), "1.0", "t", "", "text/plain\u00a0", "urn:x#a#b", "data", "v", int64(253402300800))
	f.Fuzz(func(t *testing.T, id, source, specversion, typ, subject, ct, schema, extName, extValue string, sec int64) {
		e := events.Event{ID: id, Source: source, SpecVersion: specversion, Type: typ, Subject: subject,
			DataContentType: ct, DataSchema: schema}
		if sec != 0 {
			e.Time = time.Unix(sec, 0)
		}
		if extName != "" {
			e.Extensions = map[string]string{extName: extValue}
		}
		err := e.Validate()
		if err != nil {
			var ve *events.ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, events.ErrInvalid) {
				t.Fatalf("Validate error %v is not a *ValidationError matching ErrInvalid", err)
			}
			if n := len(err.Error()); n > 400 || !utf8.ValidString(err.Error()) {
				t.Fatalf("error of %d bytes: %.400q", n, err)
			}
			return
		}
		// Accepted: check the rules again, another way.
		if id == "" || source == "" || typ == "" || specversion != "1.0" {
			t.Fatalf("accepted without a required attribute: %+v", e)
		}
		strs := []string{id, source, typ, subject, ct, schema}
		if extName != "" {
			strs = append(strs, extValue)
		}
		for _, s := range strs {
			for _, r := range s {
				if r == utf8.RuneError || r < 0x20 || (r >= 0x7f && r <= 0x9f) || (r >= 0xfdd0 && r <= 0xfdef) || r&0xfffe == 0xfffe {
					t.Fatalf("accepted a string with %U: %q", r, s)
				}
			}
			if !utf8.ValidString(s) {
				t.Fatalf("accepted invalid UTF-8 %q", s)
			}
		}
		for _, s := range []string{source, schema} {
			if s == "" {
				continue
			}
			if _, err := url.Parse(s); err != nil || strings.ContainsAny(s, " \"<>\\^`{|}") {
				t.Fatalf("accepted URI-reference %q (url.Parse: %v)", s, err)
			}
		}
		if schema != "" {
			if u, _ := url.Parse(schema); u.Scheme == "" {
				t.Fatalf("accepted relative dataschema %q", schema)
			}
		}
		if ct != "" {
			mt, _, err := mime.ParseMediaType(ct)
			if err != nil || strings.Count(mt, "/") != 1 || strings.Contains(mt, "*") {
				t.Fatalf("accepted datacontenttype %q (%q, %v)", ct, mt, err)
			}
			for i := 0; i < len(ct); i++ {
				if ct[i] >= 0x80 {
					t.Fatalf("accepted non-ASCII datacontenttype %q", ct)
				}
			}
		}
		if !e.Time.IsZero() && (e.Time.UTC().Year() < 0 || e.Time.UTC().Year() > 9999) {
			t.Fatalf("accepted time %v", e.Time)
		}
		if !e.Time.IsZero() {
			back, err := time.Parse(time.RFC3339Nano, e.Time.UTC().Format(time.RFC3339Nano))
			if err != nil || !back.Equal(e.Time) {
				t.Fatalf("accepted time %v does not round-trip through RFC 3339: %v, %v", e.Time, back, err)
			}
		}
		if extName != "" {
			if extValue == "" || len(extName) > 20 {
				t.Fatalf("accepted extension %q=%q", extName, extValue)
			}
			for i := 0; i < len(extName); i++ {
				if c := extName[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
					t.Fatalf("accepted extension name %q", extName)
				}
			}
			switch extName {
			case "id", "source", "specversion", "type", "subject", "time", "datacontenttype", "dataschema", "data":
				t.Fatalf("accepted extension named like an attribute: %q", extName)
			}
		}
	})
}
