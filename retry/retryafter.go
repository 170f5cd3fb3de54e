package retry

import (
	"net/http"
	"strings"
	"time"
)

// MaxRetryAfter is the longest Retry-After ParseRetryAfter accepts. A longer
// one is more likely a bug or an attack than advice worth following.
const MaxRetryAfter = 24 * time.Hour

// ParseRetryAfter parses the value of an HTTP Retry-After header (RFC 9110,
// section 10.2.3): either delta-seconds ("120") or an HTTP-date ("Wed, 21
// Oct 2015 07:28:00 GMT", and the obsolete RFC 850 and asctime forms),
// which is turned into a delay from now. Surrounding spaces are ignored.
//
// It reports false for an empty or malformed value, for a sign or fraction
// ("-1", "+1", "1.5"), and for a delay over MaxRetryAfter. A date in the
// past means "now" and gives 0.
//
// Use the delay with After, so that it is a floor on the next delay.
func ParseRetryAfter(value string, now time.Time) (time.Duration, bool) {
	value = strings.Trim(value, " \t")
	if value == "" {
		return 0, false
	}
	if c := value[0]; c >= '0' && c <= '9' {
		return parseDeltaSeconds(value)
	}
	t, err := http.ParseTime(value)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	switch {
	case d < 0:
		return 0, true
	case d > MaxRetryAfter:
		return 0, false
	}
	return d, true
}

func parseDeltaSeconds(s string) (time.Duration, bool) {
	const maxSeconds = int64(MaxRetryAfter / time.Second)
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
		if n > maxSeconds {
			return 0, false
		}
	}
	return time.Duration(n) * time.Second, true
}

// ResponseRetryAfter returns the Retry-After delay of resp, as
// ParseRetryAfter does. For the HTTP-date form it measures from the
// response's Date header when that is valid, so that a skew between the
// server's clock and ours does not change the delay; otherwise from now.
// It reports false for a nil response or a missing or invalid header.
func ResponseRetryAfter(resp *http.Response, now time.Time) (time.Duration, bool) {
	if resp == nil {
		return 0, false
	}
	v := resp.Header.Get("Retry-After")
	if v == "" {
		return 0, false
	}
	if date, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
		now = date
	}
	return ParseRetryAfter(v, now)
}
