package maintenance

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/quantix-os/update-agent/internal/natstest"
	"github.com/quantix-os/update-agent/internal/qxtest"
	"github.com/quantix-os/update-agent/subjects"
)

const node = "node-a"

// fakeVDC answers the node's maintenance subjects as vDC would, with
// whatever the test's handlers say, and records what it was asked.
type fakeVDC struct {
	t  *testing.T
	nc *nats.Conn

	// request answers a maintenance request with a reply (nil: none) and
	// the events to publish after it ([]byte as is, anything else as JSON).
	request func(req subjects.MaintenanceRequest) (reply *nats.Msg, then []any)
	// status answers the n-th status request (from 0).
	status func(n int, req subjects.MaintenanceStatusRequest) *nats.Msg
	// release answers a release.
	release func(rel subjects.MaintenanceRelease) *nats.Msg

	mu       sync.Mutex
	requests []subjects.MaintenanceRequest
	statuses []subjects.MaintenanceStatusRequest
	releases []subjects.MaintenanceRelease
}

// env is one test's NATS server and the agent's connection to it.
type env struct {
	t    *testing.T
	url  string
	nc   *nats.Conn
	logs *qxtest.SyncBuffer
	c    *Client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	s := natstest.Start(t)
	e := &env{t: t, url: s.ClientURL(), logs: &qxtest.SyncBuffer{}}
	e.nc = connect(t, e.url)
	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.c = New(e.nc, node, log)
	return e
}

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// vdc starts f on its own connection, subscribed to the node's maintenance
// subjects, and returns it once the server knows the subscriptions.
func (e *env) vdc(f *fakeVDC) *fakeVDC {
	e.t.Helper()
	f.t, f.nc = e.t, connect(e.t, e.url)
	subs := []struct {
		subject string
		handle  func(m *nats.Msg)
	}{
		{subjects.VDCMaintenanceRequest(node), f.onRequest},
		{subjects.VDCMaintenanceStatus(node), f.onStatus},
		{subjects.VDCMaintenanceRelease(node), f.onRelease},
	}
	for _, s := range subs {
		if _, err := f.nc.Subscribe(s.subject, s.handle); err != nil {
			e.t.Fatalf("fake vDC: subscribe %s: %v", s.subject, err)
		}
	}
	if err := f.nc.Flush(); err != nil {
		e.t.Fatalf("fake vDC: flush: %v", err)
	}
	return f
}

func (f *fakeVDC) onRequest(m *nats.Msg) {
	var req subjects.MaintenanceRequest
	if err := subjects.Decode(m.Data, &req); err != nil {
		f.t.Errorf("fake vDC: maintenance request %s: %v", m.Data, err)
		return
	}
	f.mu.Lock()
	f.requests = append(f.requests, req)
	f.mu.Unlock()
	if f.request == nil {
		return
	}
	reply, then := f.request(req)
	f.respond(m, reply)
	for _, v := range then {
		if err := f.nc.Publish(subjects.NodeMaintenance(node), payload(f.t, v)); err != nil {
			f.t.Errorf("fake vDC: publish: %v", err)
		}
	}
}

func (f *fakeVDC) onStatus(m *nats.Msg) {
	var req subjects.MaintenanceStatusRequest
	if err := subjects.Decode(m.Data, &req); err != nil {
		f.t.Errorf("fake vDC: status request %s: %v", m.Data, err)
		return
	}
	f.mu.Lock()
	n := len(f.statuses)
	f.statuses = append(f.statuses, req)
	f.mu.Unlock()
	if f.status != nil {
		f.respond(m, f.status(n, req))
	}
}

func (f *fakeVDC) onRelease(m *nats.Msg) {
	var rel subjects.MaintenanceRelease
	if err := subjects.Decode(m.Data, &rel); err != nil {
		f.t.Errorf("fake vDC: release %s: %v", m.Data, err)
		return
	}
	f.mu.Lock()
	f.releases = append(f.releases, rel)
	f.mu.Unlock()
	if f.release != nil {
		f.respond(m, f.release(rel))
	}
}

func (f *fakeVDC) respond(m *nats.Msg, reply *nats.Msg) {
	if reply == nil {
		return
	}
	if err := m.RespondMsg(reply); err != nil {
		f.t.Errorf("fake vDC: respond: %v", err)
	}
}

