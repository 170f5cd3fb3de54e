package observability_test

import (
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"

	"github.com/activekit/activekit/observability"
)

// envMap is an injectable environment.
func envMap(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func hostnameOK() (string, error) { return "host-a", nil }

func noBuildInfo() (*debug.BuildInfo, bool) { return nil, false }

func TestNewIdentityInstanceIDSources(t *testing.T) {
	pid := fmt.Sprint(os.Getpid())
	tests := []struct {
		name     string
		cfgID    string
		env      map[string]string
		hostname func() (string, error)
		want     string // "uuid" means any random UUID; a trailing "*", 8 random hex digits
	}{
		{
			name:  "config wins over everything",
			cfgID: "explicit-1",
			env:   map[string]string{"ACTIVEKIT_INSTANCE_ID": "env-1", "POD_NAME": "pod-1"},
			want:  "explicit-1",
		},
		{
			name: "ACTIVEKIT_INSTANCE_ID wins over the pod name",
			env:  map[string]string{"ACTIVEKIT_INSTANCE_ID": "env-1", "POD_NAME": "pod-1", "KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOSTNAME": "pod-h"},
			want: "env-1",
		},
		{
			name: "POD_NAME wins over HOSTNAME in kubernetes",
			env:  map[string]string{"POD_NAME": "pod-1", "KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOSTNAME": "pod-h"},
			want: "pod-1",
		},
		{
			name: "HOSTNAME in kubernetes",
			env:  map[string]string{"KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOSTNAME": "orders-7d9f-abcde"},
			want: "orders-7d9f-abcde",
		},
		{
			name: "HOSTNAME outside kubernetes is ignored",
			env:  map[string]string{"HOSTNAME": "from-env"},
			want: "host-a-" + pid + "-*",
		},
		{
			name: "host name and pid",
			env:  map[string]string{},
			want: "host-a-" + pid + "-*",
		},
		{
			name:     "random uuid when the host name fails",
			env:      map[string]string{},
			hostname: func() (string, error) { return "", errors.New("no host name") },
			want:     "uuid",
		},
		{
			name:     "random uuid when the host name is empty",
			env:      map[string]string{},
			hostname: func() (string, error) { return "", nil },
			want:     "uuid",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hostname := tt.hostname
			if hostname == nil {
				hostname = hostnameOK
			}
			id, err := observability.NewIdentity(observability.IdentityConfig{
				ServiceName: "orders",
				InstanceID:  tt.cfgID,
				Getenv:      envMap(tt.env),
				Hostname:    hostname,
				BuildInfo:   noBuildInfo,
			})
			if err != nil {
				t.Fatalf("NewIdentity: %v", err)
			}
			got := id.InstanceID()
			if tt.want == "uuid" {
				if _, err := uuid.Parse(got); err != nil {
					t.Fatalf("instance id %q is not a UUID: %v", got, err)
				}
				return
			}
			if prefix, ok := strings.CutSuffix(tt.want, "*"); ok {
				rest, found := strings.CutPrefix(got, prefix)
				if _, err := hex.DecodeString(rest); !found || len(rest) != 8 || err != nil {
					t.Fatalf("instance id = %q, want %q and 8 hex digits", got, prefix)
				}
				return
			}
			if got != tt.want {
				t.Fatalf("instance id = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNewIdentityRandomUUIDsDiffer(t *testing.T) {
	cfg := observability.IdentityConfig{
		ServiceName: "orders",
		Getenv:      envMap(nil),
		Hostname:    func() (string, error) { return "", errors.New("none") },
		BuildInfo:   noBuildInfo,
	}
	a, err := observability.NewIdentity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := observability.NewIdentity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a.InstanceID() == b.InstanceID() {
		t.Fatalf("two fallback instance ids are equal: %q", a.InstanceID())
	}
}

// TestNewIdentityHostPidFallbackUnique: two containers on one host that
// share its host name (host networking) each run the service as pid 1 of
// their own PID namespace, so host name and pid are the same in both; their
// instance IDs must still differ, or the second registration in Consul
// replaces the first and both write logs and metrics as one instance.
func TestNewIdentityHostPidFallbackUnique(t *testing.T) {
	cfg := observability.IdentityConfig{
		ServiceName: "orders",
		Getenv:      envMap(nil),
		Hostname:    hostnameOK,
		BuildInfo:   noBuildInfo,
	}
	a, err := observability.NewIdentity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := observability.NewIdentity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a.InstanceID() == b.InstanceID() {
		t.Fatalf("two instances with the same host name and pid share the instance id %q", a.InstanceID())
	}
}

func TestNewIdentityVersion(t *testing.T) {
	info := func(version string, settings ...debug.BuildSetting) func() (*debug.BuildInfo, bool) {
		return func() (*debug.BuildInfo, bool) {
			return &debug.BuildInfo{Main: debug.Module{Path: "example.com/orders", Version: version}, Settings: settings}, true
		}
	}
	tests := []struct {
		name      string
		cfg       string
		buildInfo func() (*debug.BuildInfo, bool)
		want      string
	}{
		{name: "module version", buildInfo: info("v1.4.2"), want: "v1.4.2"},
		{name: "config wins", cfg: "2.0.0", buildInfo: info("v1.4.2"), want: "2.0.0"},
		{
			name:      "vcs revision when devel",
			buildInfo: info("(devel)", debug.BuildSetting{Key: "vcs.revision", Value: "0123456789abcdef0123"}, debug.BuildSetting{Key: "vcs.modified", Value: "false"}),
			want:      "0123456789ab",
		},
		{
			name:      "dirty vcs revision",
			buildInfo: info("(devel)", debug.BuildSetting{Key: "vcs.revision", Value: "0123456789abcdef0123"}, debug.BuildSetting{Key: "vcs.modified", Value: "true"}),
			want:      "0123456789ab-dirty",
		},
		{name: "devel without vcs", buildInfo: info("(devel)"), want: "(devel)"},
		{name: "no build info", buildInfo: noBuildInfo, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := observability.NewIdentity(observability.IdentityConfig{
				ServiceName:    "orders",
				ServiceVersion: tt.cfg,
				Getenv:         envMap(nil),
				Hostname:       hostnameOK,
				BuildInfo:      tt.buildInfo,
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := id.ServiceVersion(); got != tt.want {
				t.Fatalf("version = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNewIdentityRealBuildInfo(t *testing.T) {
	// The test binary has build information: the default reader must find
	// a non-empty version.
	id, err := observability.NewIdentity(observability.IdentityConfig{ServiceName: "orders", Getenv: envMap(nil), Hostname: hostnameOK})
	if err != nil {
		t.Fatal(err)
	}
	if id.ServiceVersion() == "" {
		t.Fatal("version from debug.ReadBuildInfo is empty")
	}
}

func TestNewIdentityEnvironmentAndNameFromEnv(t *testing.T) {
	id, err := observability.NewIdentity(observability.IdentityConfig{
		Getenv:    envMap(map[string]string{"OTEL_SERVICE_NAME": "billing", "ACTIVEKIT_ENVIRONMENT": "staging", "ACTIVEKIT_INSTANCE_ID": "b-1"}),
		Hostname:  hostnameOK,
		BuildInfo: noBuildInfo,
	})
	if err != nil {
		t.Fatal(err)
	}
	if id.ServiceName() != "billing" || id.Environment() != "staging" || id.InstanceID() != "b-1" {
		t.Fatalf("identity = %v", id)
	}
	// Config wins over the environment.
	id, err = observability.NewIdentity(observability.IdentityConfig{
		ServiceName: "orders",
		Environment: "production",
		Getenv:      envMap(map[string]string{"OTEL_SERVICE_NAME": "billing", "ACTIVEKIT_ENVIRONMENT": "staging"}),
		Hostname:    hostnameOK,
		BuildInfo:   noBuildInfo,
	})
	if err != nil {
		t.Fatal(err)
	}
	if id.ServiceName() != "orders" || id.Environment() != "production" {
		t.Fatalf("identity = %v", id)
	}
}

func TestNewIdentityValidation(t *testing.T) {
	long := strings.Repeat("a", 257)
	tests := []struct {
		name string
		cfg  observability.IdentityConfig
		env  map[string]string
		want string // substring of the error
	}{
		{name: "missing service name", cfg: observability.IdentityConfig{}, want: "service name is required"},
		{name: "space in service name", cfg: observability.IdentityConfig{ServiceName: "my orders"}, want: "service name"},
		{name: "service name starts with dash", cfg: observability.IdentityConfig{ServiceName: "-orders"}, want: "must start with a letter or digit"},
		{name: "slash in instance id", cfg: observability.IdentityConfig{ServiceName: "orders", InstanceID: "a/b"}, want: "instance id"},
		{name: "unsafe instance id from env", cfg: observability.IdentityConfig{ServiceName: "orders"}, env: map[string]string{"ACTIVEKIT_INSTANCE_ID": "a b"}, want: "instance id"},
		{name: "instance id too long", cfg: observability.IdentityConfig{ServiceName: "orders", InstanceID: long}, want: "longer than 256"},
		{name: "bad environment", cfg: observability.IdentityConfig{ServiceName: "orders", Environment: "prod:eu"}, want: "environment"},
		{name: "control character in version", cfg: observability.IdentityConfig{ServiceName: "orders", ServiceVersion: "1.0\n"}, want: "service version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Getenv = envMap(tt.env)
			cfg.Hostname = hostnameOK
			cfg.BuildInfo = noBuildInfo
			id, err := observability.NewIdentity(cfg)
			if !errors.Is(err, observability.ErrInvalidIdentity) {
				t.Fatalf("err = %v, want ErrInvalidIdentity", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %q, want it to mention %q", err, tt.want)
			}
			if !id.IsZero() {
				t.Fatalf("identity = %v on error, want zero", id)
			}
		})
	}
}

func testIdentity(t *testing.T) observability.Identity {
	t.Helper()
	id, err := observability.NewIdentity(observability.IdentityConfig{
		ServiceName:    "orders",
		ServiceVersion: "1.4.2",
		Environment:    "production",
		InstanceID:     "orders-7d9f-abcde",
		Getenv:         envMap(nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestIdentityRepresentations(t *testing.T) {
	id := testIdentity(t)
	want := map[attribute.Key]string{
		"service.name":                "orders",
		"service.version":             "1.4.2",
		"service.instance.id":         "orders-7d9f-abcde",
		"deployment.environment.name": "production",
	}
	attrs := id.Attributes()
	if len(attrs) != len(want) {
		t.Fatalf("Attributes() = %v", attrs)
	}
	for _, kv := range attrs {
		if want[kv.Key] != kv.Value.AsString() {
			t.Errorf("attribute %s = %q, want %q", kv.Key, kv.Value.AsString(), want[kv.Key])
		}
	}

	res := id.Resource()
	for k, v := range want {
		got, ok := res.Set().Value(k)
		if !ok || got.AsString() != v {
			t.Errorf("resource %s = %q (present %v), want %q", k, got.AsString(), ok, v)
		}
	}
	if _, ok := res.Set().Value("telemetry.sdk.language"); !ok {
		t.Error("resource lacks the SDK default attributes")
	}

	logAttrs := id.LogAttrs()
	if len(logAttrs) != len(want) {
		t.Fatalf("LogAttrs() = %v", logAttrs)
	}
	for _, a := range logAttrs {
		if want[attribute.Key(a.Key)] != a.Value.String() {
			t.Errorf("log attr %s = %q", a.Key, a.Value)
		}
	}
	if v := id.LogValue(); v.Kind() != slog.KindGroup || len(v.Group()) != 4 {
		t.Errorf("LogValue() = %v", v)
	}
	if got, want := id.String(), "orders@1.4.2/production/orders-7d9f-abcde"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestIdentityOmitsEmptyFields(t *testing.T) {
	id, err := observability.NewIdentity(observability.IdentityConfig{
		ServiceName: "orders", InstanceID: "i-1", Getenv: envMap(nil), BuildInfo: noBuildInfo,
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(id.Attributes()); got != 2 {
		t.Fatalf("Attributes() has %d entries, want 2: %v", got, id.Attributes())
	}
	if got, want := id.String(), "orders/i-1"; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}
