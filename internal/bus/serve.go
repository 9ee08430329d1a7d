package bus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/quantix-os/update-agent/subjects"
)

// Engine is what Serve needs of the update engine.
type Engine interface {
	NodeID() string
	Check(ctx context.Context, req subjects.CheckRequest) (subjects.CheckReply, error)
	Apply(ctx context.Context, cmd subjects.ApplyCommand) (subjects.Ack, error)
	Cancel(ctx context.Context, cmd subjects.CancelCommand) (subjects.Ack, error)
	Status() subjects.StatusReport
	CurrentVersion() string
	Subscribe() (<-chan subjects.UpdateEvent, func())
	EmitAgent(bootSlot string) subjects.AgentEvent
	// Booted is closed when the agent may announce itself (see
	// engine.Engine.Booted).
	Booted() <-chan struct{}
}

// ErrBadRequest reports a request payload that does not decode as its
// message type. The reply carries it in the typed error field and in the
// micro-compatible Nats-Service-Error headers (code 400).
var ErrBadRequest = errors.New("bad request")

// maxInFlight bounds the requests handled at once; further ones wait in the
// subscription's buffer.
const maxInFlight = 64

// endpoint is one request subject the node answers.
type endpoint struct {
	subject string
	// handle decodes data and asks the engine. An error means the request
	// itself is bad (wrapping ErrBadRequest); engine refusals are replies.
	handle func(ctx context.Context, data []byte) (any, error)
	// fail is the reply to a request that could not be handled.
	fail func(err error) any
}

// server is one run of Serve.
type server struct {
	c   *Conn
	eng Engine

	hctx    context.Context // handlers' context: outlives Serve's ctx by the drain grace
	hcancel context.CancelFunc
	sem     chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	stopped bool // no new handler goroutines once set
	checks  checkMemo
}

func newServer(c *Conn, eng Engine) *server {
	hctx, hcancel := context.WithCancel(context.Background())
	return &server{c: c, eng: eng, hctx: hctx, hcancel: hcancel, sem: make(chan struct{}, maxInFlight)}
}

// Serve answers the node's request subjects and the fleet check until ctx
// ends, then drains them and waits for the requests in flight (cancelling
// those that outlast a short grace). Once the engine is Booted it announces
// the agent with an online AgentEvent and from then on keeps the node's
// NodeState in the bucket: at once, after engine events (at most about four
// puts a second), after every reconnect, and every 30 s as a heartbeat. Call
// it once per Conn.
func (c *Conn) Serve(ctx context.Context, eng Engine) error {
	if id := eng.NodeID(); id != c.node {
		return fmt.Errorf("bus: serve: engine is node %q, connection is node %q", id, c.node)
	}
	s := newServer(c, eng)
	defer s.hcancel()

	events, unsubscribe := eng.Subscribe()
	defer unsubscribe()

	var subs []*nats.Subscription
	for _, ep := range s.endpoints() {
		// No queue group: every node answers the fleet check, and a node's
		// own subjects have one subscriber anyway.
		sub, err := c.nc.Subscribe(ep.subject, s.dispatch(ep))
		if err != nil {
			for _, sub := range subs {
				_ = sub.Unsubscribe()
			}
			return fmt.Errorf("bus: subscribe %s: %w", ep.subject, err)
		}
		subs = append(subs, sub)
	}
	c.log.Info("serving", "node", c.node, "subjects", len(subs))

	loopCtx, stopLoop := context.WithCancel(ctx)
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		// Announce the agent once it knows what it booted: after an A/B
		// update's trial boot is committed or rolled back, so the online
		// event carries the versions that run. Requests are served meanwhile.
		select {
		case <-eng.Booted():
		case <-loopCtx.Done():
			return
		}
		ev := eng.EmitAgent(c.bootSlot())
		s.stateLoop(loopCtx, events, ev.Seq)
	}()

	<-ctx.Done()
	s.shutdown(subs)
	stopLoop()
	<-loopDone
	c.log.Info("stopped serving", "node", c.node)
	return nil
}

func (c *Conn) bootSlot() string {
	if c.opts.BootSlot == nil {
		return ""
	}
	return c.opts.BootSlot()
}

