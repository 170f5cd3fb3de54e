package session_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/activekit/activekit/session"
	"github.com/activekit/activekit/session/memstore"
)

// A handler behind Manager.Middleware reads and writes the session; the
// cookie carries only a random token, under a __Host- name by default.
func ExampleManager_Middleware() {
	store, _ := memstore.New() // redisstore.New(client) in production
	m, err := session.NewManager(store)
	if err != nil {
		panic(err)
	}
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		visits, _, err := session.Get[int](s, "visits")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if err := s.Put("visits", visits+1); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Println("visits before:", visits)
	}))

	var cookie *http.Cookie
	for range 3 {
		r := httptest.NewRequest("GET", "/", nil)
		if cookie != nil {
			r.AddCookie(cookie)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if cs := w.Result().Cookies(); len(cs) > 0 {
			cookie = cs[0]
			fmt.Println("cookie:", cookie.Name, "HttpOnly:", cookie.HttpOnly, "Secure:", cookie.Secure, "SameSite=Lax:", cookie.SameSite == http.SameSiteLaxMode)
		}
	}
	// Output:
	// visits before: 0
	// cookie: __Host-session HttpOnly: true Secure: true SameSite=Lax: true
	// visits before: 1
	// visits before: 2
}

// Update is a compare-and-set: concurrent requests on other instances
// incrementing the same key lose none of their increments.
func ExampleUpdate() {
	store, _ := memstore.New()
	m, _ := session.NewManager(store)
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := session.FromContext(r.Context())
		err := session.Update(s, "cart", func(cart []string, _ bool) ([]string, error) {
			return append(cart, "book"), nil
		})
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		cart, _, _ := session.Get[[]string](s, "cart")
		fmt.Println(cart)
	}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/cart", nil))
	// Output: [book]
}

// At login, SetUser binds the session to the user and rotates its token;
// DestroyUser logs the user out on every device.
func ExampleSession_SetUser() {
	store, _ := memstore.New()
	m, _ := session.NewManager(store)
	login := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// ... check the password ...
		if err := session.FromContext(r.Context()).SetUser("alice"); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	}))
	for range 2 { // two devices
		login.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/login", nil))
	}
	ids, _ := m.UserSessions(context.Background(), "alice")
	fmt.Println("sessions:", len(ids))
	_ = m.DestroyUser(context.Background(), "alice")
	ids, _ = m.UserSessions(context.Background(), "alice")
	fmt.Println("after log-out everywhere:", len(ids))
	// Output:
	// sessions: 2
	// after log-out everywhere: 0
}
