// Package maintenance is the node's side of vDC's maintenance mode: before a
// reboot the agent asks vDC to drain the host's VMs, waits until vDC says the
// host is ready, and releases it afterwards with the update's outcome.
//
// vDC's replies and events are untrusted input: they are decoded strictly
// (subjects.Decode) and checked (a maintenance id, this node, a known state)
// before they move the maintenance on.
package maintenance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/quantix-os/update-agent/subjects"
)

// Sentinels for a maintenance that will not become ready.
var (
	ErrCancelled = errors.New("maintenance cancelled by vDC")
	ErrFailed    = errors.New("maintenance failed")
	ErrRefused   = errors.New("maintenance release refused")
	// ErrBadReply reports a reply or event from vDC that is not a usable
	// answer: a service error (micro's Nats-Service-Error headers), bytes that
	// do not decode strictly, or a message for no maintenance, another node or
	// an unknown state.
	ErrBadReply = errors.New("bad reply from vDC")
)

const (
	defaultPoll = 5 * time.Second
	// maxRetry caps the wait between maintenance requests that failed.
	maxRetry       = time.Second
	requestTimeout = 10 * time.Second
	statusTimeout  = 5 * time.Second
)

// Client asks vDC for maintenance over NATS.
type Client struct {
	nc   *nats.Conn
	node string
	// Poll is how often the state is asked for when no event arrives: the
	// fallback after a missed event. A failed maintenance request is retried
	// every Poll as well, at most a second apart. Zero or less means 5 s.
	Poll time.Duration
	log  *slog.Logger
}

// New returns a Client for node on nc.
func New(nc *nats.Conn, node string, log *slog.Logger) *Client {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Client{nc: nc, node: node, Poll: defaultPoll, log: log.With("component", "maintenance")}
}

func (c *Client) poll() time.Duration {
	if c.Poll <= 0 {
		return defaultPoll
	}
	return c.Poll
}

// request sends req on subject and decodes the reply strictly into resp.
func (c *Client) request(ctx context.Context, subject string, req, resp any) error {
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("request %s: %w", subject, err)
	}
	msg, err := c.nc.RequestWithContext(ctx, subject, b)
	if err != nil {
		return fmt.Errorf("request %s: %w", subject, err)
	}
	if err := decodeReply(msg, resp); err != nil {
		return fmt.Errorf("reply on %s: %w", subject, err)
	}
	return nil
}

// decodeReply turns vDC's micro error headers into an error that says what
// vDC said, and otherwise decodes the reply's payload strictly into v.
func decodeReply(m *nats.Msg, v any) error {
	desc, code := m.Header.Get(micro.ErrorHeader), m.Header.Get(micro.ErrorCodeHeader)
	if desc != "" || code != "" {
		if code == "" {
			code = "?"
		}
		return fmt.Errorf("vDC says %q (code %s): %w", desc, code, ErrBadReply)
	}
	if len(m.Data) == 0 {
		// subjects.Decode reads an empty payload as {}: a reply must say something.
		return fmt.Errorf("empty payload: %w", ErrBadReply)
	}
	if err := subjects.Decode(m.Data, v); err != nil {
		return fmt.Errorf("%w: %w", ErrBadReply, err)
	}
	return nil
}

// decodeEvent strictly decodes a MaintenanceEvent (an event or a reply's
// payload) and checks it is about a maintenance of node.
func decodeEvent(data []byte, node string) (subjects.MaintenanceEvent, error) {
	var ev subjects.MaintenanceEvent
	if err := subjects.Decode(data, &ev); err != nil {
		return ev, fmt.Errorf("%w: %w", ErrBadReply, err)
	}
	return ev, check(ev, node)
}

