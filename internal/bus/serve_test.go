package bus_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/quantix-os/update-agent/internal/bus"
	"github.com/quantix-os/update-agent/internal/natstest"
	"github.com/quantix-os/update-agent/internal/qxtest"
	"github.com/quantix-os/update-agent/subjects"
)

func TestRequests(t *testing.T) {
	s := natstest.Start(t)
	natstest.Provision(t, s.ClientURL())
	eng := newFake("node-a")
	eng.status.Progress = &subjects.Progress{CurrentComponent: "qx-node", DownloadedBytes: 5, TotalBytes: 10, Percentage: 50}
	serve(t, connect(t, s.ClientURL(), "node-a"), eng)
	nc, _ := client(t, s.ClientURL())

	tests := []struct {
		name    string
		subject string
		data    string
		busy    bool
		bad     string // non-empty: the request is bad and the error names this
		check   func(t *testing.T, data []byte)
	}{
		{
			name: "check", subject: subjects.UpdateCheck("node-a"), data: `{"channel":"stable","refresh":true}`,
			check: func(t *testing.T, data []byte) {
				r := decode[subjects.CheckReply](t, data)
				if r.NodeID != "node-a" || !r.Available || r.AvailableVersion != "0.0.6" || r.Channel != "stable" || len(r.Components) != 1 || r.Error != "" {
					t.Errorf("reply = %+v", r)
				}
				if !strings.Contains(string(data), `"availableVersion":"0.0.6"`) || !strings.Contains(string(data), `"fullImageAvailable":false`) {
					t.Errorf("reply JSON %s lacks camelCase fields", data)
				}
			},
		},
		{
			name: "check failing in the engine", subject: subjects.UpdateCheck("node-a"), data: `{"channel":"broken"}`,
			check: func(t *testing.T, data []byte) {
				r := decode[subjects.CheckReply](t, data)
				if r.NodeID != "node-a" || r.Available || !strings.Contains(r.Error, "503") {
					t.Errorf("reply = %+v, want the engine's error", r)
				}
			},
		},
		{
			name: "fleet check", subject: subjects.FleetCheck(), data: `{}`,
			check: func(t *testing.T, data []byte) {
				if r := decode[subjects.CheckReply](t, data); r.NodeID != "node-a" || r.Channel != "dev" {
					t.Errorf("reply = %+v", r)
				}
			},
		},
		{
			name: "apply", subject: subjects.UpdateApply("node-a"), data: `{"operationId":"op-7","version":"0.0.6","forceReboot":true}`,
			check: func(t *testing.T, data []byte) {
				if a := decode[subjects.Ack](t, data); !a.Accepted || a.OperationID != "op-7" || a.Reason != "" {
					t.Errorf("ack = %+v", a)
				}
			},
		},
		{
			name: "apply while busy", subject: subjects.UpdateApply("node-a"), data: `{"operationId":"op-8","forceReboot":false}`, busy: true,
			check: func(t *testing.T, data []byte) {
				a := decode[subjects.Ack](t, data)
				if a.Accepted || a.OperationID != "op-8" || !strings.Contains(a.Reason, "in progress") {
					t.Errorf("ack = %+v, want a refusal naming the running operation", a)
				}
			},
		},
		{
			name: "cancel", subject: subjects.UpdateCancel("node-a"), data: `{"reason":"maintenance window over"}`,
			check: func(t *testing.T, data []byte) {
				if a := decode[subjects.Ack](t, data); !a.Accepted || a.OperationID != "op-1" {
					t.Errorf("ack = %+v", a)
				}
			},
		},
		{
			name: "status", subject: subjects.UpdateStatus("node-a"), data: ``,
			check: func(t *testing.T, data []byte) {
				r := decode[subjects.StatusReport](t, data)
				if r.NodeID != "node-a" || r.Status != subjects.StatusIdle || r.Versions.OS != "0.0.5" || r.Progress == nil || r.Progress.Percentage != 50 {
					t.Errorf("status = %+v", r)
				}
			},
		},
		{
			name: "status with {}", subject: subjects.UpdateStatus("node-a"), data: `{}`,
			check: func(t *testing.T, data []byte) {
				if r := decode[subjects.StatusReport](t, data); r.Status != subjects.StatusIdle {
					t.Errorf("status = %+v", r)
				}
			},
		},
		{
			name: "check malformed", subject: subjects.UpdateCheck("node-a"), data: `{"channel":`, bad: "check request",
			check: func(t *testing.T, data []byte) {
				r := decode[subjects.CheckReply](t, data)
				if r.NodeID != "node-a" || !strings.Contains(r.Error, "malformed") || r.Components == nil {
					t.Errorf("reply = %+v, want an error naming the malformed request", r)
				}
			},
		},
		{
			name: "fleet check unknown field", subject: subjects.FleetCheck(), data: `{"chanel":"dev"}`, bad: `"chanel"`,
			check: func(t *testing.T, data []byte) {
				if r := decode[subjects.CheckReply](t, data); r.NodeID != "node-a" || !strings.Contains(r.Error, `unknown field "chanel"`) {
					t.Errorf("reply = %+v", r)
				}
			},
		},
		{
			name: "apply unknown field", subject: subjects.UpdateApply("node-a"), data: `{"operationId":"op-9","force":true}`, bad: `"force"`,
			check: func(t *testing.T, data []byte) {
				if a := decode[subjects.Ack](t, data); a.Accepted || !strings.Contains(a.Reason, `unknown field "force"`) {
					t.Errorf("ack = %+v", a)
				}
			},
		},
		{
			name: "apply wrong type", subject: subjects.UpdateApply("node-a"), data: `{"operationId":7}`, bad: "operationId",
			check: func(t *testing.T, data []byte) {
				if a := decode[subjects.Ack](t, data); a.Accepted || !strings.Contains(a.Reason, "apply command") {
					t.Errorf("ack = %+v", a)
				}
			},
		},
		{
			name: "cancel trailing data", subject: subjects.UpdateCancel("node-a"), data: `{} {}`, bad: "trailing data",
			check: func(t *testing.T, data []byte) {
				if a := decode[subjects.Ack](t, data); a.Accepted || a.Reason == "" {
					t.Errorf("ack = %+v", a)
				}
			},
		},
		{
			name: "status unknown field", subject: subjects.UpdateStatus("node-a"), data: `{"verbose":true}`, bad: `"verbose"`,
			check: func(t *testing.T, data []byte) {
				r := decode[subjects.StatusReport](t, data)
				if r.NodeID != "node-a" || r.Status != subjects.StatusError || !strings.Contains(r.Message, "status request") || r.Versions.OS != "0.0.5" {
					t.Errorf("status = %+v", r)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eng.mu.Lock()
			eng.busy = tt.busy
			eng.mu.Unlock()
			m := request(t, nc, tt.subject, []byte(tt.data))
			tt.check(t, m.Data)
			code, msg := m.Header.Get(micro.ErrorCodeHeader), m.Header.Get(micro.ErrorHeader)
			switch {
			case tt.bad == "" && code != "":
				t.Errorf("error header %s %q on a good request", code, msg)
			case tt.bad != "" && (code != "400" || !strings.Contains(msg, tt.bad)):
				t.Errorf("error header = %q %q, want 400 naming %s", code, msg, tt.bad)
			}
		})
	}

	eng.mu.Lock()
	defer eng.mu.Unlock()
	if len(eng.applies) != 2 || !eng.applies[0].ForceReboot || eng.applies[0].Version != "0.0.6" {
		t.Errorf("engine got applies %+v, want the two well-formed ones", eng.applies)
	}
	if len(eng.cancels) != 1 || eng.cancels[0].Reason != "maintenance window over" {
		t.Errorf("engine got cancels %+v", eng.cancels)
	}
	if len(eng.checks) != 3 || !eng.checks[0].Refresh {
		t.Errorf("engine got checks %+v, want the three well-formed ones", eng.checks)
	}
}

func TestFleetCheckEveryNode(t *testing.T) {
	s := natstest.Start(t)
	natstest.Provision(t, s.ClientURL())
	for _, node := range []string{"node-a", "node-b"} {
		serve(t, connect(t, s.ClientURL(), node), newFake(node))
	}
	nc, _ := client(t, s.ClientURL())
	// Both nodes subscribed once each answers its own status subject.
	for _, node := range []string{"node-a", "node-b"} {
		request(t, nc, subjects.UpdateStatus(node), nil)
	}

	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishRequest(subjects.FleetCheck(), inbox, []byte(`{"channel":"dev"}`)); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for range 2 {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("fleet check replies so far %v: %v", got, err)
		}
		got[decode[subjects.CheckReply](t, m.Data).NodeID] = true
	}
	if !got["node-a"] || !got["node-b"] {
		t.Errorf("fleet check answered by %v, want node-a and node-b", got)
	}
	if m, err := sub.NextMsg(200 * time.Millisecond); err == nil {
		t.Errorf("a third reply: %s", m.Data)
	}
}

