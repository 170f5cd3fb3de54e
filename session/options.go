package session

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// Defaults of a Manager.
const (
	DefaultIdleTimeout     = 30 * time.Minute
	DefaultAbsoluteTimeout = 24 * time.Hour
	DefaultRenewGrace      = 10 * time.Second
	DefaultMaxValueSize    = 64 << 10
	DefaultMaxSessionSize  = 512 << 10
	DefaultUpdateAttempts  = 16
)

// Default names of the session cookie, when CookieConfig.Name is empty.
const (
	// DefaultCookieName is the name of a cookie that is Secure, has Path
	// "/" and no Domain (the defaults). Browsers refuse a __Host- cookie
	// without those attributes, so a sibling subdomain or a page served
	// over plain HTTP cannot plant a token of its choosing in the
	// browser before login (session fixation).
	DefaultCookieName = "__Host-session"
	// FallbackCookieName is the name of a cookie that cannot carry the
	// __Host- prefix: with WithInsecureCookie, a Domain, or a Path other
	// than "/".
	FallbackCookieName = "session"
)

// Codec turns values into bytes and back. It must be safe for concurrent use.
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSONCodec is the default Codec: encoding/json. The commonest session
// values, strings of printable ASCII and integers, skip its reflection for
// the same bytes and the same results (FuzzJSONCodec): Marshal gives what
// json.Marshal gives, Unmarshal what json.Unmarshal does, anything else goes
// to encoding/json.
type JSONCodec struct{}

// Marshal implements Codec.
func (JSONCodec) Marshal(v any) ([]byte, error) {
	switch x := v.(type) {
	case string:
		// json.Marshal escapes <, > and & (for HTML) as well as what JSON
		// must.
		if plainASCII(x, true) {
			b := make([]byte, 0, len(x)+2)
			b = append(b, '"')
			b = append(b, x...)
			return append(b, '"'), nil
		}
	case int:
		return strconv.AppendInt(nil, int64(x), 10), nil
	case int64:
		return strconv.AppendInt(nil, x, 10), nil
	case bool:
		return strconv.AppendBool(nil, x), nil
	}
	return json.Marshal(v)
}

// Unmarshal implements Codec.
func (JSONCodec) Unmarshal(data []byte, v any) error {
	switch p := v.(type) {
	case *string:
		if n := len(data); p != nil && n >= 2 && data[0] == '"' && data[n-1] == '"' && plainASCII(data[1:n-1], false) {
			*p = string(data[1 : n-1])
			return nil
		}
	case *int:
		if i, ok := jsonInt(data); p != nil && ok && int64(int(i)) == i {
			*p = int(i)
			return nil
		}
	case *int64:
		if i, ok := jsonInt(data); p != nil && ok {
			*p = i
			return nil
		}
	}
	return json.Unmarshal(data, v)
}

// plainASCII reports whether s is printable ASCII that a JSON string holds
// as it is: no quote, no backslash, and with html no <, > or & (which
// json.Marshal escapes).
func plainASCII[S string | []byte](s S, html bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || html && (c == '<' || c == '>' || c == '&') {
			return false
		}
	}
	return true
}

