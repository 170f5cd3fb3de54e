package config

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/knadh/koanf/maps"
	kjson "github.com/knadh/koanf/parsers/json"
	ktoml "github.com/knadh/koanf/parsers/toml/v2"
	kyaml "github.com/knadh/koanf/parsers/yaml"
	kenv "github.com/knadh/koanf/providers/env/v2"
)

// Source is one layer of configuration. Layers are merged in the order
// given to New, later ones over earlier ones: nested maps merge key by key,
// any other value (lists included) is replaced whole.
//
// Load returns the layer as a nested map whose keys are the names the
// configuration type uses (its json tags, else its field names; matched
// exactly). Load must be safe to call again; a Store calls it at boot and
// on Reload. A missing optional layer is an empty map, not an error.
type Source interface {
	// Name identifies the source in errors and logs, e.g. "file:app.yaml".
	Name() string
	// Load reads the layer.
	Load(ctx context.Context) (map[string]any, error)
}

// Watcher is a Source that changes at run time. A Store's Watch calls
// Watch once, on its own goroutine, and expects it to block until ctx ends.
//
// Watch calls update with the whole new layer when the source changed, or
// with a nil map and an error when the source could not be read or parsed;
// the Store then keeps the last good layer and reports the error. update
// must not be called after Watch returns, and is never called
// concurrently by one Watcher.
type Watcher interface {
	Source
	Watch(ctx context.Context, update func(layer map[string]any, err error)) error
}

// Format is the syntax of a configuration document.
type Format string

// The formats Parse understands.
const (
	YAML Format = "yaml"
	JSON Format = "json"
	TOML Format = "toml"
)

// FormatOf returns the format of a file name by its extension
// (.yaml, .yml, .json, .toml), or "" when it is none of them.
func FormatOf(name string) Format {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml":
		return YAML
	case ".json":
		return JSON
	case ".toml":
		return TOML
	}
	return ""
}

// Parse parses a configuration document into a nested map. An empty (or
// whitespace-only) document is an empty map. Sources outside this package,
// such as the Consul source, parse through it.
func Parse(format Format, data []byte) (m map[string]any, err error) {
	if strings.TrimSpace(string(data)) == "" {
		return map[string]any{}, nil
	}
	defer func() {
		// The parsers are third-party code fed with whatever an operator
		// pushed; a panic there must be a rejected change, not a crash.
		if r := recover(); r != nil {
			m, err = nil, fmt.Errorf("%w: parsing %s: panic: %v", ErrSource, format, r)
		}
	}()
	switch format {
	case YAML:
		m, err = kyaml.Parser().Unmarshal(data)
	case JSON:
		m, err = kjson.Parser().Unmarshal(data)
	case TOML:
		m, err = ktoml.Parser().Unmarshal(data)
	default:
		return nil, fmt.Errorf("%w: unknown format %q", ErrSource, format)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: parsing %s: %w", ErrSource, format, err)
	}
	if m == nil {
		m = map[string]any{}
	}
	maps.IntfaceKeysToStrings(m)
	return m, nil
}

// File returns a source reading the file at path, in the format its
// extension names. A missing file is an error; see OptionalFile.
func File(path string) Source { return fileSource{path: path} }

// OptionalFile is File, but a missing file is an empty layer.
func OptionalFile(path string) Source { return fileSource{path: path, optional: true} }

type fileSource struct {
	path     string
	optional bool
}

func (f fileSource) Name() string { return "file:" + f.path }

func (f fileSource) Load(context.Context) (map[string]any, error) {
	format := FormatOf(f.path)
	if format == "" {
		return nil, fmt.Errorf("%w: %s: unknown extension (want .yaml, .yml, .json or .toml)", ErrSource, f.path)
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		if f.optional && os.IsNotExist(err) {
			return map[string]any{}, nil
		}
		return nil, fmt.Errorf("%w: %w", ErrSource, err)
	}
	m, err := Parse(format, data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.path, err)
	}
	return m, nil
}

// Env returns a source of the environment variables whose names start with
// prefix (e.g. "APP_"). The rest of the name, lowercased, is the key, with
// a double underscore separating levels: APP_DB__MAX_CONNS=10 sets
// db.max_conns. Values are strings; the decoder converts them to the
// field's type (numbers, booleans, durations, and any TextUnmarshaler), and
// a value that does not convert is an error. environ, when not nil, replaces
// os.Environ (for tests).
func Env(prefix string, environ func() []string) Source {
	return envSource{prefix: prefix, environ: environ}
}

type envSource struct {
	prefix  string
	environ func() []string
}

func (e envSource) Name() string { return "env:" + e.prefix }

func (e envSource) Load(context.Context) (map[string]any, error) {
	p := kenv.Provider("\x00", kenv.Opt{
		Prefix:      e.prefix,
		EnvironFunc: e.environ,
		TransformFunc: func(k, v string) (string, any) {
			k = strings.ToLower(strings.TrimPrefix(k, e.prefix))
			if k == "" {
				return "", nil
			}
			return strings.ReplaceAll(k, "__", "\x00"), v
		},
	})
	return p.Read()
}

// Map returns a source holding a fixed nested map, for tests and for
// values computed at boot.
func Map(name string, m map[string]any) Source { return mapSource{name: name, m: m} }

type mapSource struct {
	name string
	m    map[string]any
}

func (s mapSource) Name() string { return s.name }

func (s mapSource) Load(context.Context) (map[string]any, error) { return maps.Copy(s.m), nil }