func (f *fakeVDC) counts() (requests, statuses, releases int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests), len(f.statuses), len(f.releases)
}

// payload is v as a message body: []byte as is, anything else as JSON.
func payload(t *testing.T, v any) []byte {
	if b, ok := v.([]byte); ok {
		return b
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Errorf("marshal %v: %v", v, err)
	}
	return b
}

// msg is a reply carrying v (see payload).
func msg(t *testing.T, v any) *nats.Msg { return &nats.Msg{Data: payload(t, v)} }

// serviceError is a reply with micro's error headers, as internal/bus sends.
func serviceError(desc, code string) *nats.Msg {
	h := nats.Header{}
	h.Set(micro.ErrorHeader, desc)
	h.Set(micro.ErrorCodeHeader, code)
	return &nats.Msg{Data: []byte(`{}`), Header: h}
}

// ev is an event of node; vms < 0 leaves vmsRemaining out.
func ev(id string, state subjects.MaintenanceState, vms int) subjects.MaintenanceEvent {
	e := subjects.MaintenanceEvent{MaintenanceID: id, NodeID: node, State: state}
	if vms >= 0 {
		e.VMsRemaining = &vms
	}
	return e
}

func request() subjects.MaintenanceRequest {
	return subjects.MaintenanceRequest{NodeID: node, TargetVersion: "0.0.6", UpdateType: subjects.UpdateTypeFull, RequiresReboot: true, OperationID: "op-1"}
}

// seen records what onEvent is given, as "state/vms".
type seen struct {
	mu  sync.Mutex
	evs []string
}

func (s *seen) add(e subjects.MaintenanceEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.evs = append(s.evs, show(e))
}

func (s *seen) get() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.evs...)
}

