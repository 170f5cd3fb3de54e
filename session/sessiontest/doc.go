// Package sessiontest is the conformance suite every session store runs.
//
// A session.Store is only useful in an active-active fleet if every
// implementation keeps the same promises: no lost update between two
// instances writing one session, no resurrection of a destroyed session,
// expiry enforced by the store. Run checks them, including the optional
// session.Aliaser and session.UserIndex when the store has them, so a store's
// whole test is a constructor:
//
//	func TestConformance(t *testing.T) {
//		sessiontest.Run(t, func(t *testing.T) session.Store {
//			return newStoreWithPrefix(t, testenv.Name(t))
//		})
//	}
package sessiontest
