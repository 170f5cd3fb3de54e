// Package session keeps a user's HTTP session outside the instance that
// served the request, so that the user's next request can land on any
// instance of an active-active fleet, and so that two instances writing one
// session at once lose no update.
//
// # Why deltas
//
// Session libraries commonly load the whole session, let the handler change
// it, and write the whole session back (scs, gorilla/sessions, Spring
// Session, express-session). When two requests of one user run at once on two
// instances, the later write silently undoes the earlier one. Here a Store
// speaks in deltas: a save names only the keys set and deleted, so writes to
// different keys never conflict, and Update is a compare-and-set on one key's
// version, retried with a fresh read, so concurrent read-modify-writes of one
// key all count. The store applies a delta atomically and never resurrects a
// session that has ended (expired, destroyed, revoked).
//
// # Cost
//
// A handler that never touches its session costs no store call. A read costs
// one round trip (the load also refreshes the idle timeout). A change is
// saved once, just before the response headers go out, in one atomic apply:
// a handler that only writes (Put, Delete) costs that one round trip when the
// store enforces the session size limit itself (SizeLimiter: redisstore,
// memcachedstore and memstore do) and values are not encrypted; otherwise, and for Update (a
// compare-and-set needs the current version), the session is read first:
// two round trips. A new visitor who only reads costs nothing.
//
// # Security
//
// The cookie holds 32 random bytes (base64url); the store only ever sees a
// SHA-256 of it, so a dump of the store cannot be replayed as cookies. The
// cookie is Secure, HttpOnly, SameSite=Lax and Path=/ by default, and named
// "__Host-session", so that browsers enforce Secure, Path=/ and no Domain:
// neither a sibling subdomain nor a page served over plain HTTP can plant a
// token in the browser (the name falls back to "session" when the cookie
// cannot carry the prefix: see CookieConfig). A malformed, tampered or
// oversized cookie is treated as no session. Idle and absolute timeouts are
// enforced by the store itself. SetUser (at login) and Renew rotate the
// token, leaving the old one as a short alias (10 s, WithRenewGrace) for
// requests in flight: a token planted before login opens the logged-in
// session for that long at most, which is why the cookie should not be
// plantable in the first place. Values can be encrypted at rest with
// AES-256-GCM under a list of named keys (WithEncryption), each ciphertext
// bound to its session and key, and sealed under a key derived for its
// session, so that GCM's random-nonce bound (about 2^32 seals per key) is
// per session rather than fleet-wide.
//
// # Log out everywhere
//
// A session bound to a user gets a token carrying the user's tag (UserTag),
// so a clustered store keeps it in the same shard as the user's index and
// revocation epoch: Manager.DestroyUser is one atomic step on Redis Cluster,
// and a session the index missed is still refused, at load, by its epoch.
//
// # Failure
//
// When the store fails, the request is answered by the error handler (503
// with Retry-After by default), the failure is logged once through the
// injected *slog.Logger and counted; a fresh session is never issued in
// place of one the store could not read. A store call cut short because the
// client went away (the request's context cancelled) fails the request
// likewise, but is no store failure: it is logged at debug level and not
// counted in session.errors.
//
// Stores: session/redisstore (standalone, Sentinel, Cluster), session/memstore
// (tests, single instance). session/sessiontest is the conformance suite
// every store runs.
package session