// check reports what makes ev unusable for node's maintenance, wrapping
// ErrBadReply. An empty nodeId is taken as node's: the subject names it.
func check(ev subjects.MaintenanceEvent, node string) error {
	switch {
	case ev.MaintenanceID == "":
		return fmt.Errorf("no maintenanceId (state %q): %w", ev.State, ErrBadReply)
	case ev.NodeID != "" && node != "" && ev.NodeID != node:
		return fmt.Errorf("maintenance %s is for node %q, not %q: %w", ev.MaintenanceID, ev.NodeID, node, ErrBadReply)
	case !known(ev.State):
		return fmt.Errorf("maintenance %s: unknown state %q: %w", ev.MaintenanceID, ev.State, ErrBadReply)
	case ev.VMsRemaining != nil && *ev.VMsRemaining < 0:
		return fmt.Errorf("maintenance %s: negative vmsRemaining %d: %w", ev.MaintenanceID, *ev.VMsRemaining, ErrBadReply)
	}
	return nil
}

func known(s subjects.MaintenanceState) bool {
	switch s {
	case subjects.MaintenanceQueued, subjects.MaintenanceDraining, subjects.MaintenanceReady,
		subjects.MaintenanceCancelled, subjects.MaintenanceFailed, subjects.MaintenanceReleased:
		return true
	}
	return false
}

// ask sends the maintenance request once and returns vDC's checked answer.
// A failed answer without a maintenance id is vDC declining the request
// (vdc-sim answers a request it cannot take that way): it is returned as is
// and ends Acquire, since asking again would get the same answer.
func (c *Client) ask(ctx context.Context, req subjects.MaintenanceRequest) (subjects.MaintenanceEvent, error) {
	subject := subjects.VDCMaintenanceRequest(c.node)
	var ev subjects.MaintenanceEvent
	if err := c.request(ctx, subject, req, &ev); err != nil {
		return ev, err
	}
	if ev.MaintenanceID == "" && ev.State == subjects.MaintenanceFailed && (ev.NodeID == "" || ev.NodeID == c.node) {
		return ev, nil
	}
	if err := check(ev, c.node); err != nil {
		return ev, fmt.Errorf("reply on %s: %w", subject, err)
	}
	return ev, nil
}

// Acquire requests maintenance and returns once vDC reports it ready. Every
// state on the way goes to onEvent. It listens for vDC's events and asks for
// the state every Poll as well, so a missed event only costs a poll.
//
// A request that fails (no responder, a timeout, a bad reply) is retried
// until ctx ends; the error then says why the last attempt failed.
func (c *Client) Acquire(ctx context.Context, req subjects.MaintenanceRequest, onEvent func(subjects.MaintenanceEvent)) (subjects.MaintenanceEvent, error) {
	events := make(chan *nats.Msg, 64)
	sub, err := c.nc.ChanSubscribe(subjects.NodeMaintenance(c.node), events)
	if err != nil {
		return subjects.MaintenanceEvent{}, fmt.Errorf("maintenance: subscribe: %w", err)
	}
	defer sub.Unsubscribe()

	retry := min(c.poll(), maxRetry)
	var ev subjects.MaintenanceEvent
	var why error // the last failure not caused by ctx ending
	for {
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		ev, err = c.ask(rctx, req)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			if why == nil {
				why = err
			}
			return ev, gaveUp(ctx, why)
		}
		why = err
		c.log.Warn("maintenance request failed, retrying", "err", err, "in", retry)
		select {
		case <-ctx.Done():
			return ev, gaveUp(ctx, why)
		case <-time.After(retry):
		}
	}
	id := ev.MaintenanceID
	req.MaintenanceID = id
	poll := time.NewTicker(c.poll())
	defer poll.Stop()
	last, lastVMs := subjects.MaintenanceState(""), -1
	for {
		vms := -1
		if ev.VMsRemaining != nil {
			vms = *ev.VMsRemaining
		}
		if ev.State != last || vms != lastVMs {
			last, lastVMs = ev.State, vms
			switch ev.State {
			case subjects.MaintenanceReady:
				return ev, nil
			case subjects.MaintenanceCancelled:
				return ev, fmt.Errorf("maintenance %s%s: %w", id, because(ev.Reason), ErrCancelled)
			case subjects.MaintenanceFailed, subjects.MaintenanceReleased:
				return ev, fmt.Errorf("maintenance %s %s%s: %w", id, ev.State, because(ev.Reason), ErrFailed)
			}
			if onEvent != nil {
				onEvent(ev)
			}
		}
		select {
		case <-ctx.Done():
			return ev, fmt.Errorf("maintenance %s still %s: %w", id, ev.State, context.Cause(ctx))
		case m := <-events:
			next, err := decodeEvent(m.Data, c.node)
			switch {
			case next.MaintenanceID != "" && next.MaintenanceID != id:
				c.log.Debug("event of another maintenance ignored", "maintenance", next.MaintenanceID, "want", id)
			case err != nil:
				c.log.Warn("bad maintenance event ignored", "maintenance", id, "err", err)
			case behind(next, ev):
				c.log.Debug("late maintenance event ignored", "maintenance", id, "state", next.State)
			default:
				ev = next
			}
		case <-poll.C:
			var next subjects.MaintenanceEvent
			rctx, cancel := context.WithTimeout(ctx, statusTimeout)
			err := c.request(rctx, subjects.VDCMaintenanceStatus(c.node), subjects.MaintenanceStatusRequest{MaintenanceID: id}, &next)
			cancel()
			switch {
			case err != nil:
				c.log.Debug("maintenance status", "maintenance", id, "err", err)
			case next.MaintenanceID != id:
				c.log.Debug("status of another maintenance ignored", "maintenance", next.MaintenanceID, "want", id)
			default:
				if err := check(next, c.node); err != nil {
					c.log.Warn("bad maintenance status ignored", "maintenance", id, "err", err)
					continue
				}
				if !behind(next, ev) {
					ev = next
				}
			}
		}
	}
}

