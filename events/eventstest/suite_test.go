package eventstest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if s := os.Getenv("EVENTSTEST_TIMEOUT"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			panic(err)
		}
		timeout = d
	}
	goleak.VerifyTestMain(m)
}

var allFeatures = Features{OrderingPerKey: true, Persistence: true, ConsumerGroups: true, RedeliveryAfterCrash: true}

// TestMemoryConforms runs the suite on the in-memory pair, which keeps every
// promise: once retrying failed events in place, with every feature, and
// once sending them to the back of their partition after a backoff, as an
// adapter without OrderingPerKey may. A failure of a broken pair in TestSuiteCatchesBrokenPairs is
// thus the suite catching its fault, not the pair's other flaws.
func TestMemoryConforms(t *testing.T) {
	t.Run("InPlace", func(t *testing.T) {
		b := newBroker(faultNone)
		Run(t, b.features(allFeatures), b.constructor())
	})
	unordered := allFeatures
	unordered.OrderingPerKey = false
	t.Run("Requeue", func(t *testing.T) {
		b := newBroker(faultRequeue)
		Run(t, b.features(unordered), b.constructor())
	})
	t.Run("Stress", func(t *testing.T) { Stress(t, allFeatures, newBroker(faultNone).constructor(), 500) })
}

// brokenPairs are in-memory pairs that each break one promise, and the test
// of the suite that must catch it.
var brokenPairs = []struct {
	name      string
	fault     fault
	unordered bool // declare no OrderingPerKey
	test      string
}{
	{"DropsAnEvent", faultDrop, false, "PublishSubscribe"},
	{"LosesExtensions", faultCorrupt, false, "PublishSubscribe"},
	{"PublishesPartOfAnInvalidCall", faultPartial, false, "InvalidEventRefused"},
	{"PublishesAfterClose", faultOpenAfterClose, false, "PublishEmptyAndClosed"},
	{"ReordersAKey", faultReverse, false, "OrderingPerKey"},
	{"GivesUpAfterTwoFailures", faultGiveUpEarly, false, "HandlerErrorRedelivered"},
	{"GivesUpAfterTwoFailuresUnordered", faultGiveUpEarly, true, "HandlerErrorRedelivered"},
	{"CountsUnavailableAsAttempts", faultCountUnavailable, false, "UnavailableRetriedUntilClear"},
	{"NoRedeliveryAfterCrash", faultNoRedelivery, false, "RedeliveryAfterCrash"},
	{"NewGroupStartsAtTheEnd", faultLatest, false, "Persistence"},
	{"SubscribeErrsOnCancel", faultErrOnCancel, false, "SubscribeReturnsOnCancel"},
	{"HandlerContextOutlivesSubscribe", faultDetachedHandler, false, "SubscribeReturnsOnCancel"},
	{"PublishesWithAnEndedContext", faultIgnoresEndedCtx, false, "PublishReturnsOnCancel"},
	{"PublishBlocksPastItsContext", faultBlocksPastCtx, false, "PublishReturnsOnCancel"},
	{"HandlesAKeyConcurrently", faultOverlapKey, false, "OrderingPerKey"},
	{"GivesUpPermanentUnavailable", faultPermanentFirst, false, "UnavailableRetriedUntilClear"},
	{"AcknowledgesBeforeStoring", faultAckBeforeStore, false, "PublishedBeforeCloseDelivered"},
}

// TestSuiteCatchesBrokenPairs runs, for each broken pair, the test of the
// suite that should catch it (in a child process, TestBrokenPair, since a
// failing test cannot be watched from its own process), and fails unless
// that test fails.
func TestSuiteCatchesBrokenPairs(t *testing.T) {
	if os.Getenv("EVENTSTEST_BROKEN") != "" {
		t.Skip("in the child process")
	}
	for _, b := range brokenPairs {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenPair$/^"+b.test+"$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), "EVENTSTEST_BROKEN="+b.name, "EVENTSTEST_TIMEOUT=3s")
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite's %s passed a pair that breaks it:\n%s", b.test, out)
			}
			if !strings.Contains(string(out), "--- FAIL: TestBrokenPair/"+b.test+" ") {
				t.Fatalf("the child failed, but not in %s:\n%s", b.test, out)
			}
		})
	}
}

// TestBrokenPair runs the suite on the broken pair EVENTSTEST_BROKEN names,
// for TestSuiteCatchesBrokenPairs; it is skipped otherwise.
func TestBrokenPair(t *testing.T) {
	name := os.Getenv("EVENTSTEST_BROKEN")
	if name == "" {
		t.Skip("run by TestSuiteCatchesBrokenPairs")
	}
	for _, b := range brokenPairs {
		if b.name == name {
			f := allFeatures
			f.OrderingPerKey = !b.unordered
			br := newBroker(b.fault)
			Run(t, br.features(f), br.constructor())
			return
		}
	}
	t.Fatalf("no broken pair %q", name)
}