// jsonInt parses data if it is a JSON integer (an optional minus, then 0 or
// digits not starting with 0) that fits in an int64: what json.Unmarshal
// takes into an integer without an error.
func jsonInt(data []byte) (int64, bool) {
	d := data
	if len(d) > 0 && d[0] == '-' {
		d = d[1:]
	}
	if len(d) == 0 || len(d) > 1 && d[0] == '0' {
		return 0, false
	}
	for _, c := range d {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	i, err := strconv.ParseInt(string(data), 10, 64)
	return i, err == nil
}

// CookieConfig shapes the session cookie; NewManager refuses a Name, Path
// or Domain that a cookie cannot carry. Its zero value means the defaults:
// name "__Host-session" (DefaultCookieName), Path "/", no Domain,
// SameSite=Lax, HttpOnly and Secure always, and a Max-Age equal to the
// absolute timeout. Browsers refuse a __Host- cookie unless it is Secure,
// has Path "/" and no Domain, so a sibling subdomain or a page served over
// plain HTTP cannot plant a session of its choosing (fixation).
//
// An empty Name becomes "session" (FallbackCookieName) when the cookie
// cannot carry the prefix: with WithInsecureCookie, a Domain, or a Path
// other than "/"; such a cookie can be planted by a sibling subdomain (or,
// without Secure, by anyone on the network path). A Name set here is kept
// as it is; a __Host- name with any of those, or a __Secure- name with
// WithInsecureCookie, is refused by NewManager (the prefixes in any case, as
// browsers match them).
//
// Changing the name, explicitly or by changing the attributes above (or by
// upgrading from a version whose default name was "session"), ends every
// session held under the old name: a request carrying only the old cookie
// has no session, as a new visitor. While instances using either name serve
// one site (a rolling upgrade), each reads only its own cookie: a login
// through one name is not seen by instances using the other, and a logout
// (Destroy) clears one cookie only, leaving the other name's session live
// until it expires (to come back with a rollback). To upgrade without that,
// set Name to "session" first, and move to the new name in a rollout of its
// own, when that split is acceptable.
type CookieConfig struct {
	Name     string
	Path     string
	Domain   string
	SameSite http.SameSite
	// BrowserSession drops Max-Age: the cookie ends when the browser closes
	// (the server-side timeouts apply all the same).
	BrowserSession bool
}

// EncryptionKey is a named AES-256 key for values at rest (see
// WithEncryption).
type EncryptionKey struct {
	// Name identifies the key in each ciphertext (1 to 255 bytes), so that
	// old values stay readable after a new key is put first.
	Name string
	// Secret is 32 random bytes.
	Secret []byte
}

// ErrorHandler answers a request whose session store failed.
type ErrorHandler func(w http.ResponseWriter, r *http.Request, err error)

// Option configures a Manager.
type Option interface{ apply(*config) }

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

type config struct {
	idle, absolute, grace time.Duration
	cookie                CookieConfig
	insecure              bool
	codec                 Codec
	maxValue, maxSession  int
	keys                  []EncryptionKey
	sealV1                bool
	errorHandler          ErrorHandler
	retryAfter            time.Duration
	logger                *slog.Logger
	meterProvider         metric.MeterProvider
	updateAttempts        int
	now                   func() time.Time // WithClock in tests
}

// WithIdleTimeout ends a session not used for d (DefaultIdleTimeout).
func WithIdleTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) { c.idle = d })
}

// WithAbsoluteTimeout ends a session d after it was created, however active
// (DefaultAbsoluteTimeout).
func WithAbsoluteTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) { c.absolute = d })
}

// WithRenewGrace sets how long the old token keeps working after a Renew, for
// requests already in flight (DefaultRenewGrace). A request that finds its
// token ended after running for half of it (and a second) or more sets no
// cookie (see Manager.Middleware).
func WithRenewGrace(d time.Duration) Option {
	return optionFunc(func(c *config) { c.grace = d })
}

// WithCookie shapes the cookie; zero fields keep their defaults.
func WithCookie(cc CookieConfig) Option {
	return optionFunc(func(c *config) { c.cookie = cc })
}

// WithInsecureCookie drops the Secure flag, for development over plain HTTP
// only: a session cookie sent in clear text can be stolen. The default name
// is then "session" (FallbackCookieName): browsers refuse a __Host- cookie
// that is not Secure.
func WithInsecureCookie() Option {
	return optionFunc(func(c *config) { c.insecure = true })
}

// WithCodec sets how values are encoded (JSONCodec by default).
func WithCodec(codec Codec) Option {
	return optionFunc(func(c *config) { c.codec = codec })
}

// WithLimits bounds the encoded size of one value and of a whole session
// (DefaultMaxValueSize, DefaultMaxSessionSize): a session's size is the sum
// of its keys' lengths and its values' lengths as stored (with
// WithEncryption, sealed). A Put beyond either fails with an error matching
// ErrTooLarge; when the session was not read in the request, the store may
// refuse it at save instead (see Session.Put).
func WithLimits(maxValue, maxSession int) Option {
	return optionFunc(func(c *config) { c.maxValue, c.maxSession = maxValue, maxSession })
}

