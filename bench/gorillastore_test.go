package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/gob"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"
	"github.com/redis/go-redis/v9"
)

// gorillaRedisStore is a gorilla/sessions Store on Redis through go-redis v9.
// There is no official one, and none on go-redis v9 could be had from the
// module proxy here, so this one does exactly what the usual community stores
// (boj/redistore, rbcervilla/redisstore) do:
//
//   - the cookie holds a random session ID, signed by securecookie (HMAC);
//   - the whole of Session.Values is gob-encoded and stored under one key,
//     prefix+ID, with SET ... EX MaxAge on every Save (the TTL moves only
//     when the handler saves);
//   - a missing or expired key gives a new, empty session.
//
// So two requests of one session that each load, change and save write the
// whole blob, and the last save wins.
type gorillaRedisStore struct {
	c       redis.UniversalClient
	codecs  []securecookie.Codec
	options sessions.Options
	prefix  string
}

var _ sessions.Store = (*gorillaRedisStore)(nil)

func newGorillaRedisStore(c redis.UniversalClient, prefix string, maxAge time.Duration, keyPairs ...[]byte) *gorillaRedisStore {
	return &gorillaRedisStore{
		c:      c,
		codecs: securecookie.CodecsFromPairs(keyPairs...),
		options: sessions.Options{
			Path:     "/",
			MaxAge:   int(maxAge / time.Second),
			HttpOnly: true,
			SameSite: http.SameSiteLaxMode,
		},
		prefix: prefix,
	}
}

// Get returns the session name of the request, cached in the request's
// registry.
func (s *gorillaRedisStore) Get(r *http.Request, name string) (*sessions.Session, error) {
	return sessions.GetRegistry(r).Get(s, name)
}

// New loads the session name of the request, or returns a new one.
func (s *gorillaRedisStore) New(r *http.Request, name string) (*sessions.Session, error) {
	sess := sessions.NewSession(s, name)
	opts := s.options
	sess.Options = &opts
	sess.IsNew = true
	c, err := r.Cookie(name)
	if err != nil {
		return sess, nil
	}
	if err := securecookie.DecodeMulti(name, c.Value, &sess.ID, s.codecs...); err != nil {
		return sess, err // a forged or expired cookie: a new session, and the error
	}
	found, err := s.load(r.Context(), sess)
	if err != nil {
		return sess, err
	}
	sess.IsNew = !found
	return sess, nil
}

// Save writes the whole session, or deletes it when MaxAge < 0, and sets the
// cookie.
func (s *gorillaRedisStore) Save(r *http.Request, w http.ResponseWriter, sess *sessions.Session) error {
	ctx := r.Context()
	if sess.Options.MaxAge < 0 {
		if err := s.c.Del(ctx, s.prefix+sess.ID).Err(); err != nil {
			return err
		}
		http.SetCookie(w, sessions.NewCookie(sess.Name(), "", sess.Options))
		return nil
	}
	if sess.ID == "" {
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		sess.ID = strings.TrimRight(base32.StdEncoding.EncodeToString(b), "=")
	}
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(sess.Values); err != nil {
		return fmt.Errorf("gorillaredis: encode: %w", err)
	}
	if err := s.c.Set(ctx, s.prefix+sess.ID, buf.Bytes(), time.Duration(sess.Options.MaxAge)*time.Second).Err(); err != nil {
		return err
	}
	encoded, err := securecookie.EncodeMulti(sess.Name(), sess.ID, s.codecs...)
	if err != nil {
		return err
	}
	http.SetCookie(w, sessions.NewCookie(sess.Name(), encoded, sess.Options))
	return nil
}

func (s *gorillaRedisStore) load(ctx context.Context, sess *sessions.Session) (bool, error) {
	b, err := s.c.Get(ctx, s.prefix+sess.ID).Bytes()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&sess.Values); err != nil {
		return false, fmt.Errorf("gorillaredis: decode: %w", err)
	}
	return true, nil
}
