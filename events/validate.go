package events

import (
	"errors"
	"mime"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ErrInvalid is matched by every error Validate returns.
var ErrInvalid = errors.New("events: invalid event")

// ValidationError names the attribute that breaks the CloudEvents 1.0 rules
// and why. It matches ErrInvalid.
//
// An extension's name may come from a record a hostile producer wrote, and
// be megabytes long: Error writes a name that is not lowercase letters and
// digits quoted, and at most its first 64 bytes, with its length when it is
// longer. Reason quotes no more than 40 bytes of a value.
type ValidationError struct {
	Attribute string // the attribute name, for example "source", in full
	Reason    string // why it is invalid
}

func (e *ValidationError) Error() string {
	return "events: invalid event: " + attrName(e.Attribute) + ": " + e.Reason
}

// attrName returns name for an error message: as it is when it is short
// and made of lowercase letters and digits, else quoted, and cut to its
// first 64 bytes and its length when longer.
func attrName(name string) string {
	const maxLen = 64
	plain := name != "" && len(name) <= maxLen
	for i := 0; plain && i < len(name); i++ {
		c := name[i]
		plain = 'a' <= c && c <= 'z' || '0' <= c && c <= '9'
	}
	switch {
	case plain:
		return name
	case len(name) <= maxLen:
		return strconv.Quote(name)
	}
	return strconv.Quote(name[:maxLen]) + "... (" + strconv.Itoa(len(name)) + " bytes)"
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

// MaxExtensionNameLen is the longest extension attribute name accepted. The
// specification says names SHOULD NOT exceed 20 characters; we enforce it so
// that every binding (some limit header names) can carry them.
const MaxExtensionNameLen = 20

// reserved are the context attribute names an extension cannot take.
var reserved = map[string]bool{
	"id": true, "source": true, "specversion": true, "type": true,
	"subject": true, "time": true, "datacontenttype": true,
	"dataschema": true, "data": true, "data_base64": true,
}

// Validate checks e against the CloudEvents 1.0 rules: id, source, type and
// specversion are present, specversion is "1.0", source is a URI-reference,
// dataschema (when present) an absolute URI, datacontenttype (when present) a
// media type per RFC 2046 in US-ASCII (parameters allowed; a media range such
// as */* or text/* is not a media type), time (when present) representable in RFC 3339 in UTC, and
// every string value is a sequence of allowable Unicode characters (valid
// UTF-8, no control characters, surrogates or noncharacters). Extension
// names must be lowercase ASCII letters and digits, at most 20 characters,
// and not a context attribute name; extension values must be non-empty.
//
// The error is a *ValidationError, matching ErrInvalid.
func (e Event) Validate() error {
	required := [...]struct{ name, value string }{
		{"id", e.ID}, {"source", e.Source}, {"specversion", e.SpecVersion}, {"type", e.Type},
	}
	for _, r := range required {
		if r.value == "" {
			return invalid(r.name, "required attribute is empty")
		}
		if why := checkString(r.value); why != "" {
			return invalid(r.name, why)
		}
	}
	if e.SpecVersion != SpecVersion {
		return invalid("specversion", "is "+quote(e.SpecVersion)+", want \"1.0\"")
	}
	if why := checkURIReference(e.Source); why != "" {
		return invalid("source", why)
	}
	if why := checkString(e.Subject); why != "" {
		return invalid("subject", why)
	}
	if !e.Time.IsZero() {
		// Bindings write time in UTC, where the year may differ from
		// the one in e.Time's own zone.
		if y := e.Time.UTC().Year(); y < 0 || y > 9999 {
			return invalid("time", "year in UTC is outside RFC 3339's 0000-9999")
		}
	}
	if e.DataContentType != "" {
		if why := checkString(e.DataContentType); why != "" {
			return invalid("datacontenttype", why)
		}
		// RFC 2045's tokens and quoted strings are US-ASCII (RFC 2231
		// percent-encodes anything else), but mime.ParseMediaType trims
		// Unicode spaces around the type and takes any UTF-8 in a quoted
		// value: a no-break space after "application/json" would pass.
		for i := 0; i < len(e.DataContentType); i++ {
			if e.DataContentType[i] >= utf8.RuneSelf {
				return invalid("datacontenttype", "has a character other than US-ASCII")
			}
		}
		mt, _, err := mime.ParseMediaType(e.DataContentType)
		if err != nil {
			return invalid("datacontenttype", "not a media type: "+err.Error())
		}
		typ, sub, ok := strings.Cut(mt, "/")
		if !ok || typ == "" || sub == "" {
			return invalid("datacontenttype", "not a type/subtype media type")
		}
		if strings.Contains(mt, "*") {
			// A media range (RFC 9110 section 12.5.1) says what a
			// receiver accepts, not what the data is; RFC 6838's type
			// and subtype names have no '*'.
			return invalid("datacontenttype", "a media range (with '*'), not a media type")
		}
	}
	if e.DataSchema != "" {
		if why := checkURIReference(e.DataSchema); why != "" {
			return invalid("dataschema", why)
		}
		if u, _ := url.Parse(e.DataSchema); u == nil || u.Scheme == "" {
			return invalid("dataschema", "not an absolute URI")
		}
	}
	for name, value := range e.Extensions {
		if why := CheckExtensionName(name); why != "" {
			return invalid(name, why)
		}
		if value == "" {
			return invalid(name, "extension value is empty (omit the attribute instead)")
		}
		if why := checkString(value); why != "" {
			return invalid(name, why)
		}
	}
	return nil
}

// CheckExtensionName returns why name cannot be an extension attribute name,
// or "" when it can.
func CheckExtensionName(name string) string {
	switch {
	case name == "":
		return "extension name is empty"
	case len(name) > MaxExtensionNameLen:
		return "extension name is longer than 20 characters"
	case reserved[name]:
		return "extension name is a context attribute name"
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return "extension name has a character other than a-z and 0-9"
		}
	}
	return ""
}

func invalid(attr, reason string) error { return &ValidationError{Attribute: attr, Reason: reason} }

// quote returns s quoted with Go escapes, cut to its first 40 bytes (at a
// rune boundary) and "..." when longer.
func quote(s string) string {
	const maxLen = 40
	if len(s) <= maxLen {
		return strconv.Quote(s)
	}
	return strconv.Quote(cut(s, maxLen)) + "..."
}

// cut returns s when it is at most n bytes long, else its first n bytes or
// fewer, cut at a rune boundary.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// checkString applies the specification's String type: a sequence of
// allowable Unicode characters.
func checkString(s string) string {
	for i, r := range s {
		switch {
		case r == utf8.RuneError:
			if _, size := utf8.DecodeRuneInString(s[i:]); size <= 1 {
				return "not valid UTF-8"
			}
		case r <= 0x1f || (r >= 0x7f && r <= 0x9f):
			return "contains a control character"
		case r >= 0xfdd0 && r <= 0xfdef, r&0xfffe == 0xfffe:
			return "contains a Unicode noncharacter"
		}
	}
	return ""
}

// checkURIReference reports why s is not an RFC 3986 URI-reference: it may
// hold only unreserved and reserved characters and well-formed
// percent-encodings, and must parse.
func checkURIReference(s string) string {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return "not a URI-reference: bad percent-encoding"
			}
		default:
			if !isURIPunct(c) {
				// c may be the first byte of a UTF-8 sequence: name
				// the character, not the byte read as Latin-1.
				r, _ := utf8.DecodeRuneInString(s[i:])
				return "not a URI-reference: character " + strconv.QuoteRune(r) + " is not allowed"
			}
		}
	}
	if _, err := url.Parse(s); err != nil {
		// The *url.Error repeats the whole value, and its inner error
		// may quote a part of it (an invalid port): a reason must stay
		// short whatever the input.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		msg := err.Error()
		if len(msg) > 80 {
			msg = cut(msg, 80) + "..."
		}
		return "not a URI-reference: " + msg
	}
	// url.Parse is more lenient than RFC 3986 in two ways that other
	// CloudEvents SDKs are not.
	if strings.Count(s, "#") > 1 {
		return "not a URI-reference: '#' in the fragment"
	}
	if strings.ContainsAny(s, "[]") && !bracketsAroundHost(s) {
		return "not a URI-reference: '[' or ']' outside an IP-literal host"
	}
	return ""
}

