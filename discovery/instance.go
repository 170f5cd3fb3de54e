package discovery

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
)

// Errors shared by every Registry, Resolver, Leader, Balancer and Transport.
var (
	// ErrInvalidInstance is wrapped by the error for an Instance that
	// cannot be registered (see Instance.Validate).
	ErrInvalidInstance = errors.New("discovery: invalid instance")
	// ErrInvalidConfig is wrapped by the error a constructor returns for
	// a configuration it cannot use.
	ErrInvalidConfig = errors.New("discovery: invalid config")
	// ErrNoInstances reports that a service has no instance to send a
	// request to: none is registered and healthy, or every one has
	// already been tried by this request.
	ErrNoInstances = errors.New("discovery: no instance available")
	// ErrLeadershipLost is the cause of the context given to a Leader's
	// function when leadership ends for any reason other than the
	// caller's own context ending or the function returning.
	ErrLeadershipLost = errors.New("discovery: leadership lost")
	// ErrClosed reports a call on a Registration, Transport or registry
	// that has been closed.
	ErrClosed = errors.New("discovery: closed")
)

// Instance is one running copy of a service, as a registry knows it.
//
// ID identifies the instance across the fleet (the observability identity's
// instance ID is a good choice); it is the key by which registries,
// watchers and balancers tell instances apart, so two live instances must
// never share one.
type Instance struct {
	// ID is unique across the fleet, stable for the life of the process.
	ID string
	// Service is the logical name callers resolve, such as "orders".
	Service string
	// Address is the host or IP callers dial.
	Address string
	// Port is the TCP port callers dial, from 1 to 65535.
	Port int
	// Tags are free-form labels a resolver may filter on.
	Tags []string
	// Meta is free-form metadata (version, config hash, zone...).
	Meta map[string]string
}

// HostPort returns Address and Port joined for dialing ("10.0.0.7:8080",
// "[::1]:8080").
func (i Instance) HostPort() string {
	return net.JoinHostPort(i.Address, strconv.Itoa(i.Port))
}

// Validate reports, as an error wrapping ErrInvalidInstance, an instance
// that a registry must refuse: an empty ID, Service or Address, a port out of
// range, or a service name that cannot be the host of a URL.
func (i Instance) Validate() error {
	switch {
	case i.ID == "":
		return fmt.Errorf("%w: empty ID", ErrInvalidInstance)
	case i.Address == "":
		return fmt.Errorf("%w: %s: empty address", ErrInvalidInstance, i.ID)
	case i.Port < 1 || i.Port > 65535:
		return fmt.Errorf("%w: %s: port %d is outside 1-65535", ErrInvalidInstance, i.ID, i.Port)
	}
	if err := ValidateServiceName(i.Service); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrInvalidInstance, i.ID, err)
	}
	return nil
}

// ValidateServiceName reports a service name that could not be the host of
// a URL such as http://orders/path: it must be 1 to 63 characters of
// lowercase letters, digits, '-' and '.', and start and end with a letter or
// digit.
func ValidateServiceName(name string) error {
	if name == "" {
		return errors.New("empty service name")
	}
	if len(name) > 63 {
		return fmt.Errorf("service name %q is longer than 63 characters", name)
	}
	for k := 0; k < len(name); k++ {
		c := name[k]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || (c == '-' || c == '.') && k > 0 && k < len(name)-1
		if !ok {
			return fmt.Errorf("service name %q: want lowercase letters, digits, inner '-' and '.'", name)
		}
	}
	return nil
}

// Clone returns a copy of i that shares no slice or map with it.
func (i Instance) Clone() Instance {
	i.Tags = slices.Clone(i.Tags)
	i.Meta = maps.Clone(i.Meta)
	return i
}

// HasTag reports whether i carries tag.
func (i Instance) HasTag(tag string) bool { return slices.Contains(i.Tags, tag) }

// String returns "service/id@host:port", for logs.
func (i Instance) String() string {
	var b strings.Builder
	b.WriteString(i.Service)
	b.WriteByte('/')
	b.WriteString(i.ID)
	b.WriteByte('@')
	b.WriteString(i.HostPort())
	return b.String()
}
