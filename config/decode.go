package config

import (
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
)

// decode decodes the merged tree into a new T strictly: a key that matches
// no field is an error, and so is a value of the wrong type. Strings (from
// the environment, from Consul keys) convert to the field's type when they
// parse as it.
func decode[T any](tree map[string]any) (out T, err error) {
	defer func() {
		if r := recover(); r != nil {
			var zero T
			out, err = zero, fmt.Errorf("%w: panic: %v", ErrDecode, r)
		}
	}()
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.TextUnmarshallerHookFunc(),
			numberToDurationHook,
			floatToIntHook,
			mapstructure.StringToBasicTypeHookFunc(),
		),
		ErrorUnused: true,
		TagName:     "json",
		MatchName:   func(key, field string) bool { return key == field },
		Result:      &out,
	})
	if err != nil {
		return out, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	if err := dec.Decode(tree); err != nil {
		var zero T
		return zero, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	return out, nil
}

var durationType = reflect.TypeFor[time.Duration]()

// numberToDurationHook refuses a bare number for a time.Duration field:
// "timeout: 30" in YAML, JSON or TOML would otherwise be 30 nanoseconds,
// while the same "30" from the environment or Consul is refused for want
// of a unit. Zero needs no unit; a time.Duration value (the defaults, a Map
// source) is taken as it is.
func numberToDurationHook(from, to reflect.Type, data any) (any, error) {
	if to != durationType || from == durationType {
		return data, nil
	}
	switch from.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		if reflect.ValueOf(data).IsZero() {
			return time.Duration(0), nil
		}
		return nil, fmt.Errorf("%v is a number without a unit; write a duration such as \"%vs\"", data, data)
	}
	return data, nil
}

// floatToIntHook accepts a float (every number of a JSON document) for an
// integer field only when it is a whole number in range.
func floatToIntHook(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.Float64 && from.Kind() != reflect.Float32 {
		return data, nil
	}
	f := reflect.ValueOf(data).Float()
	switch to.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if f != math.Trunc(f) || f < math.MinInt64 || f >= math.MaxInt64 {
			return nil, fmt.Errorf("%v is not an integer", f)
		}
		v := reflect.New(to).Elem()
		if v.OverflowInt(int64(f)) {
			return nil, fmt.Errorf("%v overflows %v", f, to)
		}
		return int64(f), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if f != math.Trunc(f) || f < 0 || f >= math.MaxUint64 {
			return nil, fmt.Errorf("%v is not an unsigned integer", f)
		}
		v := reflect.New(to).Elem()
		if v.OverflowUint(uint64(f)) {
			return nil, fmt.Errorf("%v overflows %v", f, to)
		}
		return uint64(f), nil
	}
	return data, nil
}

var (
	secretType          = reflect.TypeFor[Secret]()
	jsonMarshalerType   = reflect.TypeFor[json.Marshaler]()
	textMarshalerType   = reflect.TypeFor[encoding.TextMarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// fieldName returns the key of a struct field: its json tag name, else its
// Go name; "" for a field that is skipped.
func fieldName(f reflect.StructField) (name string, squash bool) {
	if !f.IsExported() {
		return "", false
	}
	tag := f.Tag.Get("json")
	if tag == "-" {
		return "", false
	}
	name, opts, _ := strings.Cut(tag, ",")
	if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
		return "", true
	}
	for _, o := range strings.Split(opts, ",") {
		if o == "squash" {
			return "", true
		}
	}
	if name == "" {
		name = f.Name
	}
	return name, false
}

// toTree converts a value of the configuration type into a nested tree of
// maps, slices and scalars under the same keys the decoder reads. A Secret
// is what secret returns for it and its dotted path: its value for the
// defaults layer, its derivation for the canonical form that is hashed and
// diffed.
func toTree(v reflect.Value, path string, secret func(path string, s Secret) any) any {
	if !v.IsValid() {
		return nil
	}
	t := v.Type()
	if t == secretType {
		return secret(path, v.Interface().(Secret))
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return toTree(v.Elem(), path, secret)
	}
	// Types with their own text form (time.Time, net.IP, ...) decode from
	// it through TextUnmarshaler, so they are kept as that text.
	if t.Implements(textMarshalerType) && reflect.PointerTo(t).Implements(textUnmarshalerType) {
		if b, err := v.Interface().(encoding.TextMarshaler).MarshalText(); err == nil {
			return string(b)
		}
	}
	if t.Kind() != reflect.Struct && t.Implements(jsonMarshalerType) {
		if b, err := json.Marshal(v.Interface()); err == nil {
			var out any
			if json.Unmarshal(b, &out) == nil {
				return out
			}
		}
	}
	switch t.Kind() {
	case reflect.Struct:
		m := map[string]any{}
		structToTree(v, path, m, secret)
		return m
	case reflect.Map:
		if v.IsNil() {
			return nil
		}
		m := make(map[string]any, v.Len())
		it := v.MapRange()
		for it.Next() {
			k := fmt.Sprint(it.Key().Interface())
			m[k] = toTree(it.Value(), join(path, k), secret)
		}
		return m
	case reflect.Slice:
		if v.IsNil() {
			return nil
		}
		fallthrough
	case reflect.Array:
		s := make([]any, v.Len())
		for i := range s {
			s[i] = toTree(v.Index(i), join(path, strconv.Itoa(i)), secret)
		}
		return s
	}
	return v.Interface()
}

func structToTree(v reflect.Value, path string, m map[string]any, secret func(string, Secret) any) {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name, squash := fieldName(f)
		if squash {
			fv := v.Field(i)
			if fv.Kind() == reflect.Pointer {
				if fv.IsNil() {
					continue
				}
				fv = fv.Elem()
			}
			structToTree(fv, path, m, secret)
			continue
		}
		if name == "" {
			continue
		}
		m[name] = toTree(v.Field(i), join(path, name), secret)
	}
}

