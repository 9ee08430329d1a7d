package engine

import (
	"context"
	"encoding/json"
	"time"

	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/subjects"
)

// emit gives ev its id, seq and time, records it durably (seq always; the
// event itself too while a publisher must still deliver it), updates the
// status and hands it to subscribers. A journal that cannot be written does
// not stop the update: the event is still shown locally and the failure logged.
func (e *Engine) emit(ev subjects.UpdateEvent) {
	ev.ID = newID()
	ev.NodeID = e.opts.NodeID
	ev.Time = e.now().UTC()
	err := e.journalEvent(ev.ID, false, func(seq uint64) any { ev.Seq = seq; return ev })
	if err != nil {
		e.log.Error("journal event", "err", err, "type", ev.Type)
	}
	e.mu.Lock()
	e.status.Status = ev.Status
	e.status.Message = ev.Message
	e.status.OperationID = ev.OperationID
	if ev.Type == subjects.EventProgress && ev.BytesTotal != nil {
		e.status.Progress = &subjects.Progress{
			CurrentComponent: ev.Component,
			DownloadedBytes:  *ev.BytesDone,
			TotalBytes:       *ev.BytesTotal,
			Percentage:       deref(ev.Progress),
		}
	} else if ev.Type != subjects.EventProgress {
		e.status.Progress = nil
	}
	for ch := range e.subs {
		select {
		case ch <- ev:
		default:
		}
	}
	e.mu.Unlock()
	e.wakeOutbox()
	e.log.Debug("event", "seq", ev.Seq, "type", ev.Type, "status", ev.Status, "msg", ev.Message)
}

// EmitAgent records an AgentEvent (the bus announces the agent with it) in the
// same sequence as update events.
func (e *Engine) EmitAgent(bootSlot string) subjects.AgentEvent {
	ev := subjects.AgentEvent{ID: newID(), NodeID: e.opts.NodeID, Time: e.now().UTC(), Type: subjects.EventOnline, Versions: e.Versions(), BootSlot: bootSlot}
	err := e.journalEvent(ev.ID, true, func(seq uint64) any { ev.Seq = seq; return ev })
	if err != nil {
		e.log.Error("journal agent event", "err", err)
	}
	e.wakeOutbox()
	return ev
}

// journalEvent gives the event id the node's next seq (through seal, which
// returns the event with it) and, while a publisher must deliver it, keeps
// it in the outbox: one journal write for both, shared by update and agent
// events so they count in one sequence.
func (e *Engine) journalEvent(id string, agent bool, seal func(seq uint64) any) error {
	return e.store.Update(func(s *journal.State) error {
		s.Seq++
		ev := seal(s.Seq)
		e.trimDelivered(s)
		if e.publisher == nil {
			return nil
		}
		b, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		enqueue(s, journal.Pending{Seq: s.Seq, ID: id, Agent: agent, Payload: b})
		return nil
	})
}

func enqueue(s *journal.State, p journal.Pending) {
	if len(s.Outbox) >= journal.MaxOutbox {
		// Keep the newest: the oldest progress is worth least. The gap in seq tells the consumer.
		s.Outbox = s.Outbox[1:]
		s.Dropped++
	}
	s.Outbox = append(s.Outbox, p)
}

func deref[T any](p *T) T {
	var z T
	if p == nil {
		return z
	}
	return *p
}

// progressEvent emits a progress event, at most every 250ms unless final.
func (e *Engine) progressEvent(op, component string, status subjects.Status, done, total int64, final bool) {
	e.mu.Lock()
	now := e.now()
	if !final && now.Sub(e.lastProg) < 250*time.Millisecond {
		e.mu.Unlock()
		return
	}
	e.lastProg = now
	e.mu.Unlock()
	pct := 0
	if total > 0 {
		pct = int(done * 100 / total)
	}
	e.emit(subjects.UpdateEvent{Type: subjects.EventProgress, OperationID: op, Status: status, Component: component,
		BytesDone: &done, BytesTotal: &total, Progress: &pct})
}

// WakeOutbox makes the outbox try the bus again now (the bus reconnected).
func (e *Engine) WakeOutbox() { e.wakeOutbox() }

func (e *Engine) wakeOutbox() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// outboxTrimDelay is how long delivered events may stay in the journal
// before drainOutbox removes them with a write of its own.
const outboxTrimDelay = time.Second

// drainOutbox publishes journaled events in seq order. On failure it waits
// and retries the same event, so order holds.
//
// A delivered event leaves the journal with the next write the engine makes
// anyway (the next event's, see trimDelivered), or after outboxTrimDelay
// without one, or when the engine stops: one journal write per event rather
// than two. Each write is a file sync, and at the rate of progress events
// the second sync doubled the load on the disk and the latency of the
// events behind it. An event delivered but still journaled when the agent
// dies is sent again after the restart; the stream drops it as a duplicate
// of its Nats-Msg-Id (subjects.MsgIDHeader), as it did before when the
// agent died between the ack and the write.
func (e *Engine) drainOutbox(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for {
		var next *journal.Pending
		untrimmed := false
		delivered := e.delivered.Load()
		e.store.View(func(s *journal.State) {
			for _, p := range s.Outbox {
				if p.Seq > delivered {
					next = &p
					return
				}
				untrimmed = true
			}
		})
		if next == nil {
			if !e.idleOutbox(ctx, untrimmed) {
				return
			}
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := e.publisher.Publish(pctx, *next)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			e.log.Debug("publish event failed, will retry", "seq", next.Seq, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			case <-e.kick: // a new event or a reconnect: try now
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		e.delivered.Store(next.Seq)
	}
}

// idleOutbox waits for a new event with nothing to publish, removing the
// delivered events from the journal after outboxTrimDelay or when ctx ends
// (a clean stop, before a reboot say, leaves nothing to send again). It
// reports false when ctx ended.
func (e *Engine) idleOutbox(ctx context.Context, untrimmed bool) bool {
	var trim <-chan time.Time
	if untrimmed {
		t := time.NewTimer(outboxTrimDelay)
		defer t.Stop()
		trim = t.C
	}
	select {
	case <-ctx.Done():
		if untrimmed {
			e.trimOutbox()
		}
		return false
	case <-e.kick:
	case <-trim:
		e.trimOutbox()
	}
	return true
}

// trimDelivered drops the delivered events at the head of the outbox.
func (e *Engine) trimDelivered(s *journal.State) {
	d := e.delivered.Load()
	i := 0
	for i < len(s.Outbox) && s.Outbox[i].Seq <= d {
		i++
	}
	s.Outbox = s.Outbox[i:]
}

func (e *Engine) trimOutbox() {
	if err := e.store.Update(func(s *journal.State) error { e.trimDelivered(s); return nil }); err != nil {
		e.log.Error("journal outbox", "err", err)
	}
}

// Outbox is how many events wait for the bus.
func (e *Engine) Outbox() int {
	var n int
	d := e.delivered.Load()
	e.store.View(func(s *journal.State) {
		for _, p := range s.Outbox {
			if p.Seq > d {
				n++
			}
		}
	})
	return n
}
