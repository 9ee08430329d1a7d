package vdc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/quantix-os/update-agent/subjects"
)

// Event is one node event read from the QX_EVENTS stream: exactly one of
// Update and Agent is set, or neither and Error says why the payload could not
// be decoded (a consumer keeps going past a bad event).
type Event struct {
	Subject   string                `json:"subject"`
	StreamSeq uint64                `json:"streamSeq"`
	NodeID    string                `json:"nodeId"`
	Update    *subjects.UpdateEvent `json:"update,omitempty"`
	Agent     *subjects.AgentEvent  `json:"agent,omitempty"`
	Error     string                `json:"error,omitempty"`
}

// Type is the event's type, empty for an undecodable one.
func (e Event) Type() subjects.EventType {
	switch {
	case e.Update != nil:
		return e.Update.Type
	case e.Agent != nil:
		return e.Agent.Type
	}
	return ""
}

// Seq is the node's own event counter, 0 for an undecodable event.
func (e Event) Seq() uint64 {
	switch {
	case e.Update != nil:
		return e.Update.Seq
	case e.Agent != nil:
		return e.Agent.Seq
	}
	return 0
}

// Time is when the node emitted the event.
func (e Event) Time() time.Time {
	switch {
	case e.Update != nil:
		return e.Update.Time
	case e.Agent != nil:
		return e.Agent.Time
	}
	return time.Time{}
}

// decodeEvent turns a stream message into an Event.
func decodeEvent(subject string, streamSeq uint64, data []byte) Event {
	e := Event{Subject: subject, StreamSeq: streamSeq}
	kind, node, err := subjects.Parse(subject)
	if err != nil {
		e.Error = err.Error()
		return e
	}
	e.NodeID = node
	switch kind {
	case subjects.KindUpdateEvent:
		var u subjects.UpdateEvent
		if err := subjects.Decode(data, &u); err != nil {
			e.Error = fmt.Sprintf("update event: %v", err)
			return e
		}
		e.Update = &u
	case subjects.KindAgentEvent:
		var a subjects.AgentEvent
		if err := subjects.Decode(data, &a); err != nil {
			e.Error = fmt.Sprintf("agent event: %v", err)
			return e
		}
		e.Agent = &a
	default:
		e.Error = fmt.Sprintf("subject %q is not an event subject", subject)
	}
	return e
}

// filter is the stream subject filter for node ("" = every node).
func filter(node string) (string, error) {
	if node == "" {
		return subjects.AllEvents(), nil
	}
	if err := subjects.ValidNodeID(node); err != nil {
		return "", err
	}
	return subjects.Events(node), nil
}

// Subscription delivers the events of one node (or all) in stream order. It
// exists on the server once Subscribe returns, so a caller can subscribe,
// then send a command, and not miss the events it causes.
type Subscription struct {
	js   jetstream.JetStream
	cons jetstream.Consumer
	it   jetstream.MessagesContext
}

// Subscribe opens an ordered consumer on QX_EVENTS for node's events ("" =
// every node): from the first stored event, or with deliverNew only those
// stored after this call.
func (c *Client) Subscribe(ctx context.Context, node string, deliverNew bool) (*Subscription, error) {
	subj, err := filter(node)
	if err != nil {
		return nil, fmt.Errorf("subscribe to events: %w", err)
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subj},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		// A client that vanished without Stop leaves its consumer for only a minute.
		InactiveThreshold: time.Minute,
	}
	if deliverNew {
		// Start after the stream's last sequence rather than DeliverNew: the
		// ordered consumer would re-read "new" from a later point if it had
		// to recreate itself before delivering anything.
		s, err := c.js.Stream(ctx, subjects.Stream)
		if err != nil {
			return nil, fmt.Errorf("subscribe to events: stream %s: %w", subjects.Stream, err)
		}
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = s.CachedInfo().State.LastSeq + 1
	}
	cons, err := c.js.OrderedConsumer(ctx, subjects.Stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("subscribe to events %s: %w", subj, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, fmt.Errorf("subscribe to events %s: %w", subj, err)
	}
	return &Subscription{js: c.js, cons: cons, it: it}, nil
}

// Next waits for the next event until ctx ends.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	e, _, err := s.next(ctx)
	return e, err
}