// bracketsAroundHost reports whether the only '[' and ']' of s, a
// URI-reference, enclose the host of its authority (an IP literal), the one
// place RFC 3986 allows them.
func bracketsAroundHost(s string) bool {
	rest := s
	if i := strings.IndexAny(rest, ":/?#"); i > 0 && rest[i] == ':' {
		rest = rest[i+1:] // after the scheme
	}
	auth, ok := strings.CutPrefix(rest, "//")
	if !ok {
		return false
	}
	end := strings.IndexAny(auth, "/?#")
	if end < 0 {
		end = len(auth)
	}
	if strings.ContainsAny(auth[end:], "[]") {
		return false
	}
	auth = auth[:end]
	if at := strings.LastIndexByte(auth, '@'); at >= 0 {
		if strings.ContainsAny(auth[:at], "[]") {
			return false
		}
		auth = auth[at+1:]
	}
	host, port, ok := strings.Cut(auth, "]")
	return ok && strings.HasPrefix(host, "[") && !strings.ContainsAny(host[1:], "[]") &&
		!strings.ContainsAny(port, "[]") && (port == "" || port[0] == ':')
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// isURIPunct reports whether c is an RFC 3986 unreserved or reserved
// punctuation character.
func isURIPunct(c byte) bool {
	switch c {
	case '-', '.', '_', '~', // unreserved
		':', '/', '?', '#', '[', ']', '@', // gen-delims
		'!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=': // sub-delims
		return true
	}
	return false
}