// WithEncryption encrypts values at rest with AES-256-GCM. The first key
// encrypts; every key decrypts, so a key is rotated by putting a new one
// first and dropping the old one once no session holds values under it
// (after the absolute timeout). Each ciphertext is bound to its session ID,
// its key and the key name, so a value copied to another session or key
// does not decrypt.
//
// In a fleet, where a rolling deployment runs old and new configurations
// side by side, rotate in three deployments: add the new key last (every
// instance can then decrypt it, none encrypts with it yet); once no
// instance lacks it, put it first; after the absolute timeout, drop the
// old one. Putting a new key first in one step lets the upgraded instances
// seal values that the others cannot open until they are upgraded too: a
// Get there fails with ErrDecrypt, and so does a renewal (a login), which
// copies every value, answered with 500. Dropping a key likewise waits
// until no instance encrypts with it.
//
// Values are sealed under a key derived for each session from the
// configured one (HKDF-SHA256, the session ID in its info), with a random
// 96-bit nonce. Random nonces are safe for about 2^32 seals under one key
// (NIST SP 800-38D): with a key per session, that bound is on the seals
// (Puts, Updates and renewals) of one session, not of the whole fleet
// between two rotations. Values sealed under the configured key itself, as
// before per-session keys (and with WithEncryptionV1), still decrypt.
func WithEncryption(keys ...EncryptionKey) Option {
	return optionFunc(func(c *config) { c.keys = keys })
}

// WithEncryptionV1 seals values in the format of earlier versions of this
// package, under the configured key itself, for a rolling upgrade of a
// fleet that encrypts: those versions cannot decrypt what WithEncryption
// seals now, and would fail the requests of sessions written by upgraded
// instances. Deploy with it until no earlier instance remains (every
// instance of this version reads both formats), then without it. While it
// is set, the bound of WithEncryption applies to all the seals under one
// key, fleet-wide, until the next rotation. It needs WithEncryption.
func WithEncryptionV1() Option {
	return optionFunc(func(c *config) { c.sealV1 = true })
}

// WithErrorHandler sets what answers a request when the store fails, or
// refuses to save a session over its size limit (an error matching
// ErrTooLarge; see Session.Put). By default: 503 Service Unavailable with
// Retry-After (WithRetryAfter) for a failure, and for a write that a
// concurrent request's change to the session beat (an error matching
// ErrConflict: a retry reads the session again), with a body that tells
// the two apart; 500 Internal Server Error for a session too large, or
// holding a value that does not decrypt (an error matching ErrDecrypt: a
// renewal copies every value).
func WithErrorHandler(h ErrorHandler) Option {
	return optionFunc(func(c *config) { c.errorHandler = h })
}

// WithRetryAfter sets the Retry-After of the default error handler (1s).
func WithRetryAfter(d time.Duration) Option {
	return optionFunc(func(c *config) { c.retryAfter = d })
}

// WithLogger sets where store failures are logged (nowhere by default).
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(c *config) { c.logger = l })
}

// WithMeterProvider sets the OpenTelemetry meter provider (the global one by
// default).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(c *config) { c.meterProvider = mp })
}

// WithUpdateAttempts bounds the compare-and-set attempts of Update
// (DefaultUpdateAttempts).
func WithUpdateAttempts(n int) Option {
	return optionFunc(func(c *config) { c.updateAttempts = n })
}

