package vdc

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"

	"github.com/quantix-os/update-agent/subjects"
)

// CoordinatorOptions shape the simulated maintenance mode.
type CoordinatorOptions struct {
	VMsPerNode     int           // simulated VMs on every node (default 3)
	DrainInterval  time.Duration // one VM migrates away per interval (default 1s)
	MaxUnavailable int           // nodes in maintenance at once (default 1); others queue
	Logger         *slog.Logger
}

// Coordinator plays vDC's maintenance coordinator: it drains a node's
// simulated VMs before the node may reboot, keeps at most MaxUnavailable
// nodes in maintenance, and queues the rest.
type Coordinator struct {
	nc   *nats.Conn
	opts CoordinatorOptions
	log  *slog.Logger

	mu     sync.Mutex
	byNode map[string]*window
	queue  []string // nodes waiting, oldest first
	wg     sync.WaitGroup
	ctx    context.Context
}

type window struct {
	ev     subjects.MaintenanceEvent
	vms    int
	cancel context.CancelFunc
}

func (w *window) active() bool {
	switch w.ev.State {
	case subjects.MaintenanceQueued, subjects.MaintenanceDraining, subjects.MaintenanceReady:
		return true
	}
	return false
}

// NewCoordinator returns a coordinator on nc.
func NewCoordinator(nc *nats.Conn, o CoordinatorOptions) *Coordinator {
	if o.VMsPerNode < 0 {
		o.VMsPerNode = 0
	}
	if o.DrainInterval <= 0 {
		o.DrainInterval = time.Second
	}
	if o.MaxUnavailable <= 0 {
		o.MaxUnavailable = 1
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Coordinator{nc: nc, opts: o, log: o.Logger.With("component", "maintenance"), byNode: map[string]*window{}}
}

// Run serves maintenance requests until ctx ends.
func (c *Coordinator) Run(ctx context.Context) error {
	c.mu.Lock()
	c.ctx = ctx
	c.mu.Unlock()
	sub, err := c.nc.Subscribe(subjects.VDCMaintenanceAll(), c.handle)
	if err != nil {
		return fmt.Errorf("maintenance coordinator: %w", err)
	}
	// vDC sees the cancel commands it sends; a cancelled update ends its maintenance too.
	csub, err := c.nc.Subscribe(subjects.UpdateCancel("*"), func(m *nats.Msg) {
		if _, node, err := subjects.Parse(m.Subject); err == nil {
			c.Cancel(node, "update cancelled")
		}
	})
	if err != nil {
		sub.Unsubscribe()
		return fmt.Errorf("maintenance coordinator: %w", err)
	}
	<-ctx.Done()
	sub.Unsubscribe()
	csub.Unsubscribe()
	c.mu.Lock()
	for _, w := range c.byNode {
		if w.cancel != nil {
			w.cancel()
		}
	}
	c.mu.Unlock()
	c.wg.Wait()
	return nil
}

func (c *Coordinator) handle(m *nats.Msg) {
	kind, node, err := subjects.Parse(m.Subject)
	if err != nil {
		return
	}
	reply := func(v any) {
		b, _ := json.Marshal(v)
		m.Respond(b)
	}
	fail := func(id, reason string) {
		reply(subjects.MaintenanceEvent{MaintenanceID: id, NodeID: node, State: subjects.MaintenanceFailed, Reason: reason})
	}
	switch kind {
	case subjects.KindMaintenanceRequest:
		var req subjects.MaintenanceRequest
		if err := subjects.Decode(m.Data, &req); err != nil {
			fail("", err.Error())
			return
		}
		if req.NodeID != node {
			fail("", fmt.Sprintf("nodeId %q does not match the subject's node %q", req.NodeID, node))
			return
		}
		reply(c.request(node, req))
	case subjects.KindMaintenanceStatus:
		var req subjects.MaintenanceStatusRequest
		if err := subjects.Decode(m.Data, &req); err != nil {
			fail("", err.Error())
			return
		}
		c.mu.Lock()
		w := c.byNode[node]
		c.mu.Unlock()
		if w == nil || (req.MaintenanceID != "" && w.ev.MaintenanceID != req.MaintenanceID) {
			fail(req.MaintenanceID, "unknown maintenance")
			return
		}
		c.mu.Lock()
		ev := w.ev
		c.mu.Unlock()
		reply(ev)
	case subjects.KindMaintenanceRelease:
		var rel subjects.MaintenanceRelease
		if err := subjects.Decode(m.Data, &rel); err != nil {
			reply(subjects.Ack{Reason: err.Error()})
			return
		}
		if err := c.release(node, rel); err != nil {
			reply(subjects.Ack{OperationID: rel.MaintenanceID, Reason: err.Error()})
			return
		}
		reply(subjects.Ack{Accepted: true, OperationID: rel.MaintenanceID})
	}
}

func (c *Coordinator) request(node string, req subjects.MaintenanceRequest) subjects.MaintenanceEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	if w := c.byNode[node]; w != nil && w.active() {
		// The node asks again (a restart, a retry): same window.
		return w.ev
	}
	w := &window{ev: subjects.MaintenanceEvent{MaintenanceID: uuid.NewString(), NodeID: node, State: subjects.MaintenanceQueued}, vms: c.opts.VMsPerNode}
	c.byNode[node] = w
	c.log.Info("maintenance requested", "node", node, "maintenance", w.ev.MaintenanceID, "target", req.TargetVersion)
	c.queue = append(c.queue, node)
	c.promoteLocked()
	return w.ev
}

