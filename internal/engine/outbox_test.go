package engine

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/quantix-os/update-agent/internal/journal"
)

// recordingBus acknowledges every event and records its seq.
type recordingBus struct {
	mu   sync.Mutex
	seqs []uint64
}

func (b *recordingBus) Publish(_ context.Context, p journal.Pending) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seqs = append(b.seqs, p.Seq)
	return nil
}

func (b *recordingBus) published() []uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.seqs)
}

// Delivered events leave the journal without a write each: with the next
// event's write, after a moment without one, or when the engine stops, so a
// restart sends nothing twice.
func TestOutboxLetsGoOfDeliveredEvents(t *testing.T) {
	h := newHarness(t)
	bus := &recordingBus{}
	start := func() *Engine {
		eng, err := New(h.options())
		if err != nil {
			t.Fatal(err)
		}
		eng.SetPublisher(bus)
		h.startEngine(eng)
		return eng
	}
	journaled := func(eng *Engine) int {
		var n int
		eng.Journal().View(func(s *journal.State) { n = len(s.Outbox) })
		return n
	}
	eng := start()
	var last uint64
	for range 5 {
		last = eng.EmitAgent("a").Seq
	}
	waitFor(t, "the events delivered", func() bool { return slices.Contains(bus.published(), last) })
	if n := eng.Outbox(); n != 0 {
		t.Errorf("Outbox() = %d after every event was delivered", n)
	}
	waitFor(t, "the delivered events out of the journal", func() bool { return journaled(eng) == 0 })

	// Stopped right after a delivery: the journal lets go of it on the way out.
	last = eng.EmitAgent("a").Seq
	waitFor(t, "the event delivered", func() bool { return slices.Contains(bus.published(), last) })
	h.cancel()
	eng.Wait()
	eng = start()
	last = eng.EmitAgent("a").Seq
	waitFor(t, "the event after the restart delivered", func() bool { return slices.Contains(bus.published(), last) })
	got := bus.published()
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("published seqs %v: not strictly rising (an event sent twice or out of order)", got)
		}
	}
}
