package memcachedstore

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func sampleItems() [][]byte {
	return [][]byte{
		encodeRecord(&record{version: 1, created: 1700000000000, idle: 1700000060000, absolute: 1700003600000}),
		encodeRecord(&record{
			version: 7, created: -5, idle: 10, absolute: 10, user: "alice@example.com", epoch: 3,
			values: []value{{key: "", version: 1, data: []byte{}}, {key: "a", version: 7, data: []byte{0, 0xff, '\n'}}, {key: "ключ", version: 2, data: []byte("v")}},
		}),
		encodeAlias(alias{target: "abc_DEF-123.xyz", deadline: 1700000010000}),
		encodeUsers(&users{entries: []userEntry{
			{user: "alice", epoch: 2, until: 99, sessions: []indexed{{id: "t.a", deadline: 50}, {id: "t.b", deadline: 99}}},
			{user: "bob", until: 1},
		}}),
		encodeUsers(&users{}),
	}
}

// Every item decodes to what was encoded, and encodes back to the same
// bytes.
func TestCodecRoundTrip(t *testing.T) {
	for i, b := range sampleItems() {
		it, err := decode(b)
		if err != nil {
			t.Fatalf("item %d: %v", i, err)
		}
		var again []byte
		switch {
		case it.rec != nil:
			again = encodeRecord(it.rec)
		case it.alias != nil:
			again = encodeAlias(*it.alias)
		case it.users != nil:
			again = encodeUsers(it.users)
		}
		if !bytes.Equal(again, b) {
			t.Errorf("item %d: re-encoded %x, want %x", i, again, b)
		}
	}
	rec := &record{version: 2, idle: 5, absolute: 6, values: []value{{key: "k", version: 2, data: []byte("d")}}}
	it, err := decode(encodeRecord(rec))
	if err != nil || !reflect.DeepEqual(it.rec, rec) {
		t.Fatalf("decode(encode(%+v)) = %+v, %v", rec, it.rec, err)
	}
}

// Decoding is strict: anything encode could not have produced is refused.
func TestDecodeRejects(t *testing.T) {
	good := sampleItems()[1]
	cases := map[string][]byte{
		"empty":          nil,
		"format 2":       append([]byte{2}, good[1:]...),
		"unknown kind":   {formatV1, 9},
		"truncated":      good[:len(good)-1],
		"trailing byte":  append(append([]byte(nil), good...), 0),
		"version 0":      encodeRecord(&record{version: 0, idle: 1, absolute: 2}),
		"idle past abs":  encodeRecord(&record{version: 1, idle: 3, absolute: 2}),
		"epoch, no user": encodeRecord(&record{version: 1, epoch: 1}),
		"key version 0":  encodeRecord(&record{version: 1, values: []value{{key: "a"}}}),
		"key too new":    encodeRecord(&record{version: 1, values: []value{{key: "a", version: 2}}}),
		"keys unsorted":  encodeRecord(&record{version: 1, values: []value{{key: "b", version: 1}, {key: "a", version: 1}}}),
		"duplicate key":  encodeRecord(&record{version: 1, values: []value{{key: "a", version: 1}, {key: "a", version: 1}}}),
		"bad alias":      encodeAlias(alias{target: "has space"}),
		"empty alias":    encodeAlias(alias{}),
		"empty user":     encodeUsers(&users{entries: []userEntry{{user: ""}}}),
		"users unsorted": encodeUsers(&users{entries: []userEntry{{user: "b"}, {user: "a"}}}),
		"bad indexed ID": encodeUsers(&users{entries: []userEntry{{user: "a", sessions: []indexed{{id: "x y"}}}}}),
		"IDs unsorted":   encodeUsers(&users{entries: []userEntry{{user: "a", sessions: []indexed{{id: "b"}, {id: "a"}}}}}),
		"long varint":    {formatV1, kindAlias, 0x81, 0x00},                         // 1 in two bytes
		"huge count":     {formatV1, kindUsers, 0xff, 0xff, 0xff, 0xff, 0x0f},       // 2^32-1 users in 0 bytes
		"huge length":    {formatV1, kindAlias, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, // a 2^40 byte target
	}
	for name, b := range cases {
		if it, err := decode(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: decode(%x) = %+v, %v; want ErrCorrupt", name, b, it, err)
		}
	}
}

func TestExpiration(t *testing.T) {
	const now = 1_700_000_000_000 // Unix ms
	const day = 24 * 3600 * 1000
	for _, tc := range []struct {
		name     string
		deadline int64
		want     int32
	}{
		{"passed", now - 1, -1},
		{"now", now, -1},
		{"1ms", now + 1, 2},
		{"999ms", now + 999, 2},
		{"1s", now + 1000, 2},
		{"1.001s", now + 1001, 3},
		{"30 days - 1s: the longest relative", now + 30*day - 1000, 30 * 24 * 3600},
		{"30 days: a Unix time", now + 30*day, int32((now+30*day)/1000 + 2)},
		{"1 year", now + 365*day, int32((now+365*day)/1000 + 2)},
		{"past 2038", 1 << 42, 1<<31 - 1},
	} {
		if got := expiration(tc.deadline, now); got != tc.want {
			t.Errorf("%s: expiration = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// FuzzDecode: decoding arbitrary bytes never panics, and whatever decodes
// is canonical: it encodes back to the very same bytes.
func FuzzDecode(f *testing.F) {
	for _, b := range sampleItems() {
		f.Add(b)
	}
	f.Add([]byte{formatV1, kindSession})
	f.Fuzz(func(t *testing.T, b []byte) {
		it, err := decode(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode error %v does not match ErrCorrupt", err)
			}
			return
		}
		var again []byte
		switch {
		case it.rec != nil:
			again = encodeRecord(it.rec)
		case it.alias != nil:
			again = encodeAlias(*it.alias)
		case it.users != nil:
			again = encodeUsers(it.users)
		default:
			t.Fatal("decoded to nothing")
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("decode(%x) re-encodes to %x", b, again)
		}
	})
}