func TestNodeState(t *testing.T) {
	s := natstest.Start(t)
	natstest.Provision(t, s.ClientURL())
	_, js := client(t, s.ClientURL())
	kv := bucket(t, js)
	eng := newFake("node-a")
	serve(t, connect(t, s.ClientURL(), "node-a"), eng)

	var st subjects.NodeState
	var rev uint64
	qxtest.WaitFor(t, 5*time.Second, "the first NodeState", func() bool {
		var ok bool
		st, rev, ok = nodeState(t, kv, "node-a")
		return ok
	})
	if st.NodeID != "node-a" || st.Status != subjects.StatusIdle || st.CurrentVersion != "0.0.5" || st.Versions.Components["qx-node"] != "0.0.5" ||
		st.BootSlot != "b" || st.AgentVersion != "1.2.3" || st.LastSeq != 1 || time.Since(st.UpdatedAt) > time.Minute {
		t.Errorf("NodeState = %+v", st)
	}
	if b := eng.bootSlots(); len(b) != 1 || b[0] != "b" {
		t.Errorf("EmitAgent calls %q, want one with boot slot b", b)
	}

	// A burst of events: the bucket ends with the last state, in a few puts.
	var last uint64
	for i := range 50 {
		last = eng.emit(subjects.StatusDownloading, &subjects.Progress{Percentage: i * 2})
	}
	qxtest.WaitFor(t, 5*time.Second, "the NodeState of the last event", func() bool {
		st, rev, _ = nodeState(t, kv, "node-a")
		return st.LastSeq == last
	})
	if st.Status != subjects.StatusDownloading || st.Progress == nil || *st.Progress != 98 {
		t.Errorf("NodeState after the burst = %+v", st)
	}
	if rev > 5 {
		t.Errorf("%d puts for a burst of 50 events, want them coalesced", rev)
	}
}

