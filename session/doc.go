// Package session keeps a user's HTTP session outside the instance that
// served the request, so that the user's next request can land on any instance
// of an active-active fleet, and so that two instances writing one session at
// once lose no update: stores speak in deltas, not whole blobs.
//
// Status: being built (see the session issue); the API is not yet available.
package session
