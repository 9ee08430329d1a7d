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
	err := e.store.Update(func(s *journal.State) error {
		s.Seq++
		ev.Seq = s.Seq
		if e.publisher != nil {
			b, err := json.Marshal(ev)
			if err != nil {
				return err
			}
			enqueue(s, journal.Pending{Seq: ev.Seq, ID: ev.ID, Payload: b})
		}
		return nil
	})
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
	err := e.store.Update(func(s *journal.State) error {
		s.Seq++
		ev.Seq = s.Seq
		if e.publisher != nil {
			b, err := json.Marshal(ev)
			if err != nil {
				return err
			}
			enqueue(s, journal.Pending{Seq: ev.Seq, ID: ev.ID, Agent: true, Payload: b})
		}
		return nil
	})
	if err != nil {
		e.log.Error("journal agent event", "err", err)
	}
	e.wakeOutbox()
	return ev
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

// drainOutbox publishes journaled events in seq order, removing each once the
// bus acked it. On failure it waits and retries the same event, so order holds.
func (e *Engine) drainOutbox(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for {
		var next *journal.Pending
		e.store.View(func(s *journal.State) {
			if len(s.Outbox) > 0 {
				p := s.Outbox[0]
				next = &p
			}
		})
		if next == nil {
			select {
			case <-ctx.Done():
				return
			case <-e.kick:
				continue
			}
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
		seq := next.Seq
		if err := e.store.Update(func(s *journal.State) error {
			if len(s.Outbox) > 0 && s.Outbox[0].Seq == seq {
				s.Outbox = s.Outbox[1:]
			}
			return nil
		}); err != nil {
			e.log.Error("journal outbox", "err", err)
		}
	}
}

// Outbox is how many events wait for the bus.
func (e *Engine) Outbox() int {
	var n int
	e.store.View(func(s *journal.State) { n = len(s.Outbox) })
	return n
}