func (s *server) endpoints() []endpoint {
	node := s.c.node
	check := endpoint{
		handle: func(ctx context.Context, data []byte) (any, error) {
			req, err := s.checks.decode(data)
			if err != nil {
				return nil, fmt.Errorf("%w: check request: %w", ErrBadRequest, err)
			}
			r, err := s.eng.Check(ctx, req)
			if err != nil && r.Error == "" {
				r.Error = err.Error()
			}
			if r.NodeID == "" {
				r.NodeID = node
			}
			if r.Components == nil {
				r.Components = []subjects.ComponentUpdate{}
			}
			return r, nil
		},
		fail: func(err error) any {
			return subjects.CheckReply{NodeID: node, CurrentVersion: s.eng.CurrentVersion(),
				Components: []subjects.ComponentUpdate{}, Error: err.Error()}
		},
	}
	ackFail := func(err error) any { return subjects.Ack{Reason: err.Error()} }
	fleet := check
	check.subject = subjects.UpdateCheck(node)
	fleet.subject = subjects.FleetCheck()
	return []endpoint{
		check,
		fleet,
		{
			subject: subjects.UpdateApply(node),
			handle: func(ctx context.Context, data []byte) (any, error) {
				var cmd subjects.ApplyCommand
				if err := subjects.Decode(data, &cmd); err != nil {
					return nil, fmt.Errorf("%w: apply command: %w", ErrBadRequest, err)
				}
				a, err := s.eng.Apply(ctx, cmd)
				return completeAck(a, err, cmd.OperationID), nil
			},
			fail: ackFail,
		},
		{
			subject: subjects.UpdateCancel(node),
			handle: func(ctx context.Context, data []byte) (any, error) {
				var cmd subjects.CancelCommand
				if err := subjects.Decode(data, &cmd); err != nil {
					return nil, fmt.Errorf("%w: cancel command: %w", ErrBadRequest, err)
				}
				a, err := s.eng.Cancel(ctx, cmd)
				return completeAck(a, err, cmd.OperationID), nil
			},
			fail: ackFail,
		},
		{
			subject: subjects.UpdateStatus(node),
			handle: func(_ context.Context, data []byte) (any, error) {
				var req struct{}
				if err := subjects.Decode(data, &req); err != nil {
					return nil, fmt.Errorf("%w: status request: %w", ErrBadRequest, err)
				}
				r := s.eng.Status()
				if r.NodeID == "" {
					r.NodeID = node
				}
				return r, nil
			},
			// A status request is a read: say what is wrong, and still
			// report the installed versions.
			fail: func(err error) any {
				return subjects.StatusReport{NodeID: node, Status: subjects.StatusError, Message: err.Error(),
					Versions: s.eng.Status().Versions}
			},
		},
	}
}

// checkMemo remembers the check request decoded last. vDC sends the fleet
// the same request (the same signed manifest) again and again, and its
// strict decode costs several times the rest of the answer; equal bytes
// decode to an equal request, so they are decoded once.
type checkMemo struct {
	mu   sync.Mutex
	data []byte
	req  subjects.CheckRequest
}

func (m *checkMemo) decode(data []byte) (subjects.CheckRequest, error) {
	m.mu.Lock()
	if m.data != nil && bytes.Equal(m.data, data) {
		req := m.req
		m.mu.Unlock()
		return req, nil
	}
	m.mu.Unlock()
	var req subjects.CheckRequest
	if err := subjects.Decode(data, &req); err != nil {
		return req, err
	}
	m.mu.Lock()
	m.data, m.req = bytes.Clone(data), req
	m.mu.Unlock()
	return req, nil
}

// completeAck completes an engine answer to a command: a refusal without a
// reason gets the error as its reason, and the operation id is echoed.
func completeAck(a subjects.Ack, err error, opID string) subjects.Ack {
	if err != nil {
		a.Accepted = false
		if a.Reason == "" {
			a.Reason = err.Error()
		}
	}
	if a.OperationID == "" {
		a.OperationID = opID
	}
	return a
}

// dispatch runs each request in its own goroutine, at most maxInFlight at once.
func (s *server) dispatch(ep endpoint) nats.MsgHandler {
	return func(m *nats.Msg) {
		select {
		case s.sem <- struct{}{}:
		case <-s.hctx.Done():
			return
		}
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			<-s.sem
			return
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() { <-s.sem }()
			s.serve(ep, m)
		}()
	}
}

func (s *server) serve(ep endpoint, m *nats.Msg) {
	if m.Reply == "" {
		s.c.log.Debug("request without reply subject ignored", "subject", m.Subject)
		return
	}
	ctx, cancel := context.WithTimeout(s.hctx, s.c.reqTimeout)
	defer cancel()
	body, hdr := s.reply(ctx, ep, m.Data)
	if err := m.RespondMsg(&nats.Msg{Data: body, Header: hdr}); err != nil {
		s.c.log.Warn("reply failed", "subject", m.Subject, "err", err)
	}
}

// reply computes the answer to one request: its JSON and, for a request that
// failed, the micro error headers.
func (s *server) reply(ctx context.Context, ep endpoint, data []byte) (body []byte, hdr nats.Header) {
	v, code, err := s.call(ctx, ep, data)
	if err != nil {
		s.c.log.Warn("request failed", "subject", ep.subject, "code", code, "err", err)
		v = ep.fail(err)
		hdr = nats.Header{}
		hdr.Set(micro.ErrorHeader, err.Error())
		hdr.Set(micro.ErrorCodeHeader, strconv.Itoa(code))
	}
	body, merr := json.Marshal(v)
	if merr != nil {
		// The reply types marshal; this guards a future field that does not.
		s.c.log.Error("encode reply", "subject", ep.subject, "err", merr)
		body, _ = json.Marshal(ep.fail(fmt.Errorf("encode reply: %w", merr)))
	}
	return body, hdr
}