// next also returns how many matching events the stream holds after this one.
func (s *Subscription) next(ctx context.Context) (Event, uint64, error) {
	m, err := s.it.Next(jetstream.NextContext(ctx))
	if err != nil {
		if ctx.Err() != nil {
			return Event{}, 0, ctx.Err()
		}
		return Event{}, 0, fmt.Errorf("next event: %w", err)
	}
	md, err := m.Metadata()
	if err != nil {
		return Event{}, 0, fmt.Errorf("next event: metadata: %w", err)
	}
	return decodeEvent(m.Subject(), md.Sequence.Stream, m.Data()), md.NumPending, nil
}

// Stop ends the subscription and deletes its consumer, rather than leave it
// to the server's inactivity cleanup.
func (s *Subscription) Stop() {
	s.it.Stop()
	if info := s.cons.CachedInfo(); info != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.js.DeleteConsumer(ctx, subjects.Stream, info.Name) // best effort
	}
}

// Watch calls fn for every event of node ("" = every node), from the start of
// the stream or, with deliverNew, from now. It returns ctx's error when ctx
// ends, or fn's error, which stops it.
func (c *Client) Watch(ctx context.Context, node string, deliverNew bool, fn func(Event) error) error {
	sub, err := c.Subscribe(ctx, node, deliverNew)
	if err != nil {
		return err
	}
	defer sub.Stop()
	for {
		e, err := sub.Next(ctx)
		if err != nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
}

// eventsIdle bounds the wait for an event the stream said it holds (it may
// have been removed by the stream's limits meanwhile).
const eventsIdle = 5 * time.Second

// Events returns every stored event of node ("" = every node), oldest first.
func (c *Client) Events(ctx context.Context, node string) ([]Event, error) {
	sub, err := c.Subscribe(ctx, node, false)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	defer sub.Stop()
	events := []Event{}
	// The consumer's creation counted what the stream holds for it.
	if info := sub.cons.CachedInfo(); info == nil || info.NumPending == 0 {
		return events, nil
	}
	for {
		next, cancel := context.WithTimeout(ctx, eventsIdle)
		e, pending, err := sub.next(next)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return events, nil // nothing more arrived: the rest was removed meanwhile
		}
		if err != nil {
			return events, fmt.Errorf("read events: %w", err)
		}
		events = append(events, e)
		if pending == 0 {
			return events, nil
		}
	}
}

// LogEvents logs every new event of every node until ctx ends. It retries
// while the stream is missing or the connection is down.
func LogEvents(ctx context.Context, c *Client, logger *slog.Logger) {
	if logger == nil {
		return // nothing to log to
	}
	for {
		err := c.Watch(ctx, "", true, func(e Event) error {
			logEvent(logger, e)
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		logger.Warn("watching events", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

func logEvent(logger *slog.Logger, e Event) {
	attrs := []any{"node", e.NodeID, "seq", e.Seq(), "streamSeq", e.StreamSeq}
	switch {
	case e.Update != nil:
		u := e.Update
		attrs = append(attrs, "type", u.Type, "status", u.Status)
		if u.OperationID != "" {
			attrs = append(attrs, "operation", u.OperationID)
		}
		if u.Progress != nil {
			attrs = append(attrs, "progress", *u.Progress)
		}
		if u.Component != "" {
			attrs = append(attrs, "component", u.Component)
		}
		if u.Version != "" {
			attrs = append(attrs, "version", u.Version)
		}
		if u.Message != "" {
			attrs = append(attrs, "message", u.Message)
		}
		level := slog.LevelInfo
		if u.Type == subjects.EventProgress {
			level = slog.LevelDebug // progress is chatty; the status changes tell the story
		} else if u.Type == subjects.EventFailed || u.Type == subjects.EventRolledBack {
			level = slog.LevelWarn
		}
		logger.Log(context.Background(), level, "update event", attrs...)
	case e.Agent != nil:
		attrs = append(attrs, "type", e.Agent.Type, "os", e.Agent.Versions.OS)
		if e.Agent.BootSlot != "" {
			attrs = append(attrs, "bootSlot", e.Agent.BootSlot)
		}
		logger.Info("agent event", attrs...)
	default:
		logger.Warn("bad event", append(attrs, "subject", e.Subject, "err", e.Error)...)
	}
}