// behind reports whether next is older news than cur: an event that waited
// in the subscription while a status reply moved on, or the other way round.
// A drain only moves forward (queued, draining with fewer VMs, ready); the
// states that end it are always news.
func behind(next, cur subjects.MaintenanceEvent) bool {
	rn, rc := progress(next.State), progress(cur.State)
	switch {
	case rn == 0 || rc == 0:
		return false
	case rn != rc:
		return rn < rc
	case next.State == subjects.MaintenanceDraining && next.VMsRemaining != nil && cur.VMsRemaining != nil:
		return *next.VMsRemaining > *cur.VMsRemaining
	}
	return false
}

// progress orders the states of a drain on its way to ready; 0 for the
// states that end it.
func progress(s subjects.MaintenanceState) int {
	switch s {
	case subjects.MaintenanceQueued:
		return 1
	case subjects.MaintenanceDraining:
		return 2
	case subjects.MaintenanceReady:
		return 3
	}
	return 0
}

// gaveUp is Acquire's error when ctx ends before vDC accepted the request:
// it keeps why the last attempt failed, which a bare deadline would hide.
func gaveUp(ctx context.Context, last error) error {
	cause := context.Cause(ctx)
	if errors.Is(last, cause) {
		return fmt.Errorf("request maintenance: %w", last)
	}
	return fmt.Errorf("request maintenance: %w (gave up: %w)", last, cause)
}

func because(reason string) string {
	if reason == "" {
		return ""
	}
	return ": " + reason
}

// Release ends the maintenance with the update's outcome.
func (c *Client) Release(ctx context.Context, rel subjects.MaintenanceRelease) error {
	var ack subjects.Ack
	if err := c.request(ctx, subjects.VDCMaintenanceRelease(c.node), rel, &ack); err != nil {
		return fmt.Errorf("maintenance release %s: %w", rel.MaintenanceID, err)
	}
	if !ack.Accepted {
		reason := ack.Reason
		if reason == "" {
			reason = "no reason given"
		}
		return fmt.Errorf("maintenance release %s: %s: %w", rel.MaintenanceID, reason, ErrRefused)
	}
	return nil
}