// promoteLocked starts draining queued nodes while there is room.
func (c *Coordinator) promoteLocked() {
	busy := 0
	for _, w := range c.byNode {
		if w.ev.State == subjects.MaintenanceDraining || w.ev.State == subjects.MaintenanceReady {
			busy++
		}
	}
	for busy < c.opts.MaxUnavailable && len(c.queue) > 0 {
		node := c.queue[0]
		c.queue = c.queue[1:]
		w := c.byNode[node]
		if w == nil || w.ev.State != subjects.MaintenanceQueued {
			continue
		}
		busy++
		w.ev.State = subjects.MaintenanceDraining
		w.ev.VMsRemaining = ptr(w.vms)
		c.publishLocked(w)
		ctx := c.ctx
		if ctx == nil {
			ctx = context.Background()
		}
		dctx, cancel := context.WithCancel(ctx)
		w.cancel = cancel
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.drain(dctx, w)
		}()
	}
}

func ptr(n int) *int { return &n }

// drain migrates one VM per interval, then declares the node ready.
func (c *Coordinator) drain(ctx context.Context, w *window) {
	t := time.NewTicker(c.opts.DrainInterval)
	defer t.Stop()
	for {
		c.mu.Lock()
		if w.ev.State != subjects.MaintenanceDraining {
			c.mu.Unlock()
			return
		}
		if w.vms <= 0 {
			w.ev.State = subjects.MaintenanceReady
			w.ev.VMsRemaining = ptr(0)
			c.publishLocked(w)
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		if w.ev.State == subjects.MaintenanceDraining {
			w.vms--
			w.ev.VMsRemaining = ptr(w.vms)
			if w.vms > 0 {
				c.publishLocked(w)
			}
		}
		c.mu.Unlock()
	}
}

func (c *Coordinator) publishLocked(w *window) {
	b, _ := json.Marshal(w.ev)
	if err := c.nc.Publish(subjects.NodeMaintenance(w.ev.NodeID), b); err != nil {
		c.log.Warn("publish maintenance event", "node", w.ev.NodeID, "err", err)
	}
	c.log.Info("maintenance", "node", w.ev.NodeID, "state", w.ev.State, "vmsRemaining", deref(w.ev.VMsRemaining), "reason", w.ev.Reason)
}

func deref(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}

func (c *Coordinator) release(node string, rel subjects.MaintenanceRelease) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.byNode[node]
	if w == nil || w.ev.MaintenanceID != rel.MaintenanceID {
		return fmt.Errorf("maintenance %q of node %s is unknown", rel.MaintenanceID, node)
	}
	if w.cancel != nil {
		w.cancel()
	}
	if w.ev.State != subjects.MaintenanceReleased {
		w.ev.State = subjects.MaintenanceReleased
		w.ev.Reason = rel.Outcome
		w.vms = c.opts.VMsPerNode // the VMs come back
		c.publishLocked(w)
	}
	c.promoteLocked()
	return nil
}

// Cancel ends node's maintenance, whatever state it is in; reports whether
// there was one to cancel.
func (c *Coordinator) Cancel(node, reason string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.byNode[node]
	if w == nil || !w.active() {
		return false
	}
	if w.cancel != nil {
		w.cancel()
	}
	w.ev.State = subjects.MaintenanceCancelled
	w.ev.Reason = reason
	c.publishLocked(w)
	c.promoteLocked()
	return true
}

// States is every node's latest maintenance event, by node id.
func (c *Coordinator) States() []subjects.MaintenanceEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]subjects.MaintenanceEvent, 0, len(c.byNode))
	for _, w := range c.byNode {
		out = append(out, w.ev)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NodeID < out[j].NodeID })
	return out
}