func (c *config) defaults() {
	if c.idle == 0 {
		c.idle = DefaultIdleTimeout
	}
	if c.absolute == 0 {
		c.absolute = DefaultAbsoluteTimeout
	}
	if c.grace == 0 {
		c.grace = DefaultRenewGrace
	}
	if c.cookie.Path == "" {
		c.cookie.Path = "/"
	}
	if c.cookie.Name == "" {
		c.cookie.Name = DefaultCookieName
		if c.insecure || c.cookie.Domain != "" || c.cookie.Path != "/" {
			c.cookie.Name = FallbackCookieName
		}
	}
	if c.cookie.SameSite == 0 {
		c.cookie.SameSite = http.SameSiteLaxMode
	}
	if c.codec == nil {
		c.codec = JSONCodec{}
	}
	if c.maxValue == 0 {
		c.maxValue = DefaultMaxValueSize
	}
	if c.maxSession == 0 {
		c.maxSession = DefaultMaxSessionSize
	}
	if c.retryAfter == 0 {
		c.retryAfter = time.Second
	}
	if c.errorHandler == nil {
		retry := strconv.Itoa(int((c.retryAfter + time.Second - 1) / time.Second))
		c.errorHandler = func(w http.ResponseWriter, _ *http.Request, err error) {
			switch { // retrying would not help
			case errors.Is(err, ErrTooLarge):
				http.Error(w, "session too large", http.StatusInternalServerError)
				return
			case errors.Is(err, ErrDecrypt):
				http.Error(w, "session value does not decrypt", http.StatusInternalServerError)
				return
			}
			w.Header().Set("Retry-After", retry)
			if errors.Is(err, ErrConflict) { // a concurrent request changed the session first
				http.Error(w, "session changed concurrently; retry", http.StatusServiceUnavailable)
				return
			}
			http.Error(w, "session store unavailable", http.StatusServiceUnavailable)
		}
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	if c.updateAttempts == 0 {
		c.updateAttempts = DefaultUpdateAttempts
	}
	if c.now == nil {
		c.now = time.Now
	}
}

func (c *config) validate() (map[string]*sealKey, error) {
	switch {
	case c.idle < 0 || c.absolute < 0 || c.grace < 0 || c.retryAfter < 0:
		return nil, errors.New("session: negative timeout")
	case c.idle > c.absolute:
		return nil, fmt.Errorf("session: idle timeout %v longer than absolute timeout %v", c.idle, c.absolute)
	case c.maxValue < 0 || c.maxSession < 0 || c.maxValue > c.maxSession:
		return nil, fmt.Errorf("session: limits %d per value, %d per session: want 0 < value <= session", c.maxValue, c.maxSession)
	case c.updateAttempts < 0:
		return nil, errors.New("session: negative update attempts")
	case !validCookieName(c.cookie.Name):
		return nil, fmt.Errorf("session: invalid cookie name %q", c.cookie.Name)
	case c.cookie.SameSite == http.SameSiteNoneMode && c.insecure:
		return nil, errors.New("session: SameSite=None needs a Secure cookie")
	}
	// net/http would drop a bad Domain (the cookie becoming host-only) or
	// a Path's bad bytes when writing the cookie, and log it each time.
	probe := http.Cookie{Name: c.cookie.Name, Value: "x", Path: c.cookie.Path, Domain: c.cookie.Domain}
	if err := probe.Valid(); err != nil {
		return nil, fmt.Errorf("session: cookie: %w", err)
	}
	// Browsers match the prefixes without regard to case (RFC 6265bis), and
	// drop a cookie that lacks what its prefix demands: no session would
	// ever come back.
	switch name := c.cookie.Name; {
	case hasPrefixFold(name, "__Host-") && (c.insecure || c.cookie.Domain != "" || c.cookie.Path != "/"):
		return nil, errors.New("session: a __Host- cookie must be Secure, with Path / and no Domain")
	case hasPrefixFold(name, "__Secure-") && c.insecure:
		return nil, errors.New("session: a __Secure- cookie must be Secure")
	}
	if len(c.keys) == 0 {
		if c.sealV1 {
			return nil, errors.New("session: WithEncryptionV1 without WithEncryption")
		}
		return nil, nil
	}
	keys := make(map[string]*sealKey, len(c.keys))
	for _, k := range c.keys {
		if len(k.Name) == 0 || len(k.Name) > 255 {
			return nil, fmt.Errorf("session: encryption key name %q: want 1 to 255 bytes", k.Name)
		}
		if len(k.Secret) != 32 {
			return nil, fmt.Errorf("session: encryption key %q: %d bytes, want 32", k.Name, len(k.Secret))
		}
		if _, dup := keys[k.Name]; dup {
			return nil, fmt.Errorf("session: encryption key %q given twice", k.Name)
		}
		sk, err := newSealKey(k.Secret)
		if err != nil {
			return nil, fmt.Errorf("session: encryption key %q: %w", k.Name, err)
		}
		keys[k.Name] = sk
	}
	return keys, nil
}

func validCookieName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || c == '=' || c == ';' || c == ',' || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// hasPrefixFold reports whether s begins with prefix, ignoring ASCII case.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}
