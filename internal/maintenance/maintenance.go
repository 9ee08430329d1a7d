// Package maintenance is the node's side of vDC's maintenance mode: before a
// reboot the agent asks vDC to drain the host's VMs, waits until vDC says the
// host is ready, and releases it afterwards with the update's outcome.
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

	"github.com/quantix-os/update-agent/subjects"
)

// Sentinels for a maintenance that will not become ready.
var (
	ErrCancelled = errors.New("maintenance cancelled by vDC")
	ErrFailed    = errors.New("maintenance failed")
	ErrRefused   = errors.New("maintenance release refused")
)

// Client asks vDC for maintenance over NATS.
type Client struct {
	nc   *nats.Conn
	node string
	// Poll is how often the state is asked for when no event arrives: the
	// fallback after a missed event.
	Poll time.Duration
	log  *slog.Logger
}

// New returns a Client for node on nc.
func New(nc *nats.Conn, node string, log *slog.Logger) *Client {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Client{nc: nc, node: node, Poll: 5 * time.Second, log: log.With("component", "maintenance")}
}

func (c *Client) request(ctx context.Context, subject string, req, resp any) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	msg, err := c.nc.RequestWithContext(ctx, subject, b)
	if err != nil {
		return fmt.Errorf("request %s: %w", subject, err)
	}
	if err := json.Unmarshal(msg.Data, resp); err != nil {
		return fmt.Errorf("reply on %s: %w", subject, err)
	}
	return nil
}

// Acquire requests maintenance and returns once vDC reports it ready. Every
// state on the way goes to onEvent. It listens for vDC's events and asks for
// the state every Poll as well, so a missed event only costs a poll.
func (c *Client) Acquire(ctx context.Context, req subjects.MaintenanceRequest, onEvent func(subjects.MaintenanceEvent)) (subjects.MaintenanceEvent, error) {
	events := make(chan *nats.Msg, 64)
	sub, err := c.nc.ChanSubscribe(subjects.NodeMaintenance(c.node), events)
	if err != nil {
		return subjects.MaintenanceEvent{}, fmt.Errorf("maintenance: subscribe: %w", err)
	}
	defer sub.Unsubscribe()

	var ev subjects.MaintenanceEvent
	for {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := c.request(rctx, subjects.VDCMaintenanceRequest(c.node), req, &ev)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ev, fmt.Errorf("maintenance: %w", err)
		}
		c.log.Warn("maintenance request failed, retrying", "err", err)
		select {
		case <-ctx.Done():
			return ev, fmt.Errorf("maintenance: %w", err)
		case <-time.After(time.Second):
		}
	}
	id := ev.MaintenanceID
	req.MaintenanceID = id
	poll := time.NewTicker(c.Poll)
	defer poll.Stop()
	last, lastVMs := subjects.MaintenanceState(""), -1
	for {
		vms := -1
		if ev.VMsRemaining != nil {
			vms = *ev.VMsRemaining
		}
		if ev.MaintenanceID == id && (ev.State != last || vms != lastVMs) {
			last, lastVMs = ev.State, vms
			switch ev.State {
			case subjects.MaintenanceReady:
				return ev, nil
			case subjects.MaintenanceCancelled:
				return ev, fmt.Errorf("%s: %w", ev.Reason, ErrCancelled)
			case subjects.MaintenanceFailed, subjects.MaintenanceReleased:
				return ev, fmt.Errorf("%s (%s): %w", ev.Reason, ev.State, ErrFailed)
			}
			if onEvent != nil {
				onEvent(ev)
			}
		}
		select {
		case <-ctx.Done():
			return ev, fmt.Errorf("maintenance %s still %s: %w", id, ev.State, context.Cause(ctx))
		case m := <-events:
			var next subjects.MaintenanceEvent
			if err := subjects.Decode(m.Data, &next); err != nil {
				c.log.Warn("bad maintenance event", "err", err)
				continue
			}
			if next.MaintenanceID == id {
				ev = next
			}
		case <-poll.C:
			var next subjects.MaintenanceEvent
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := c.request(rctx, subjects.VDCMaintenanceStatus(c.node), subjects.MaintenanceStatusRequest{MaintenanceID: id}, &next)
			cancel()
			if err != nil {
				c.log.Debug("maintenance status", "err", err)
				continue
			}
			if next.MaintenanceID == id {
				ev = next
			}
		}
	}
}

// Release ends the maintenance with the update's outcome.
func (c *Client) Release(ctx context.Context, rel subjects.MaintenanceRelease) error {
	var ack subjects.Ack
	if err := c.request(ctx, subjects.VDCMaintenanceRelease(c.node), rel, &ack); err != nil {
		return fmt.Errorf("maintenance release: %w", err)
	}
	if !ack.Accepted {
		return fmt.Errorf("maintenance release %s: %s: %w", rel.MaintenanceID, ack.Reason, ErrRefused)
	}
	return nil
}
