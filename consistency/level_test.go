package consistency_test

import (
	"errors"
	"testing"
	"time"

	"github.com/activekit/activekit/consistency"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"
)

func TestLevelMapping(t *testing.T) {
	tests := []struct {
		level    consistency.Level
		name     string
		w        any
		journal  bool // j=true set
		rc       string
		mode     readpref.Mode
		txnRead  string
		parseErr bool
	}{
		{consistency.Strong, "strong", writeconcern.WCMajority, true, "majority", readpref.PrimaryMode, "snapshot", false},
		{consistency.Causal, "causal", writeconcern.WCMajority, false, "majority", readpref.NearestMode, "snapshot", false},
		{consistency.Fast, "fast", 1, false, "local", readpref.NearestMode, "local", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.level
			if got := l.String(); got != tc.name {
				t.Errorf("String() = %q, want %q", got, tc.name)
			}
			wc := l.WriteConcern()
			if wc.W != tc.w {
				t.Errorf("w = %v, want %v", wc.W, tc.w)
			}
			if j := wc.Journal != nil && *wc.Journal; j != tc.journal {
				t.Errorf("j = %v, want %v", j, tc.journal)
			}
			if got := l.ReadConcern().Level; got != tc.rc {
				t.Errorf("read concern = %q, want %q", got, tc.rc)
			}
			if got := l.ReadPreference().Mode(); got != tc.mode {
				t.Errorf("read preference = %v, want %v", got, tc.mode)
			}

			var co options.CollectionOptions
			for _, f := range l.CollectionOptions().List() {
				if err := f(&co); err != nil {
					t.Fatal(err)
				}
			}
			if co.WriteConcern.W != tc.w || co.ReadConcern.Level != tc.rc || co.ReadPreference.Mode() != tc.mode {
				t.Errorf("collection options = %+v %+v %v", co.WriteConcern, co.ReadConcern, co.ReadPreference)
			}
			var do options.DatabaseOptions
			for _, f := range l.DatabaseOptions().List() {
				if err := f(&do); err != nil {
					t.Fatal(err)
				}
			}
			if do.WriteConcern.W != tc.w || do.ReadConcern.Level != tc.rc || do.ReadPreference.Mode() != tc.mode {
				t.Errorf("database options = %+v %+v %v", do.WriteConcern, do.ReadConcern, do.ReadPreference)
			}
			var to options.TransactionOptions
			for _, f := range l.TransactionOptions().List() {
				if err := f(&to); err != nil {
					t.Fatal(err)
				}
			}
			if to.WriteConcern.W != tc.w || to.ReadConcern.Level != tc.txnRead || to.ReadPreference.Mode() != readpref.PrimaryMode {
				t.Errorf("transaction options = %+v %+v %v", to.WriteConcern, to.ReadConcern, to.ReadPreference)
			}

			co2 := consistency.ClientOptions(l, 0)
			if err := co2.Validate(); err != nil {
				t.Fatal(err)
			}
			if co2.RetryWrites == nil || !*co2.RetryWrites || co2.RetryReads == nil || !*co2.RetryReads {
				t.Error("retryable reads and writes are not both on")
			}
			if co2.Timeout == nil || *co2.Timeout != consistency.DefaultOperationTimeout {
				t.Errorf("timeout = %v, want %v", co2.Timeout, consistency.DefaultOperationTimeout)
			}
			if co2.WriteConcern.W != tc.w || co2.ReadConcern.Level != tc.rc || co2.ReadPreference.Mode() != tc.mode {
				t.Errorf("client options = %+v %+v %v", co2.WriteConcern, co2.ReadConcern, co2.ReadPreference)
			}

			p, err := consistency.ParseLevel(tc.name)
			if err != nil || p != l {
				t.Errorf("ParseLevel(%q) = %v, %v", tc.name, p, err)
			}
			b, err := l.MarshalText()
			if err != nil || string(b) != tc.name {
				t.Errorf("MarshalText = %q, %v", b, err)
			}
			var u consistency.Level
			if err := u.UnmarshalText(b); err != nil || u != l {
				t.Errorf("UnmarshalText = %v, %v", u, err)
			}
		})
	}
}

func TestLevelZeroIsStrong(t *testing.T) {
	var l consistency.Level
	if l != consistency.Strong {
		t.Fatalf("zero Level is %v, want strong", l)
	}
}

func TestClientOptionsTimeout(t *testing.T) {
	if got := *consistency.ClientOptions(consistency.Strong, 3*time.Second).Timeout; got != 3*time.Second {
		t.Errorf("timeout = %v", got)
	}
	if got := consistency.ClientOptions(consistency.Strong, -1).Timeout; got != nil {
		t.Errorf("negative timeout set %v, want none", *got)
	}
}

func TestUnknownLevel(t *testing.T) {
	bad := consistency.Level(7)
	if err := bad.Validate(); !errors.Is(err, consistency.ErrUnknownLevel) {
		t.Errorf("Validate = %v", err)
	}
	if _, err := bad.MarshalText(); !errors.Is(err, consistency.ErrUnknownLevel) {
		t.Errorf("MarshalText = %v", err)
	}
	if _, err := consistency.ParseLevel("eventual"); !errors.Is(err, consistency.ErrUnknownLevel) {
		t.Errorf("ParseLevel = %v", err)
	}
	if bad.String() != "Level(7)" {
		t.Errorf("String = %q", bad.String())
	}
	// An unknown level falls back to Strong's settings, never to weaker ones.
	if bad.ReadPreference().Mode() != readpref.PrimaryMode || bad.WriteConcern().W != writeconcern.WCMajority {
		t.Error("unknown level does not fall back to strong")
	}
}
