package redisstore

// ApplyFastHash is the SHA1 of applyFastScript, for tests that make a server
// answer as one before Redis 7.0 would.
var ApplyFastHash = applyFastScript.Hash()
