package session

import (
	"crypto/cipher"
	"crypto/rand"
	"errors"
)

// ErrDecrypt: a stored value could not be decrypted: tampered with, copied
// from another session or key, or sealed with a key no longer configured.
var ErrDecrypt = errors.New("session: value does not decrypt")

// Ciphertext layout: 0x01, len(name), name, nonce, sealed.
const sealVersion = 1

func additionalData(id, key, keyName string) []byte {
	ad := make([]byte, 0, 32+len(id)+len(key)+len(keyName))
	ad = append(ad, "activekit/session v1\x00"...)
	ad = append(ad, id...)
	ad = append(ad, 0)
	ad = append(ad, key...)
	ad = append(ad, 0)
	return append(ad, keyName...)
}

// seal encrypts plain under the first key, bound to the session ID and key.
func (m *Manager) seal(id, key string, plain []byte) ([]byte, error) {
	if m.aeads == nil {
		return plain, nil
	}
	name := m.cfg.keys[0].Name
	aead := m.aeads[name]
	out := make([]byte, 0, 2+len(name)+aead.NonceSize()+len(plain)+aead.Overhead())
	out = append(out, sealVersion, byte(len(name)))
	out = append(out, name...)
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out = append(out, nonce...)
	return aead.Seal(out, nonce, plain, additionalData(id, key, name)), nil
}

// open reverses seal.
func (m *Manager) open(id, key string, data []byte) ([]byte, error) {
	if m.aeads == nil {
		return data, nil
	}
	return openWith(m.aeads, id, key, data)
}

func openWith(aeads map[string]cipher.AEAD, id, key string, data []byte) ([]byte, error) {
	if len(data) < 2 || data[0] != sealVersion || len(data) < 2+int(data[1]) {
		return nil, ErrDecrypt
	}
	name := string(data[2 : 2+int(data[1])])
	aead, ok := aeads[name]
	rest := data[2+len(name):]
	if !ok || len(rest) < aead.NonceSize()+aead.Overhead() {
		return nil, ErrDecrypt
	}
	plain, err := aead.Open(nil, rest[:aead.NonceSize()], rest[aead.NonceSize():], additionalData(id, key, name))
	if err != nil {
		return nil, ErrDecrypt
	}
	return plain, nil
}