func TestNodeStateHeartbeat(t *testing.T) {
	s := natstest.Start(t)
	natstest.Provision(t, s.ClientURL())
	_, js := client(t, s.ClientURL())
	kv := bucket(t, js)
	c := connect(t, s.ClientURL(), "node-a")
	bus.SetTimings(c, 100*time.Millisecond, 10*time.Millisecond, time.Second)
	serve(t, c, newFake("node-a"))

	var first subjects.NodeState
	qxtest.WaitFor(t, 5*time.Second, "the first NodeState", func() bool {
		var ok bool
		first, _, ok = nodeState(t, kv, "node-a")
		return ok
	})
	qxtest.WaitFor(t, 5*time.Second, "a heartbeat put", func() bool {
		st, rev, _ := nodeState(t, kv, "node-a")
		return rev >= 3 && st.UpdatedAt.After(first.UpdatedAt)
	})
}

func TestServeDrainsRequestsInFlight(t *testing.T) {
	s := natstest.Start(t)
	natstest.Provision(t, s.ClientURL())
	eng := newFake("node-a")
	entered := make(chan struct{})
	eng.checkHook = func(context.Context) {
		close(entered)
		time.Sleep(300 * time.Millisecond)
	}
	stop := serve(t, connect(t, s.ClientURL(), "node-a"), eng)
	nc, _ := client(t, s.ClientURL())
	request(t, nc, subjects.UpdateStatus("node-a"), nil)

	replied := make(chan *nats.Msg, 1)
	go func() {
		m, err := nc.Request(subjects.UpdateCheck("node-a"), []byte(`{}`), 5*time.Second)
		if err != nil {
			t.Errorf("request in flight at shutdown: %v", err)
		}
		replied <- m
	}()
	<-entered
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Serve took %v to stop", d)
	}
	if m := <-replied; m == nil || decode[subjects.CheckReply](t, m.Data).NodeID != "node-a" {
		t.Errorf("the request in flight was not answered")
	}
	if _, err := nc.Request(subjects.UpdateStatus("node-a"), nil, 300*time.Millisecond); err == nil {
		t.Errorf("a request after Serve returned was answered")
	}
}

func TestServeRefusesOtherNode(t *testing.T) {
	s := natstest.Start(t)
	c := connect(t, s.ClientURL(), "node-a")
	err := c.Serve(context.Background(), newFake("node-b"))
	if err == nil || !strings.Contains(err.Error(), "node-b") {
		t.Errorf("Serve with another node's engine: %v", err)
	}
}

