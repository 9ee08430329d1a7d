package engine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/subjects"
)

// A fleet check sends the same envelope again and again; the engine verifies
// it once, but still applies the policy to it on every check.
func TestFleetCheckReusesVerifiedEnvelope(t *testing.T) {
	var offset atomic.Int64 // added to the wall clock
	h := newHarness(t, func(o *Options) {
		o.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	})
	signed, err := os.ReadFile(filepath.Join(h.repo, "channels/dev/manifest.signed.json"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		reply, err := h.eng.Check(context.Background(), subjects.CheckRequest{SignedManifest: signed})
		if err != nil || !reply.Available || reply.AvailableVersion != "0.0.6" {
			t.Fatalf("check %d: %+v, %v", i, reply, err)
		}
	}
	// The same bytes, once the manifest has expired: refused.
	offset.Store(int64(100 * 365 * 24 * time.Hour))
	reply, err := h.eng.Check(context.Background(), subjects.CheckRequest{SignedManifest: signed})
	if !errors.Is(err, manifest.ErrExpired) || reply.Error == "" {
		t.Fatalf("expired manifest from the cache: %+v, %v; want ErrExpired", reply, err)
	}
	offset.Store(0)
	// Bytes that differ from the verified envelope are verified again.
	bad := append([]byte(nil), signed...)
	bad[len(bad)/2] ^= 1
	if _, err := h.eng.Check(context.Background(), subjects.CheckRequest{SignedManifest: bad}); err == nil {
		t.Fatal("tampered envelope accepted after a verified one")
	}
}

// The time of a fleet check reaches the journal after the reply; a check
// that asked the Update Server records it before answering.
func TestCheckTimeJournaled(t *testing.T) {
	h := newHarness(t)
	lastCheck := func() time.Time {
		var last time.Time
		h.eng.Journal().View(func(s *journal.State) { last = s.LastCheck })
		return last
	}
	signed, err := os.ReadFile(filepath.Join(h.repo, "channels/dev/manifest.signed.json"))
	if err != nil {
		t.Fatal(err)
	}

	before := time.Now().UTC()
	if _, err := h.eng.Check(context.Background(), subjects.CheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := lastCheck(); got.Before(before) {
		t.Fatalf("plain check: journal last check %v, want at least %v", got, before)
	}

	before = time.Now().UTC()
	for range 5 { // a burst: one write after it
		if _, err := h.eng.Check(context.Background(), subjects.CheckRequest{SignedManifest: signed}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the fleet check's time in the journal", func() bool { return !lastCheck().Before(before) })
	if got := lastCheck(); got.After(time.Now().UTC()) {
		t.Fatalf("journal last check %v is in the future", got)
	}
}
