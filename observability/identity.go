package observability

import (
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Environment variables NewIdentity reads, through IdentityConfig.Getenv, for
// the fields the config leaves empty.
const (
	// EnvInstanceID names the instance explicitly. It wins over every
	// other source.
	EnvInstanceID = "ACTIVEKIT_INSTANCE_ID"
	// EnvEnvironment is the deployment environment (for example
	// "production") when IdentityConfig.Environment is empty.
	EnvEnvironment = "ACTIVEKIT_ENVIRONMENT"
	// EnvServiceName is the standard OpenTelemetry variable, used for the
	// service name when IdentityConfig.ServiceName is empty.
	EnvServiceName = "OTEL_SERVICE_NAME"
)

// maxIDLen bounds service names, instance IDs and environments. Kubernetes pod
// names are at most 253 characters; the host-pid-random fallback adds 18 at most
// to a host name of at most 64 (Linux HOST_NAME_MAX).
const maxIDLen = 256

// ErrInvalidIdentity is returned, wrapped with the offending field, by
// NewIdentity and by Setup when an identity is missing or unusable.
var ErrInvalidIdentity = errors.New("observability: invalid identity")

// Identity names one running instance of a service. Compute it once at boot
// with NewIdentity and hand the same value to everything that needs to say
// which instance it is: the OpenTelemetry resource (Setup), the log handler
// (NewLogHandler), service registration and health output.
//
// An Identity is an immutable value, safe to copy and to use from many
// goroutines. The zero Identity has no fields; Setup rejects it and
// NewLogHandler adds nothing for it.
type Identity struct {
	serviceName    string
	serviceVersion string
	environment    string
	instanceID     string
}

// IdentityConfig says how NewIdentity computes an Identity. The zero value
// of every field except ServiceName means "find it out".
type IdentityConfig struct {
	// ServiceName is the logical name shared by every instance of the
	// service, such as "orders". Required, either here or in the
	// OTEL_SERVICE_NAME environment variable. Letters, digits, '.', '_' and
	// '-' only, starting with a letter or digit, so that it is usable as a
	// Consul service name and in metric labels.
	ServiceName string

	// ServiceVersion is the version of the running build. Empty means the
	// main module version from the build information, or the VCS revision
	// when the module version is "(devel)".
	ServiceVersion string

	// Environment is the deployment environment ("production", "staging").
	// Empty means ACTIVEKIT_ENVIRONMENT, and it may stay empty. Same
	// characters as ServiceName.
	Environment string

	// InstanceID names this instance uniquely among all instances of the
	// service. Empty means the first of: ACTIVEKIT_INSTANCE_ID; POD_NAME;
	// HOSTNAME when KUBERNETES_SERVICE_HOST is set (inside a Kubernetes pod
	// HOSTNAME is the pod name); the host name and process id with 8
	// random hex digits, as "host-pid-1f2e3d4c" (host and pid alone repeat
	// across containers that share the host's name, each its own pid 1);
	// a random UUID. Same characters as ServiceName, so it is safe as a
	// Consul service ID.
	InstanceID string

	// Getenv looks up environment variables. Nil means os.Getenv. Tests
	// inject a map lookup instead of changing the process environment.
	Getenv func(key string) string

	// Hostname returns the host name. Nil means os.Hostname.
	Hostname func() (string, error)

	// BuildInfo returns the build information. Nil means
	// debug.ReadBuildInfo.
	BuildInfo func() (*debug.BuildInfo, bool)
}

// NewIdentity computes the identity of this instance from cfg, the
// environment and the build information, and validates it. Errors wrap
// ErrInvalidIdentity. It does no I/O beyond looking up the host name.
func NewIdentity(cfg IdentityConfig) (Identity, error) {
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	hostname := cfg.Hostname
	if hostname == nil {
		hostname = os.Hostname
	}
	buildInfo := cfg.BuildInfo
	if buildInfo == nil {
		buildInfo = debug.ReadBuildInfo
	}

	id := Identity{
		serviceName:    cfg.ServiceName,
		serviceVersion: cfg.ServiceVersion,
		environment:    cfg.Environment,
		instanceID:     cfg.InstanceID,
	}
	if id.serviceName == "" {
		id.serviceName = getenv(EnvServiceName)
	}
	if id.serviceVersion == "" {
		id.serviceVersion = versionFromBuildInfo(buildInfo)
	}
	if id.environment == "" {
		id.environment = getenv(EnvEnvironment)
	}
	if id.instanceID == "" {
		id.instanceID = instanceIDFromEnv(getenv, hostname)
	}
	if err := id.validate(); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// instanceIDFromEnv walks the instance ID sources in their documented order.
func instanceIDFromEnv(getenv func(string) string, hostname func() (string, error)) string {
	if v := getenv(EnvInstanceID); v != "" {
		return v
	}
	if v := getenv("POD_NAME"); v != "" {
		return v
	}
	if getenv("KUBERNETES_SERVICE_HOST") != "" {
		if v := getenv("HOSTNAME"); v != "" {
			return v
		}
	}
	if h, err := hostname(); err == nil && h != "" {
		// Host name and pid alone are not unique: containers that share
		// the host's name (host networking) each run the service as pid 1
		// of their own PID namespace.
		u := uuid.New()
		return h + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(u[:4])
	}
	return uuid.NewString()
}

// versionFromBuildInfo returns the main module version, else the VCS
// revision (12 characters, "-dirty" when modified), else "(devel)" when
// there is build information at all, else "".
func versionFromBuildInfo(read func() (*debug.BuildInfo, bool)) string {
	bi, ok := read()
	if !ok || bi == nil {
		return ""
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "(devel)"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

func (id Identity) validate() error {
	if id.serviceName == "" {
		return fmt.Errorf("%w: service name is required", ErrInvalidIdentity)
	}
	if err := checkName(id.serviceName); err != nil {
		return fmt.Errorf("%w: service name %q: %v", ErrInvalidIdentity, id.serviceName, err)
	}
	if err := checkName(id.instanceID); err != nil {
		return fmt.Errorf("%w: instance id %q: %v", ErrInvalidIdentity, id.instanceID, err)
	}
	if id.environment != "" {
		if err := checkName(id.environment); err != nil {
			return fmt.Errorf("%w: environment %q: %v", ErrInvalidIdentity, id.environment, err)
		}
	}
	for _, r := range id.serviceVersion {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: service version %q: control character", ErrInvalidIdentity, id.serviceVersion)
		}
	}
	return nil
}

// checkName accepts [A-Za-z0-9][A-Za-z0-9._-]*, at most maxIDLen long: safe in
// Consul service names and IDs, URLs, DNS labels (less the dots) and metric
// labels.
func checkName(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	if len(s) > maxIDLen {
		return fmt.Errorf("longer than %d characters", maxIDLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return errors.New("must start with a letter or digit")
		}
		if !alnum && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("character %q not allowed (letters, digits, '.', '_', '-')", c)
		}
	}
	return nil
}

// ServiceName returns the logical service name (service.name).
func (id Identity) ServiceName() string { return id.serviceName }

// ServiceVersion returns the version of the running build
// (service.version), possibly empty.
func (id Identity) ServiceVersion() string { return id.serviceVersion }

// Environment returns the deployment environment
// (deployment.environment.name), possibly empty.
func (id Identity) Environment() string { return id.environment }

// InstanceID returns the ID of this instance (service.instance.id). It is
// safe to use as a Consul service ID.
func (id Identity) InstanceID() string { return id.instanceID }

// IsZero reports whether id is the zero Identity.
func (id Identity) IsZero() bool { return id == Identity{} }

// Attributes returns the identity as OpenTelemetry semantic convention
// attributes, omitting empty fields.
func (id Identity) Attributes() []attribute.KeyValue {
	attrs := make([]attribute.KeyValue, 0, 4)
	add := func(k attribute.Key, v string) {
		if v != "" {
			attrs = append(attrs, k.String(v))
		}
	}
	add(semconv.ServiceNameKey, id.serviceName)
	add(semconv.ServiceVersionKey, id.serviceVersion)
	add(semconv.ServiceInstanceIDKey, id.instanceID)
	add(semconv.DeploymentEnvironmentNameKey, id.environment)
	return attrs
}

// Resource returns the OpenTelemetry resource for this instance: the SDK's
// default resource (telemetry.sdk.* and OTEL_RESOURCE_ATTRIBUTES) with the
// identity attributes laid over it, so the identity wins over the
// environment.
func (id Identity) Resource() *resource.Resource {
	own := resource.NewSchemaless(id.Attributes()...)
	merged, err := resource.Merge(resource.Default(), own)
	if err != nil {
		// A schemaless resource cannot conflict; keep the identity anyway.
		return own
	}
	return merged
}

// LogAttrs returns the identity as slog attributes with the same keys as
// Attributes, omitting empty fields.
func (id Identity) LogAttrs() []slog.Attr {
	kvs := id.Attributes()
	attrs := make([]slog.Attr, len(kvs))
	for i, kv := range kvs {
		attrs[i] = slog.String(string(kv.Key), kv.Value.AsString())
	}
	return attrs
}

// LogValue implements slog.LogValuer: an Identity logged as one attribute
// becomes a group of its fields.
func (id Identity) LogValue() slog.Value {
	return slog.GroupValue(id.LogAttrs()...)
}

// String returns a short human-readable form such as
// "orders@1.4.2/production/orders-7d9f-abcde".
func (id Identity) String() string {
	var b strings.Builder
	b.WriteString(id.serviceName)
	if id.serviceVersion != "" {
		b.WriteString("@")
		b.WriteString(id.serviceVersion)
	}
	if id.environment != "" {
		b.WriteString("/")
		b.WriteString(id.environment)
	}
	b.WriteString("/")
	b.WriteString(id.instanceID)
	return b.String()
}
