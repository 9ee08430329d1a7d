package bus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quantix-os/update-agent/internal/bus"
	"github.com/quantix-os/update-agent/internal/qxtest"
	"github.com/quantix-os/update-agent/subjects"
)

var errBusy = errors.New("another update is in progress")

// fakeEngine answers like the engine, from fields the test sets, and records
// what it was asked.
type fakeEngine struct {
	node   string
	events chan subjects.UpdateEvent

	mu        sync.Mutex
	checks    []subjects.CheckRequest
	applies   []subjects.ApplyCommand
	cancels   []subjects.CancelCommand
	boots     []string
	seq       uint64
	busy      bool
	status    subjects.StatusReport
	checkHook func(ctx context.Context) // runs inside Check, to hold a request in flight
	booted    chan struct{}
}

func newFake(node string) *fakeEngine {
	return &fakeEngine{
		node:   node,
		events: make(chan subjects.UpdateEvent, 256),
		status: subjects.StatusReport{NodeID: node, Status: subjects.StatusIdle,
			Versions: subjects.Versions{OS: "0.0.5", Components: map[string]string{"qx-node": "0.0.5"}}},
	}
}

func (f *fakeEngine) NodeID() string { return f.node }

func (f *fakeEngine) Check(ctx context.Context, req subjects.CheckRequest) (subjects.CheckReply, error) {
	f.mu.Lock()
	f.checks = append(f.checks, req)
	hook := f.checkHook
	f.mu.Unlock()
	if hook != nil {
		hook(ctx)
	}
	ch := req.Channel
	if ch == "" {
		ch = "dev"
	}
	if ch == "broken" {
		err := fmt.Errorf("fetch manifest for channel %s: server said 503", ch)
		return subjects.CheckReply{NodeID: f.node, Channel: ch, CurrentVersion: "0.0.5", Error: err.Error()}, err
	}
	return subjects.CheckReply{NodeID: f.node, Available: true, CurrentVersion: "0.0.5", AvailableVersion: "0.0.6",
		Channel: ch, Components: []subjects.ComponentUpdate{{Name: "qx-node", CurrentVersion: "0.0.5", NewVersion: "0.0.6", SizeBytes: 10}},
		TotalDownloadSize: 10}, nil
}

func (f *fakeEngine) Apply(_ context.Context, cmd subjects.ApplyCommand) (subjects.Ack, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applies = append(f.applies, cmd)
	if f.busy {
		// The engine fills Reason itself; leaving it empty checks the bus does.
		return subjects.Ack{OperationID: cmd.OperationID}, fmt.Errorf("operation op-0 is in progress: %w", errBusy)
	}
	return subjects.Ack{Accepted: true, OperationID: cmd.OperationID}, nil
}

func (f *fakeEngine) Cancel(_ context.Context, cmd subjects.CancelCommand) (subjects.Ack, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cancels = append(f.cancels, cmd)
	return subjects.Ack{Accepted: true, OperationID: "op-1"}, nil
}

func (f *fakeEngine) Status() subjects.StatusReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

func (f *fakeEngine) CurrentVersion() string { return "0.0.5" }

func (f *fakeEngine) Subscribe() (<-chan subjects.UpdateEvent, func()) { return f.events, func() {} }

// Booted is closed unless the test holds the boot decision with holdBoot.
func (f *fakeEngine) Booted() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.booted == nil {
		f.booted = make(chan struct{})
		close(f.booted)
	}
	return f.booted
}

// holdBoot makes Booted block until the returned func is called.
func (f *fakeEngine) holdBoot() (release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan struct{})
	f.booted = ch
	return func() { close(ch) }
}

func (f *fakeEngine) EmitAgent(bootSlot string) subjects.AgentEvent {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.boots = append(f.boots, bootSlot)
	f.seq++
	return subjects.AgentEvent{ID: fmt.Sprintf("agent-%d", f.seq), NodeID: f.node, Seq: f.seq, Type: subjects.EventOnline, BootSlot: bootSlot}
}

// emit sends an update event as the engine would, with the next seq.
func (f *fakeEngine) emit(st subjects.Status, progress *subjects.Progress) uint64 {
	f.mu.Lock()
	f.seq++
	seq := f.seq
	f.status.Status = st
	f.status.Progress = progress
	f.mu.Unlock()
	f.events <- subjects.UpdateEvent{Seq: seq, NodeID: f.node, Type: subjects.EventStatus, Status: st}
	return seq
}

func (f *fakeEngine) bootSlots() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.boots...)
}

// connect connects node to url and closes the connection when the test ends.
func connect(t *testing.T, url, node string, mods ...func(*bus.Options)) *bus.Conn {
	t.Helper()
	o := bus.Options{NodeID: node, URL: url, AgentVersion: "1.2.3", BootSlot: func() string { return "b" }}
	for _, m := range mods {
		m(&o)
	}
	c, err := bus.Connect(context.Background(), o)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(c.Close)
	bus.SetTimings(c, 30*time.Second, 250*time.Millisecond, 2*time.Second)
	return c
}

// serve runs c.Serve(eng) until the test ends and checks it returned cleanly.
// The returned stop ends it early and waits for it.
func serve(t *testing.T, c *bus.Conn, eng bus.Engine) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx, eng) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				err = errors.New("Serve did not return within 10s of its context ending")
			}
		})
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return stop
}

// client is a plain connection for the test's side (vDC).
func client(t *testing.T, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("client connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("client jetstream: %v", err)
	}
	return nc, js
}

// request sends data to subj, retrying while nobody answers yet (Serve
// subscribing, the agent reconnecting).
func request(t *testing.T, nc *nats.Conn, subj string, data []byte) *nats.Msg {
	t.Helper()
	var msg *nats.Msg
	qxtest.WaitFor(t, 10*time.Second, "a reply on "+subj, func() bool {
		m, err := nc.Request(subj, data, time.Second)
		msg = m
		return err == nil
	})
	return msg
}

func decode[T any](t *testing.T, data []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("reply %s: %v", data, err)
	}
	return v
}

// nodeState reads node's NodeState from the bucket; ok is false while absent.
func nodeState(t *testing.T, kv jetstream.KeyValue, node string) (subjects.NodeState, uint64, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e, err := kv.Get(ctx, subjects.Key(node))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return subjects.NodeState{}, 0, false
	}
	if err != nil {
		t.Fatalf("kv get %s: %v", node, err)
	}
	return decode[subjects.NodeState](t, e.Value()), e.Revision(), true
}

func bucket(t *testing.T, js jetstream.JetStream) jetstream.KeyValue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, subjects.Bucket)
	if err != nil {
		t.Fatalf("bucket %s: %v", subjects.Bucket, err)
	}
	return kv
}