// call runs ep's handler, turning a panic into an internal error so one bad
// request cannot take the agent down.
func (s *server) call(ctx context.Context, ep endpoint, data []byte) (v any, code int, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.c.log.Error("request handler panicked", "subject", ep.subject, "panic", r, "stack", string(debug.Stack()))
			v, code, err = nil, 500, fmt.Errorf("internal error: %v", r)
		}
	}()
	v, err = ep.handle(ctx, data)
	if err != nil {
		return nil, 400, err
	}
	return v, 0, nil
}

// shutdown drains the subscriptions so buffered requests are still answered,
// then waits for the handlers; after the grace it cancels what still runs.
func (s *server) shutdown(subs []*nats.Subscription) {
	expired := make(chan struct{}) // closed when the grace is over
	t := time.AfterFunc(s.c.drainGrace, func() { close(expired) })
	defer t.Stop()

	// While disconnected nothing new can arrive, and a drain would wait for a
	// flush that cannot happen until the server is back.
	if !s.c.nc.IsConnected() || !drain(subs, expired) {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
	}
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-expired:
	}
	s.c.log.Warn("cancelling requests still in flight")
	s.hcancel()
	<-done
}

// drain drains subs and reports whether all closed before expired.
func drain(subs []*nats.Subscription, expired <-chan struct{}) bool {
	closed := make([]<-chan nats.SubStatus, len(subs))
	for i, sub := range subs {
		closed[i] = sub.StatusChanged(nats.SubscriptionClosed)
		if err := sub.Drain(); err != nil {
			return false
		}
	}
	for _, ch := range closed {
		select {
		case <-ch:
		case <-expired:
			return false
		}
	}
	return true
}

// stateLoop keeps the node's NodeState in the bucket. Puts are coalesced: a
// burst of events leads to one put per minGap with the latest state. A put
// that fails is retried with a backoff (the bucket may not exist yet when
// the agent connects before vdc-sim provisions it), and at once after a
// reconnect.
func (s *server) stateLoop(ctx context.Context, events <-chan subjects.UpdateEvent, lastSeq uint64) {
	hb := time.NewTicker(s.c.heartbeat)
	defer hb.Stop()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var next time.Time // earliest time of the next put
	var backoff time.Duration
	dirty, armed := true, false
	for {
		if dirty && !armed {
			if wait := time.Until(next); wait > 0 {
				timer.Reset(wait)
				armed = true
			} else if err := s.putState(ctx, lastSeq); err != nil {
				if ctx.Err() != nil {
					return
				}
				backoff = min(max(2*backoff, time.Second), s.c.heartbeat)
				next = time.Now().Add(backoff)
				s.c.log.Debug("node state not stored, will retry", "in", backoff, "err", err)
			} else {
				backoff = 0
				dirty = false
				next = time.Now().Add(s.c.minGap)
			}
		}
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			lastSeq = max(lastSeq, ev.Seq)
			dirty = true
		case <-s.c.connected:
			// The server may have lost or never seen the last put.
			dirty = true
			if backoff > 0 {
				backoff, next = 0, time.Time{}
				timer.Stop()
				armed = false
			}
		case <-hb.C:
			dirty = true
		case <-timer.C:
			armed = false
		}
	}
}

// putState publishes the node's state to its key. It is a plain JetStream
// publish on the key's subject, not a KeyValue call: the node's NATS user may
// publish its own key subject but not use the JetStream API.
func (s *server) putState(ctx context.Context, lastSeq uint64) error {
	st := s.eng.Status()
	ns := subjects.NodeState{
		NodeID:         s.c.node,
		Status:         st.Status,
		Message:        st.Message,
		CurrentVersion: s.eng.CurrentVersion(),
		Versions:       st.Versions,
		OperationID:    st.OperationID,
		BootSlot:       s.c.bootSlot(),
		AgentVersion:   s.c.opts.AgentVersion,
		LastSeq:        lastSeq,
		UpdatedAt:      s.c.now().UTC(),
	}
	if st.Progress != nil {
		p := st.Progress.Percentage
		ns.Progress = &p
	}
	b, err := json.Marshal(ns)
	if err != nil {
		return fmt.Errorf("encode node state: %w", err)
	}
	m := nats.NewMsg(subjects.KVSubject(s.c.node))
	m.Data = b
	ctx, cancel := context.WithTimeout(ctx, s.c.opTimeout)
	defer cancel()
	if _, err := s.c.jsPublish(ctx, m); err != nil {
		return fmt.Errorf("put node state %s: %w", subjects.KVSubject(s.c.node), err)
	}
	return nil
}
