package session

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
)

// ErrDecrypt: a stored value could not be decrypted: tampered with, copied
// from another session or key, or sealed with a key no longer configured.
var ErrDecrypt = errors.New("session: value does not decrypt")

// A ciphertext is laid out as
//
//	version (1 byte), len(name) (1 byte), name, nonce (12 bytes), sealed
//
// where name names the configured key it was sealed under and sealed is the
// AES-256-GCM output (value and 16-byte tag), with additional data binding
// the session ID, the value's key and the key name.
//
// Version 1 seals under the configured key itself. GCM's random 96-bit
// nonces are safe for about 2^32 seals under one key (NIST SP 800-38D),
// which a fleet sealing on every Put and renewal reaches in weeks.
//
// Version 2, written since, seals under a key derived for the session:
// HKDF-SHA256 of the configured key, with no salt and info v2KeyInfo
// followed by the session ID, so that the bound applies to the seals of
// one session. Both versions open. Instances of earlier versions of this
// package open version 1 only: a fleet upgrading from one first deploys
// with WithEncryptionV1 (read both, write version 1), then without it.
const (
	sealV1 = 1
	sealV2 = 2
)

// gcmNonceSize is the nonce size of both versions: GCM's standard one.
const gcmNonceSize = 12

// v2KeyInfo prefixes the session ID in the HKDF info of a version 2 key.
const v2KeyInfo = "activekit/session v2 key\x00"

// sealKey is a configured key: the GCM of the key itself (version 1) and
// the HKDF pseudorandom key that session keys are expanded from (version 2).
type sealKey struct {
	v1  cipher.AEAD
	prk []byte
}

func newSealKey(secret []byte) (*sealKey, error) {
	block, err := aes.NewCipher(secret)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	prk, err := hkdf.Extract(sha256.New, secret, nil)
	if err != nil {
		return nil, err
	}
	return &sealKey{v1: aead, prk: prk}, nil
}

// sessionKey returns the version 2 key of session id: an AES-256 key
// whatever the size of the configured one.
func (k *sealKey) sessionKey(id string) ([]byte, error) {
	return hkdf.Expand(sha256.New, k.prk, v2KeyInfo+id, 32)
}

// derive returns the version 2 AEAD of session id.
func (k *sealKey) derive(id string) (cipher.AEAD, error) {
	key, err := k.sessionKey(id)
	if err != nil {
		return nil, fmt.Errorf("session: derive key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("session: derive key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("session: derive key: %w", err)
	}
	return aead, nil
}

func additionalData(version byte, id, key, keyName string) []byte {
	ad := make([]byte, 0, 32+len(id)+len(key)+len(keyName))
	if version == sealV1 {
		ad = append(ad, "activekit/session v1\x00"...)
	} else {
		ad = append(ad, "activekit/session v2\x00"...)
	}
	ad = append(ad, id...)
	ad = append(ad, 0)
	ad = append(ad, key...)
	ad = append(ad, 0)
	return append(ad, keyName...)
}

// aeadCache holds the version 2 AEADs a Session derived, so that a request
// sealing or opening several values derives once. It holds a few (ID, key
// name) pairs, the oldest replaced first: a request deals with one ID, two
// across a renewal, and one key name, two across a rotation.
type aeadCache struct {
	slot [4]struct {
		id, name string
		aead     cipher.AEAD
	}
	next int
}

// cache returns the Session's aeadCache, made on first use: a Session
// without encryption (most) does not carry its slots. s.mu must be held.
func (s *Session) cache() *aeadCache {
	if s.aeads == nil {
		s.aeads = new(aeadCache)
	}
	return s.aeads
}

// aead returns the version 2 AEAD of session id under the configured key
// name, deriving it on a miss.
func (c *aeadCache) aead(k *sealKey, id, name string) (cipher.AEAD, error) {
	for _, e := range c.slot {
		if e.aead != nil && e.id == id && e.name == name {
			return e.aead, nil
		}
	}
	aead, err := k.derive(id)
	if err != nil {
		return nil, err
	}
	e := &c.slot[c.next]
	e.id, e.name, e.aead = id, name, aead
	c.next = (c.next + 1) % len(c.slot)
	return aead, nil
}

// seal encrypts plain under the first key, bound to the session ID and
// key: version 2, or 1 with WithEncryptionV1. s.mu must be held.
func (s *Session) seal(id, key string, plain []byte) ([]byte, error) {
	if s.m.keys == nil {
		return plain, nil
	}
	nonce := make([]byte, gcmNonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.sealNonce(id, key, nonce, plain)
}

// sealNonce is seal with the given nonce.
func (s *Session) sealNonce(id, key string, nonce, plain []byte) ([]byte, error) {
	m := s.m
	name := m.cfg.keys[0].Name
	k := m.keys[name]
	if m.cfg.sealV1 {
		return sealWith(k.v1, sealV1, name, nonce, additionalData(sealV1, id, key, name), plain), nil
	}
	aead, err := s.cache().aead(k, id, name)
	if err != nil {
		return nil, err
	}
	return sealWith(aead, sealV2, name, nonce, additionalData(sealV2, id, key, name), plain), nil
}

// sealWith lays out a ciphertext of the given version sealed by aead.
func sealWith(aead cipher.AEAD, version byte, name string, nonce, ad, plain []byte) []byte {
	out := make([]byte, 0, 2+len(name)+len(nonce)+len(plain)+aead.Overhead())
	out = append(out, version, byte(len(name)))
	out = append(out, name...)
	out = append(out, nonce...)
	return aead.Seal(out, nonce, plain, ad)
}

// open reverses seal, of either version. s.mu must be held.
func (s *Session) open(id, key string, data []byte) ([]byte, error) {
	m := s.m
	if m.keys == nil {
		return data, nil
	}
	if len(data) < 2 || (data[0] != sealV1 && data[0] != sealV2) || len(data) < 2+int(data[1]) {
		return nil, ErrDecrypt
	}
	version := data[0]
	name := string(data[2 : 2+int(data[1])])
	k, ok := m.keys[name]
	if !ok {
		return nil, ErrDecrypt
	}
	aead := k.v1
	if version == sealV2 {
		var err error
		if aead, err = s.cache().aead(k, id, name); err != nil {
			return nil, err
		}
	}
	rest := data[2+len(name):]
	if len(rest) < aead.NonceSize()+aead.Overhead() {
		return nil, ErrDecrypt
	}
	plain, err := aead.Open(nil, rest[:aead.NonceSize()], rest[aead.NonceSize():], additionalData(version, id, key, name))
	if err != nil {
		return nil, ErrDecrypt
	}
	return plain, nil
}