// join appends a key to a dotted path.
func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// revealSecret is the form of a secret in the defaults layer: its value.
func revealSecret(_ string, s Secret) any { return s.v }

// defaultsTree is the defaults layer: d as a tree with secrets revealed,
// without nil values (which would override nothing but could trip the
// decoder).
func defaultsTree[T any](d T) map[string]any {
	m, _ := toTree(reflect.ValueOf(&d).Elem(), "", revealSecret).(map[string]any)
	if m == nil {
		return map[string]any{}
	}
	dropNils(m)
	return m
}

func dropNils(m map[string]any) {
	for k, v := range m {
		switch x := v.(type) {
		case nil:
			delete(m, k)
		case map[string]any:
			dropNils(x)
		}
	}
}

// canonical returns the canonical JSON of v (sorted keys, secrets as their
// slow derivations, from secrets' cache, which the caller then ends with
// done) and its flattened form (dotted path to the JSON of the leaf) for
// diffing. Neither is ever printed: a diff reports keys only.
func canonical[T any](v *T, secrets *secretCache) ([]byte, map[string]string, error) {
	tree := toTree(reflect.ValueOf(v).Elem(), "", func(path string, s Secret) any { return secrets.derive(path, s) })
	b, err := json.Marshal(tree)
	if err != nil {
		return nil, nil, err
	}
	flat := map[string]string{}
	if m, ok := tree.(map[string]any); ok {
		for k, c := range m {
			if err := flatten(k, c, flat); err != nil {
				return nil, nil, err
			}
		}
	}
	return b, flat, nil
}

// flatten adds to out the leaves of v under the dotted path key: maps by
// key, and lists of maps or lists by index, so that a restart-only field
// inside a list element has a path of its own. An empty map and a list of
// scalars are leaves.
func flatten(key string, v any, out map[string]string) error {
	switch x := v.(type) {
	case map[string]any:
		if len(x) > 0 {
			for k, c := range x {
				if err := flatten(key+"."+k, c, out); err != nil {
					return err
				}
			}
			return nil
		}
	case []any:
		if slices.ContainsFunc(x, composite) {
			for i, c := range x {
				if err := flatten(key+"."+strconv.Itoa(i), c, out); err != nil {
					return err
				}
			}
			return nil
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	out[key] = string(b)
	return nil
}

func composite(v any) bool {
	switch v.(type) {
	case map[string]any, []any:
		return true
	}
	return false
}

// hashOf is the short hex SHA-256 of a canonical encoding.
func hashOf(canon []byte) string {
	sum := sha256.Sum256(canon)
	return hex.EncodeToString(sum[:8])
}

// diffKeys returns the sorted dotted keys whose leaves differ.
func diffKeys(a, b map[string]string) []string {
	var out []string
	for k, av := range a {
		if bv, ok := b[k]; !ok || bv != av {
			out = append(out, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// restartPaths returns the dotted keys of the fields of t tagged
// `config:"restart"`; a change at or under one of them needs a restart.
func restartPaths(t reflect.Type) []string {
	var out []string
	var walk, walkStruct func(t reflect.Type, prefix string, seen map[reflect.Type]bool)
	walkStruct = func(t reflect.Type, prefix string, seen map[reflect.Type]bool) {
		for i := range t.NumField() {
			f := t.Field(i)
			name, squash := fieldName(f)
			if squash {
				walk(f.Type, prefix, seen)
				continue
			}
			if name == "" {
				continue
			}
			path := prefix + name
			if hasOpt(f.Tag.Get("config"), "restart") {
				out = append(out, path)
				continue
			}
			walk(f.Type, path+".", seen)
		}
	}
	walk = func(t reflect.Type, prefix string, seen map[reflect.Type]bool) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t == secretType || seen[t] {
			return
		}
		seen[t] = true
		defer delete(seen, t)
		switch t.Kind() {
		case reflect.Map, reflect.Slice, reflect.Array:
			// A map's values are under their keys, a list's elements
			// under their indexes: the segment "*".
			walk(t.Elem(), prefix+"*.", seen)
		case reflect.Struct:
			walkStruct(t, prefix, seen)
		}
	}
	walk(t, "", map[reflect.Type]bool{})
	sort.Strings(out)
	return out
}

func hasOpt(tag, opt string) bool {
	for _, o := range strings.Split(tag, ",") {
		if strings.TrimSpace(o) == opt {
			return true
		}
	}
	return false
}

// touches returns the changed keys at or under one of the paths. A path
// segment "*" stands for a map key or list index: one segment or more,
// since a map key may itself hold dots.
func touches(changed, paths []string) []string {
	var out []string
	for _, k := range changed {
		ks := strings.Split(k, ".")
		for _, p := range paths {
			if under(strings.Split(p, "."), ks) {
				out = append(out, k)
				break
			}
		}
	}
	return out
}

// under reports whether the key segments k are at or under the path
// segments p.
func under(p, k []string) bool {
	if len(p) == 0 {
		return true
	}
	if len(k) == 0 {
		return false
	}
	if p[0] == "*" {
		for n := 1; n <= len(k); n++ {
			if under(p[1:], k[n:]) {
				return true
			}
		}
		return false
	}
	return p[0] == k[0] && under(p[1:], k[1:])
}