func FuzzReply(f *testing.F) {
	for _, seed := range []string{``, `{}`, `{"channel":"dev"}`, `{"operationId":"x","forceReboot":true}`, `{"bogus":1}`, `[1,2]`, `null`, `{"a":`, "\x00\xff"} {
		f.Add(0, []byte(seed))
		f.Add(3, []byte(seed))
	}
	eng := newFake("node-a")
	subjs := []string{subjects.UpdateCheck("node-a"), subjects.FleetCheck(), subjects.UpdateApply("node-a"), subjects.UpdateCancel("node-a"), subjects.UpdateStatus("node-a")}
	f.Fuzz(func(t *testing.T, which int, data []byte) {
		subj := subjs[uint(which)%uint(len(subjs))]
		body, hdr, ok := bus.Reply(eng, subj, data)
		if !ok {
			t.Fatalf("no endpoint for %s", subj)
		}
		// Every request gets a reply of its subject's type, strictly decodable.
		var err error
		switch subj {
		case subjects.UpdateApply("node-a"), subjects.UpdateCancel("node-a"):
			var a subjects.Ack
			err = subjects.Decode(body, &a)
			if err == nil && hdr != nil && (a.Accepted || a.Reason == "") {
				t.Errorf("bad request answered %s", body)
			}
		case subjects.UpdateStatus("node-a"):
			var r subjects.StatusReport
			err = subjects.Decode(body, &r)
		default:
			var r subjects.CheckReply
			err = subjects.Decode(body, &r)
			if err == nil && (r.NodeID != "node-a" || (hdr != nil && r.Error == "")) {
				t.Errorf("reply %s", body)
			}
		}
		if err != nil {
			t.Errorf("reply %s does not decode: %v", body, err)
		}
	})
}

// A check request equal to the last one is answered from its remembered
// decode; any other bytes, valid or not, are decoded again.
func TestCheckRequestMemo(t *testing.T) {
	s := natstest.Start(t)
	natstest.Provision(t, s.ClientURL())
	fake := newFake("node-a")
	serve(t, connect(t, s.ClientURL(), "node-a"), fake)
	nc, _ := client(t, s.ClientURL())
	tests := []struct {
		data    string
		channel string // of the reply; "" for a refusal
	}{
		{`{"channel":"dev"}`, "dev"},
		{`{"channel":"dev"}`, "dev"},
		{`{"channel":"beta"}`, "beta"},
		{`{"channel":"beta","bogus":1}`, ""},
		{`{"channel":"beta"}`, "beta"},
		{`{"channel":"dev"}`, "dev"},
		{`{"channel":"dev"`, ""},
	}
	for i, tt := range tests {
		m := request(t, nc, subjects.UpdateCheck("node-a"), []byte(tt.data))
		r := decode[subjects.CheckReply](t, m.Data)
		if tt.channel == "" {
			if r.Error == "" || m.Header.Get("Nats-Service-Error-Code") != "400" {
				t.Errorf("%d: %s answered %+v (headers %v), want a 400", i, tt.data, r, m.Header)
			}
			continue
		}
		if r.Error != "" || r.Channel != tt.channel {
			t.Errorf("%d: %s answered channel %q, error %q; want %q", i, tt.data, r.Channel, r.Error, tt.channel)
		}
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.checks) != 5 {
		t.Errorf("engine asked %d times, want 5 (the valid requests)", len(fake.checks))
	}
}

// The agent announces itself once the engine knows what it booted; requests
// are answered before that.
func TestOnlineWaitsForBoot(t *testing.T) {
	s := natstest.Start(t)
	natstest.Provision(t, s.ClientURL())
	nc, _ := client(t, s.ClientURL())
	eng := newFake("node-a")
	release := eng.holdBoot()
	serve(t, connect(t, s.ClientURL(), "node-a"), eng)

	m := request(t, nc, subjects.UpdateStatus("node-a"), nil)
	if r := decode[subjects.StatusReport](t, m.Data); r.NodeID != "node-a" {
		t.Fatalf("status while the boot is undecided = %+v", r)
	}
	if b := eng.bootSlots(); len(b) != 0 {
		t.Fatalf("announced %q before the boot was decided", b)
	}
	release()
	qxtest.WaitFor(t, 5*time.Second, "the online event", func() bool { return len(eng.bootSlots()) == 1 })
}