func show(e subjects.MaintenanceEvent) string {
	s := e.MaintenanceID + ":" + string(e.State)
	if e.VMsRemaining != nil {
		b, _ := json.Marshal(*e.VMsRemaining)
		s += "/" + string(b)
	}
	return s
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestAcquireEvents: vDC answers queued, then publishes draining with 2 and
// 1 VMs left, then ready; Acquire returns ready and onEvent sees each state
// once, in order. No status poll is needed (Poll is left at 5 s).
func TestAcquireEvents(t *testing.T) {
	e := newEnv(t)
	f := e.vdc(&fakeVDC{request: func(subjects.MaintenanceRequest) (*nats.Msg, []any) {
		return msg(t, ev("m-1", subjects.MaintenanceQueued, -1)), []any{
			ev("m-1", subjects.MaintenanceDraining, 2),
			ev("m-1", subjects.MaintenanceDraining, 2), // a duplicate is not a new state
			ev("m-1", subjects.MaintenanceDraining, 1),
			ev("m-1", subjects.MaintenanceDraining, 2), // late: behind what was seen
			ev("m-1", subjects.MaintenanceQueued, -1),  // late too
			ev("m-1", subjects.MaintenanceReady, 0),
		}
	}})
	var s seen
	got, err := e.c.Acquire(timeout(t, 5*time.Second), request(), s.add)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if show(got) != "m-1:ready/0" {
		t.Errorf("Acquire = %s; want m-1:ready/0", show(got))
	}
	want := []string{"m-1:queued", "m-1:draining/2", "m-1:draining/1"}
	if got := s.get(); !reflect.DeepEqual(got, want) {
		t.Errorf("onEvent saw %q; want %q", got, want)
	}
	if n, st, _ := f.counts(); n != 1 || st != 0 {
		t.Errorf("fake vDC got %d requests, %d status requests; want 1, 0", n, st)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.requests[0] != request() {
		t.Errorf("request = %+v; want %+v", f.requests[0], request())
	}
}

// TestAcquirePoll: vDC publishes no event after its first reply; the status
// poll alone walks the maintenance to ready.
func TestAcquirePoll(t *testing.T) {
	e := newEnv(t)
	e.c.Poll = 20 * time.Millisecond
	states := []subjects.MaintenanceEvent{
		ev("m-1", subjects.MaintenanceDraining, 2),
		ev("m-1", subjects.MaintenanceDraining, 1),
		ev("m-1", subjects.MaintenanceReady, 0),
	}
	f := e.vdc(&fakeVDC{
		request: func(subjects.MaintenanceRequest) (*nats.Msg, []any) {
			return msg(t, ev("m-1", subjects.MaintenanceQueued, -1)), nil
		},
		status: func(n int, _ subjects.MaintenanceStatusRequest) *nats.Msg {
			return msg(t, states[min(n, len(states)-1)])
		},
	})
	var s seen
	got, err := e.c.Acquire(timeout(t, 5*time.Second), request(), s.add)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if got.State != subjects.MaintenanceReady {
		t.Errorf("Acquire = %s; want ready", show(got))
	}
	want := []string{"m-1:queued", "m-1:draining/2", "m-1:draining/1"}
	if got := s.get(); !reflect.DeepEqual(got, want) {
		t.Errorf("onEvent saw %q; want %q", got, want)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.statuses) != 3 {
		t.Errorf("%d status requests; want 3 (ready ends the poll)", len(f.statuses))
	}
	for _, r := range f.statuses {
		if r.MaintenanceID != "m-1" {
			t.Errorf("status request for %q; want m-1", r.MaintenanceID)
		}
	}
}

// TestAcquireEnds: a maintenance that vDC ends before it is ready ends
// Acquire with the matching sentinel and vDC's reason.
func TestAcquireEnds(t *testing.T) {
	tests := []struct {
		name  string
		reply subjects.MaintenanceEvent // the request's reply
		then  []any
		want  error
		text  []string
	}{
		{
			name:  "cancelled",
			reply: ev("m-1", subjects.MaintenanceQueued, -1),
			then:  []any{subjects.MaintenanceEvent{MaintenanceID: "m-1", NodeID: node, State: subjects.MaintenanceCancelled, Reason: "operator aborted the rollout"}},
			want:  ErrCancelled,
			text:  []string{"m-1", "operator aborted the rollout"},
		},
		{
			name:  "failed",
			reply: ev("m-1", subjects.MaintenanceDraining, 3),
			then:  []any{subjects.MaintenanceEvent{MaintenanceID: "m-1", NodeID: node, State: subjects.MaintenanceFailed, Reason: "vm-7 will not migrate"}},
			want:  ErrFailed,
			text:  []string{"m-1", "failed", "vm-7 will not migrate"},
		},
		{
			name:  "released under us",
			reply: ev("m-1", subjects.MaintenanceQueued, -1),
			then:  []any{ev("m-1", subjects.MaintenanceReleased, -1)},
			want:  ErrFailed,
			text:  []string{"m-1", "released"},
		},
		{
			// vdc-sim answers a request it cannot take with a failed event
			// without an id: that ends Acquire at once, no retry.
			name:  "request declined",
			reply: subjects.MaintenanceEvent{NodeID: node, State: subjects.MaintenanceFailed, Reason: "nodeId does not match"},
			want:  ErrFailed,
			text:  []string{"nodeId does not match"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			f := e.vdc(&fakeVDC{request: func(subjects.MaintenanceRequest) (*nats.Msg, []any) {
				return msg(t, tt.reply), tt.then
			}})
			_, err := e.c.Acquire(timeout(t, 5*time.Second), request(), nil)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Acquire: %v; want %v", err, tt.want)
			}
			for _, s := range tt.text {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if n, _, _ := f.counts(); n != 1 {
				t.Errorf("%d maintenance requests; want 1", n)
			}
		})
	}
}

// TestAcquireDeadline: ctx ending while vDC drains names the maintenance
// and the state it was last in.
func TestAcquireDeadline(t *testing.T) {
	e := newEnv(t)
	e.c.Poll = 20 * time.Millisecond
	f := e.vdc(&fakeVDC{
		request: func(subjects.MaintenanceRequest) (*nats.Msg, []any) {
			return msg(t, ev("m-9", subjects.MaintenanceQueued, -1)), []any{ev("m-9", subjects.MaintenanceDraining, 4)}
		},
		status: func(int, subjects.MaintenanceStatusRequest) *nats.Msg {
			return msg(t, ev("m-9", subjects.MaintenanceDraining, 4))
		},
	})
	got, err := e.c.Acquire(timeout(t, 300*time.Millisecond), request(), nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire: %v; want the deadline", err)
	}
	for _, s := range []string{"m-9", "draining"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
	if got.State != subjects.MaintenanceDraining {
		t.Errorf("Acquire returned %s; want the last state, draining", show(got))
	}
	if _, st, _ := f.counts(); st == 0 {
		t.Error("no status request while draining")
	}
}

// TestAcquireRetry: with nobody answering at first, Acquire retries until
// vDC subscribes.
func TestAcquireRetry(t *testing.T) {
	e := newEnv(t)
	e.c.Poll = 20 * time.Millisecond
	type result struct {
		ev  subjects.MaintenanceEvent
		err error
	}
	done := make(chan result, 1)
	go func() {
		ev, err := e.c.Acquire(timeout(t, 5*time.Second), request(), nil)
		done <- result{ev, err}
	}()
	qxtest.WaitFor(t, 5*time.Second, "two failed requests", func() bool {
		return strings.Count(e.logs.String(), "no responders") >= 2
	})
	e.vdc(&fakeVDC{request: func(subjects.MaintenanceRequest) (*nats.Msg, []any) {
		return msg(t, ev("m-1", subjects.MaintenanceReady, 0)), nil
	}})
	r := <-done
	if r.err != nil || r.ev.MaintenanceID != "m-1" || r.ev.State != subjects.MaintenanceReady {
		t.Fatalf("Acquire = %s, %v; want m-1 ready", show(r.ev), r.err)
	}
}

// TestAcquireBadReply: a reply Acquire cannot use is retried (and logged)
// until ctx ends; the error then says what was wrong with it.
func TestAcquireBadReply(t *testing.T) {
	tests := []struct {
		name  string
		reply func(t *testing.T) *nats.Msg
		text  string
	}{
		{"malformed JSON", func(t *testing.T) *nats.Msg { return msg(t, []byte(`{"maintenanceId":"m-1",`)) }, "malformed message"},
		{"unknown field", func(t *testing.T) *nats.Msg {
			return msg(t, []byte(`{"maintenanceId":"m-1","nodeId":"node-a","state":"queued","eta":"soon"}`))
		}, `unknown field "eta"`},
		{"trailing data", func(t *testing.T) *nats.Msg {
			return msg(t, []byte(`{"maintenanceId":"m-1","nodeId":"node-a","state":"queued"} {}`))
		}, "trailing data"},
		{"empty", func(t *testing.T) *nats.Msg { return msg(t, []byte{}) }, "empty payload"},
		{"no maintenanceId", func(t *testing.T) *nats.Msg { return msg(t, ev("", subjects.MaintenanceQueued, -1)) }, "no maintenanceId"},
		{"unknown state", func(t *testing.T) *nats.Msg { return msg(t, ev("m-1", "parked", -1)) }, `unknown state "parked"`},
		{"other node", func(t *testing.T) *nats.Msg {
			return msg(t, subjects.MaintenanceEvent{MaintenanceID: "m-1", NodeID: "node-b", State: subjects.MaintenanceReady})
		}, `for node "node-b", not "node-a"`},
		{"negative vms", func(t *testing.T) *nats.Msg {
			return msg(t, []byte(`{"maintenanceId":"m-1","nodeId":"node-a","state":"draining","vmsRemaining":-3}`))
		}, "negative vmsRemaining -3"},
		{"service error", func(*testing.T) *nats.Msg { return serviceError("coordinator is read-only", "503") }, `vDC says "coordinator is read-only" (code 503)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.c.Poll = 20 * time.Millisecond
			f := e.vdc(&fakeVDC{request: func(subjects.MaintenanceRequest) (*nats.Msg, []any) {
				return tt.reply(t), nil
			}})
			_, err := e.c.Acquire(timeout(t, 300*time.Millisecond), request(), nil)
			if !errors.Is(err, ErrBadReply) {
				t.Fatalf("Acquire: %v; want ErrBadReply", err)
			}
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("error %q does not say %q", err, tt.text)
			}
			if n, _, _ := f.counts(); n < 2 {
				t.Errorf("%d maintenance requests; want retries", n)
			}
			if !strings.Contains(e.logs.String(), "retrying") {
				t.Errorf("no retry logged:\n%s", e.logs)
			}
		})
	}
}

// TestAcquireIgnoresStrangers: events and status replies of another
// maintenance, another node, or that do not decode leave the maintenance
// where it was.
func TestAcquireIgnoresStrangers(t *testing.T) {
	t.Run("events", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		e.vdc(&fakeVDC{request: func(subjects.MaintenanceRequest) (*nats.Msg, []any) {
			return msg(t, ev("m-1", subjects.MaintenanceQueued, -1)), []any{
				ev("m-2", subjects.MaintenanceReady, 0),
				subjects.MaintenanceEvent{MaintenanceID: "m-1", NodeID: "node-b", State: subjects.MaintenanceReady},
				ev("m-1", "parked", -1),
				[]byte(`{"maintenanceId":"m-1","state":"ready","extra":true}`),
				[]byte(`not json`),
				ev("m-1", subjects.MaintenanceDraining, 1),
				ev("m-1", subjects.MaintenanceReady, 0),
			}
		}})
		var s seen
		got, err := e.c.Acquire(timeout(t, 5*time.Second), request(), s.add)
		if err != nil || show(got) != "m-1:ready/0" {
			t.Fatalf("Acquire = %s, %v; want m-1:ready/0", show(got), err)
		}
		want := []string{"m-1:queued", "m-1:draining/1"}
		if got := s.get(); !reflect.DeepEqual(got, want) {
			t.Errorf("onEvent saw %q; want %q", got, want)
		}
	})
	t.Run("status", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		e.c.Poll = 20 * time.Millisecond
		replies := []*nats.Msg{
			msg(t, ev("m-2", subjects.MaintenanceReady, 0)),
			msg(t, subjects.MaintenanceEvent{MaintenanceID: "m-1", NodeID: "node-b", State: subjects.MaintenanceReady}),
			msg(t, ev("m-1", "parked", -1)),
			msg(t, []byte(`{"maintenanceId":"m-1","state":"ready","extra":true}`)),
			serviceError("try later", "500"),
			msg(t, ev("m-1", subjects.MaintenanceReady, 0)),
		}
		f := e.vdc(&fakeVDC{
			request: func(subjects.MaintenanceRequest) (*nats.Msg, []any) {
				return msg(t, ev("m-1", subjects.MaintenanceQueued, -1)), nil
			},
			status: func(n int, _ subjects.MaintenanceStatusRequest) *nats.Msg {
				return replies[min(n, len(replies)-1)]
			},
		})
		var s seen
		got, err := e.c.Acquire(timeout(t, 5*time.Second), request(), s.add)
		if err != nil || show(got) != "m-1:ready/0" {
			t.Fatalf("Acquire = %s, %v; want m-1:ready/0", show(got), err)
		}
		if _, st, _ := f.counts(); st != len(replies) {
			t.Errorf("ready after %d status requests; want %d (the strangers ignored)", st, len(replies))
		}
		if got := s.get(); !reflect.DeepEqual(got, []string{"m-1:queued"}) {
			t.Errorf("onEvent saw %q; want only m-1:queued", got)
		}
	})
}

func TestRelease(t *testing.T) {
	rel := subjects.MaintenanceRelease{MaintenanceID: "m-1", NodeID: node, Outcome: string(subjects.EventCompleted)}
	tests := []struct {
		name  string
		reply func(t *testing.T) *nats.Msg // nil: no vDC at all
		want  error                        // nil: success
		text  string
	}{
		{"accepted", func(t *testing.T) *nats.Msg { return msg(t, subjects.Ack{Accepted: true, OperationID: "m-1"}) }, nil, ""},
		{"refused", func(t *testing.T) *nats.Msg {
			return msg(t, subjects.Ack{OperationID: "m-1", Reason: `maintenance "m-1" of node node-a is unknown`})
		}, ErrRefused, `maintenance "m-1" of node node-a is unknown`},
		{"refused without reason", func(t *testing.T) *nats.Msg { return msg(t, subjects.Ack{}) }, ErrRefused, "no reason given"},
		{"malformed", func(t *testing.T) *nats.Msg { return msg(t, []byte(`{"accepted":"yes"}`)) }, ErrBadReply, "malformed message"},
		{"unknown field", func(t *testing.T) *nats.Msg { return msg(t, []byte(`{"accepted":true,"ok":1}`)) }, ErrBadReply, `unknown field "ok"`},
		{"service error", func(*testing.T) *nats.Msg { return serviceError("bucket unavailable", "500") }, ErrBadReply, "bucket unavailable"},
		{"no responder", nil, nats.ErrNoResponders, "m-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			var f *fakeVDC
			if tt.reply != nil {
				f = e.vdc(&fakeVDC{release: func(subjects.MaintenanceRelease) *nats.Msg { return tt.reply(t) }})
			}
			err := e.c.Release(timeout(t, 2*time.Second), rel)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Release: %v", err)
				}
			} else {
				if !errors.Is(err, tt.want) {
					t.Fatalf("Release: %v; want %v", err, tt.want)
				}
				if !strings.Contains(err.Error(), tt.text) {
					t.Errorf("error %q does not say %q", err, tt.text)
				}
			}
			if f != nil {
				f.mu.Lock()
				defer f.mu.Unlock()
				if len(f.releases) != 1 || f.releases[0] != rel {
					t.Errorf("vDC got %+v; want [%+v]", f.releases, rel)
				}
			}
		})
	}
}

// FuzzDecodeEvent: whatever vDC sends, decodeEvent either errs with
// ErrBadReply or returns an event of this node, with an id and a known
// state, that survives a round trip.
func FuzzDecodeEvent(f *testing.F) {
	for _, s := range []string{
		`{"maintenanceId":"m-1","nodeId":"node-a","state":"draining","vmsRemaining":2}`,
		`{"maintenanceId":"m-1","state":"ready"}`,
		`{"maintenanceId":"m-1","nodeId":"node-b","state":"ready"}`,
		`{"maintenanceId":"","nodeId":"node-a","state":"failed","reason":"no"}`,
		`{"maintenanceId":"m-1","nodeId":"node-a","state":"parked"}`,
		`{"maintenanceId":"m-1","nodeId":"node-a","state":"draining","vmsRemaining":-1}`,
		`{"maintenanceId":"m-1","state":"queued","x":1}`,
		`{"maintenanceId":"m-1","state":"queued"} []`,
		`{"maintenanceId":`,
		``,
		`null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeEvent(data, node)
		if err != nil {
			if !errors.Is(err, ErrBadReply) {
				t.Fatalf("decodeEvent(%q): %v does not wrap ErrBadReply", data, err)
			}
			return
		}
		if got.MaintenanceID == "" || !known(got.State) || (got.NodeID != "" && got.NodeID != node) ||
			(got.VMsRemaining != nil && *got.VMsRemaining < 0) {
			t.Fatalf("decodeEvent(%q) = %+v passed the check", data, got)
		}
		b, err := json.Marshal(got)
		if err != nil {
			t.Fatal(err)
		}
		again, err := decodeEvent(b, node)
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("round trip of %+v: %+v, %v", got, again, err)
		}
	})
}

// FuzzDecodeReply: a reply with error headers never decodes, and every
// failure wraps ErrBadReply.
func FuzzDecodeReply(f *testing.F) {
	f.Add([]byte(`{"accepted":true,"operationId":"m-1"}`), "", "")
	f.Add([]byte(`{"accepted":true}`), "bad request", "400")
	f.Add([]byte(`{}`), "", "503")
	f.Add([]byte(`{"accepted":1}`), "", "")
	f.Add([]byte{}, "", "")
	f.Fuzz(func(t *testing.T, data []byte, desc, code string) {
		m := &nats.Msg{Data: data, Header: nats.Header{}}
		if desc != "" {
			m.Header.Set(micro.ErrorHeader, desc)
		}
		if code != "" {
			m.Header.Set(micro.ErrorCodeHeader, code)
		}
		var ack subjects.Ack
		err := decodeReply(m, &ack)
		if err != nil && !errors.Is(err, ErrBadReply) {
			t.Fatalf("decodeReply: %v does not wrap ErrBadReply", err)
		}
		if err == nil && (desc != "" || code != "" || len(data) == 0) {
			t.Fatalf("decodeReply(%q, %q, %q) succeeded", data, desc, code)
		}
	})
}
