package vdc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quantix-os/update-agent/internal/bus"
	"github.com/quantix-os/update-agent/subjects"
)

// testBus is an embedded server with the stream and bucket, and a Client on it.
type testBus struct {
	url string
	nc  *nats.Conn
	js  jetstream.JetStream
	kv  jetstream.KeyValue
	c   *Client
}

func startBus(t *testing.T) *testBus {
	t.Helper()
	s, err := StartServer("127.0.0.1:0", t.TempDir(), nil)
	if err != nil {
		t.Fatalf("StartServer: %v", err)
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	b := &testBus{url: s.ClientURL()}
	b.nc = connect(t, b.url)
	b.js, err = jetstream.New(b.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.Provision(ctx, b.js, bus.Storage{Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	b.kv, err = b.js.KeyValue(ctx, subjects.Bucket)
	if err != nil {
		t.Fatalf("bucket: %v", err)
	}
	b.c, err = NewClient(b.nc)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	b.c.Timeout = 3 * time.Second
	return b
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

// fakeNode answers the node subjects of id, and the fleet check, as an agent would.
type fakeNode struct {
	id     string
	refuse string // non-empty: refuse apply and cancel with this reason

	mu       sync.Mutex
	applied  []subjects.ApplyCommand
	canceled []subjects.CancelCommand
}

func (f *fakeNode) start(t *testing.T, url string) *fakeNode {
	t.Helper()
	nc := connect(t, url)
	reply := func(m *nats.Msg, v any) {
		data, _ := json.Marshal(v)
		_ = m.Respond(data)
	}
	check := func(m *nats.Msg) {
		var req subjects.CheckRequest
		if err := subjects.Decode(m.Data, &req); err != nil {
			reply(m, subjects.CheckReply{NodeID: f.id, Error: err.Error()})
			return
		}
		reply(m, subjects.CheckReply{NodeID: f.id, Available: true, CurrentVersion: "0.0.5", AvailableVersion: "0.0.6",
			Channel: req.Channel, TotalDownloadSize: 123,
			Components: []subjects.ComponentUpdate{{Name: "qx-node", NewVersion: "0.0.6", SizeBytes: 123}}})
	}
	subs := map[string]nats.MsgHandler{
		subjects.UpdateCheck(f.id): check,
		subjects.FleetCheck():      check,
		subjects.UpdateApply(f.id): func(m *nats.Msg) {
			var cmd subjects.ApplyCommand
			if err := subjects.Decode(m.Data, &cmd); err != nil {
				reply(m, subjects.Ack{Reason: err.Error()})
				return
			}
			f.mu.Lock()
			f.applied = append(f.applied, cmd)
			f.mu.Unlock()
			reply(m, subjects.Ack{Accepted: f.refuse == "", OperationID: cmd.OperationID, Reason: f.refuse})
		},
		subjects.UpdateCancel(f.id): func(m *nats.Msg) {
			var cmd subjects.CancelCommand
			_ = subjects.Decode(m.Data, &cmd)
			f.mu.Lock()
			f.canceled = append(f.canceled, cmd)
			f.mu.Unlock()
			reply(m, subjects.Ack{Accepted: f.refuse == "", OperationID: "op-1", Reason: f.refuse})
		},
		subjects.UpdateStatus(f.id): func(m *nats.Msg) {
			p := &subjects.Progress{CurrentComponent: "qx-node", Percentage: 40}
			reply(m, subjects.StatusReport{NodeID: f.id, Status: subjects.StatusDownloading, Progress: p,
				OperationID: "op-1", Versions: subjects.Versions{OS: "0.0.5"}})
		},
	}
	for subj, h := range subs {
		if _, err := nc.Subscribe(subj, h); err != nil {
			t.Fatalf("fake node %s: subscribe %s: %v", f.id, subj, err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return f
}

func (b *testBus) putState(t *testing.T, st subjects.NodeState) {
	t.Helper()
	data, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.kv.Put(context.Background(), subjects.Key(st.NodeID), data); err != nil {
		t.Fatalf("put %s: %v", st.NodeID, err)
	}
}

func TestCheckAll(t *testing.T) {
	b := startBus(t)
	for _, id := range []string{"node-c", "node-a", "node-b"} {
		(&fakeNode{id: id}).start(t, b.url)
	}
	// A node that answers garbage still shows up, with an error.
	bad := connect(t, b.url)
	if _, err := bad.Subscribe(subjects.FleetCheck(), func(m *nats.Msg) { _ = m.Respond([]byte(`{"nodeId":"node-x","bogus":1}`)) }); err != nil {
		t.Fatal(err)
	}
	if err := bad.Flush(); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	got, err := b.c.CheckAll(ctx, subjects.CheckRequest{Channel: "dev"}, 300*time.Millisecond)
	if err != nil {
		t.Fatalf("CheckAll: %v", err)
	}
	var ids []string
	for _, r := range got {
		ids = append(ids, r.NodeID)
	}
	if strings.Join(ids, ",") != "node-a,node-b,node-c,node-x" {
		t.Fatalf("nodes = %v, want node-a,node-b,node-c,node-x", ids)
	}
	if got[0].Channel != "dev" || !got[0].Available || got[0].AvailableVersion != "0.0.6" {
		t.Errorf("reply of node-a = %+v", got[0])
	}
	if !strings.Contains(got[3].Error, "malformed") {
		t.Errorf("garbage reply error = %q, want malformed", got[3].Error)
	}

	// With every answering node known in the bucket, it stops as soon as all
	// of them answered instead of waiting out the quiet period.
	bad.Close()
	for _, id := range []string{"node-a", "node-b", "node-c"} {
		b.putState(t, subjects.NodeState{NodeID: id, Status: subjects.StatusIdle})
	}
	start := time.Now()
	got, err = b.c.CheckAll(ctx, subjects.CheckRequest{}, 5*time.Second)
	if err != nil || len(got) != 3 {
		t.Fatalf("CheckAll with known nodes = %d replies, %v; want 3", len(got), err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("CheckAll took %v with every known node answered; want an early stop", d)
	}

	// A known node that does not answer is waited for, up to the quiet period.
	b.putState(t, subjects.NodeState{NodeID: "node-ghost", Status: subjects.StatusIdle})
	start = time.Now()
	got, err = b.c.CheckAll(ctx, subjects.CheckRequest{}, 400*time.Millisecond)
	if err != nil || len(got) != 3 {
		t.Fatalf("CheckAll with a silent known node = %d replies, %v; want 3", len(got), err)
	}
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Errorf("CheckAll took %v with a known node silent; want it to wait out the quiet period", d)
	}
}

func TestCheckAllNobody(t *testing.T) {
	b := startBus(t)
	start := time.Now()
	got, err := b.c.CheckAll(context.Background(), subjects.CheckRequest{}, time.Second)
	if err != nil || len(got) != 0 {
		t.Fatalf("CheckAll with no nodes = %v, %v; want none", got, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("CheckAll with no nodes took %v; want an immediate answer", d)
	}
}

func TestCommands(t *testing.T) {
	b := startBus(t)
	a := (&fakeNode{id: "a"}).start(t, b.url)
	busy := (&fakeNode{id: "busy", refuse: "another update is running"}).start(t, b.url)
	ctx := context.Background()

	ack, err := b.c.Apply(ctx, "a", subjects.ApplyCommand{ForceReboot: true, Version: "0.0.6"})
	if err != nil || !ack.Accepted || ack.OperationID == "" {
		t.Fatalf("Apply = %+v, %v; want accepted with an operation id", ack, err)
	}
	a.mu.Lock()
	if len(a.applied) != 1 || a.applied[0].OperationID != ack.OperationID || !a.applied[0].ForceReboot || a.applied[0].Version != "0.0.6" {
		t.Errorf("node got %+v, want one command with operation %s", a.applied, ack.OperationID)
	}
	a.mu.Unlock()

	ack, err = b.c.Apply(ctx, "busy", subjects.ApplyCommand{OperationID: "op-9"})
	if err != nil || ack.Accepted || ack.Reason != busy.refuse || ack.OperationID != "op-9" {
		t.Errorf("Apply to busy node = %+v, %v; want refused with its reason", ack, err)
	}

	ack, err = b.c.Cancel(ctx, "a", subjects.CancelCommand{Reason: "operator"})
	if err != nil || !ack.Accepted {
		t.Errorf("Cancel = %+v, %v", ack, err)
	}
	a.mu.Lock()
	if len(a.canceled) != 1 || a.canceled[0].Reason != "operator" {
		t.Errorf("node got cancels %+v", a.canceled)
	}
	a.mu.Unlock()

	st, err := b.c.Status(ctx, "a")
	if err != nil || st.NodeID != "a" || st.Status != subjects.StatusDownloading || st.Progress == nil || st.Progress.Percentage != 40 {
		t.Errorf("Status = %+v, %v", st, err)
	}

	r, err := b.c.Check(ctx, "a", subjects.CheckRequest{Channel: "stable"})
	if err != nil || r.NodeID != "a" || r.Channel != "stable" {
		t.Errorf("Check = %+v, %v", r, err)
	}

	if _, err := b.c.Status(ctx, "ghost"); !errors.Is(err, ErrNoAnswer) {
		t.Errorf("Status of absent node: err = %v, want ErrNoAnswer", err)
	}
	if _, err := b.c.Apply(ctx, "bad.node", subjects.ApplyCommand{}); !errors.Is(err, subjects.ErrInvalidNodeID) {
		t.Errorf("Apply to bad id: err = %v, want ErrInvalidNodeID", err)
	}
}

func TestHosts(t *testing.T) {
	b := startBus(t)
	ctx := context.Background()
	got, err := b.c.Hosts(ctx)
	if err != nil || len(got) != 0 {
		t.Fatalf("Hosts of empty bucket = %v, %v", got, err)
	}
	b.putState(t, subjects.NodeState{NodeID: "n2", Status: subjects.StatusIdle, CurrentVersion: "0.0.5"})
	b.putState(t, subjects.NodeState{NodeID: "n1", Status: subjects.StatusIdle, CurrentVersion: "0.0.4"})
	b.putState(t, subjects.NodeState{NodeID: "n1", Status: subjects.StatusComplete, CurrentVersion: "0.0.6"})
	b.putState(t, subjects.NodeState{NodeID: "gone", Status: subjects.StatusIdle})
	if err := b.kv.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.kv.Put(ctx, "n3", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	got, err = b.c.Hosts(ctx)
	if err != nil {
		t.Fatalf("Hosts: %v", err)
	}
	want := []struct {
		id      string
		status  subjects.Status
		version string
	}{{"n1", subjects.StatusComplete, "0.0.6"}, {"n2", subjects.StatusIdle, "0.0.5"}, {"n3", subjects.StatusError, ""}}
	if len(got) != len(want) {
		t.Fatalf("Hosts = %+v, want %d hosts", got, len(want))
	}
	for i, w := range want {
		if got[i].NodeID != w.id || got[i].Status != w.status || got[i].CurrentVersion != w.version {
			t.Errorf("host %d = %+v, want %s %s %s", i, got[i], w.id, w.status, w.version)
		}
	}
	if !strings.Contains(got[2].Message, "bad state") {
		t.Errorf("undecodable host message = %q", got[2].Message)
	}
}

// publishEvent stores an event as a node does.
func (b *testBus) publishEvent(t *testing.T, subject, id string, v any) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.PublishMsg(context.Background(), &nats.Msg{Subject: subject, Data: data,
		Header: nats.Header{subjects.MsgIDHeader: []string{id}}}); err != nil {
		t.Fatalf("publish %s: %v", subject, err)
	}
}

func updateEvent(node string, seq uint64, typ subjects.EventType, progress int) subjects.UpdateEvent {
	return subjects.UpdateEvent{ID: fmt.Sprintf("%s-%d", node, seq), NodeID: node, Seq: seq, Time: time.Now().UTC(),
		Type: typ, OperationID: "op-1", Status: subjects.StatusDownloading, Progress: &progress, Component: "qx-node"}
}

func TestEvents(t *testing.T) {
	b := startBus(t)
	ctx := context.Background()
	got, err := b.c.Events(ctx, "a")
	if err != nil || len(got) != 0 {
		t.Fatalf("Events on empty stream = %v, %v", got, err)
	}
	b.publishEvent(t, subjects.AgentEvents("a"), "a-1", subjects.AgentEvent{ID: "a-1", NodeID: "a", Seq: 1, Type: subjects.EventOnline,
		Versions: subjects.Versions{OS: "0.0.5"}, BootSlot: "a"})
	b.publishEvent(t, subjects.UpdateEvents("b"), "b-1", updateEvent("b", 1, subjects.EventStatus, 0))
	for seq := uint64(2); seq <= 4; seq++ {
		e := updateEvent("a", seq, subjects.EventProgress, int(seq)*10)
		b.publishEvent(t, subjects.UpdateEvents("a"), e.ID, e)
	}
	b.publishEvent(t, subjects.UpdateEvents("a"), "a-4", updateEvent("a", 4, subjects.EventProgress, 40)) // duplicate: stored once
	b.publishEvent(t, subjects.UpdateEvents("a"), "a-5", json.RawMessage(`{"id":"a-5","extra":true}`))

	got, err = b.c.Events(ctx, "a")
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	if len(got) != 5 {
		t.Fatalf("Events(a) = %d events, want 5: %+v", len(got), got)
	}
	if got[0].Agent == nil || got[0].Agent.BootSlot != "a" || got[0].Type() != subjects.EventOnline {
		t.Errorf("first event = %+v, want the online event", got[0])
	}
	for i, e := range got[:4] {
		if e.Seq() != uint64(i+1) || e.NodeID != "a" {
			t.Errorf("event %d: seq %d node %s, want seq %d node a", i, e.Seq(), e.NodeID, i+1)
		}
	}
	if got[4].Error == "" || got[4].Update != nil {
		t.Errorf("malformed event = %+v, want an error", got[4])
	}
	all, err := b.c.Events(ctx, "")
	if err != nil || len(all) != 6 {
		t.Errorf("Events(all) = %d, %v; want 6", len(all), err)
	}
	if _, err := b.c.Events(ctx, "a.b"); !errors.Is(err, subjects.ErrInvalidNodeID) {
		t.Errorf("Events(bad id) err = %v", err)
	}
	// Each read cleaned up its consumer.
	st, err := b.js.Stream(ctx, subjects.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Consumers; n != 0 {
		t.Errorf("%d consumers left on the stream after Events; want 0", n)
	}
}

func TestWatchDeliverNew(t *testing.T) {
	b := startBus(t)
	b.publishEvent(t, subjects.UpdateEvents("a"), "a-1", updateEvent("a", 1, subjects.EventStatus, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	sub, err := b.c.Subscribe(ctx, "a", true)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	// Published after Subscribe returned: a new event, for this node and another.
	b.publishEvent(t, subjects.UpdateEvents("b"), "b-1", updateEvent("b", 1, subjects.EventStatus, 0))
	b.publishEvent(t, subjects.UpdateEvents("a"), "a-2", updateEvent("a", 2, subjects.EventCompleted, 100))
	e, err := sub.Next(ctx)
	sub.Stop()
	if err != nil || e.Seq() != 2 || e.Type() != subjects.EventCompleted {
		t.Fatalf("first new event = %+v, %v; want a's seq 2", e, err)
	}

	// Watch from the start sees both of a's events, then stops on fn's error.
	var seen []uint64
	stop := errors.New("enough")
	err = b.c.Watch(ctx, "a", false, func(e Event) error {
		seen = append(seen, e.Seq())
		if len(seen) == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || fmt.Sprint(seen) != "[1 2]" {
		t.Errorf("Watch = %v, saw %v; want [1 2] and fn's error", err, seen)
	}

	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if err := b.c.Watch(short, "", true, func(Event) error { return nil }); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Watch after ctx ends = %v, want DeadlineExceeded", err)
	}
}

func TestRESTHandler(t *testing.T) {
	b := startBus(t)
	(&fakeNode{id: "a"}).start(t, b.url)
	(&fakeNode{id: "busy", refuse: "another update is running"}).start(t, b.url)
	b.putState(t, subjects.NodeState{NodeID: "a", Status: subjects.StatusIdle, CurrentVersion: "0.0.5"})
	srv := httptest.NewServer(RESTHandler(b.c, nil))
	defer srv.Close()

	tests := []struct {
		name, method, path, body string
		status                   int
		contains                 string
	}{
		{"apply accepted", "POST", "/api/v1/updates/hosts/a/apply", `{"forceReboot":true}`, 202, `"accepted":true`},
		{"apply empty body", "POST", "/api/v1/updates/hosts/a/apply", ``, 202, `"accepted":true`},
		{"apply refused", "POST", "/api/v1/updates/hosts/busy/apply", `{"forceReboot":false}`, 409, `another update is running`},
		{"bad node id", "POST", "/api/v1/updates/hosts/a%2Eb/apply", `{}`, 400, `invalid_node_id`},
		{"bad body", "POST", "/api/v1/updates/hosts/a/apply", `{"forceReboot":"yes"}`, 400, `bad_request`},
		{"unknown field", "POST", "/api/v1/updates/hosts/a/apply", `{"force":true}`, 400, `bad_request`},
		{"absent node", "POST", "/api/v1/updates/hosts/ghost/apply", `{}`, 504, `node_timeout`},
		{"hosts", "GET", "/api/v1/updates/hosts", ``, 200, `{"hosts":[{"nodeId":"a","status":"idle"`},
		{"wrong method", "GET", "/api/v1/updates/hosts/a/apply", ``, 405, ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, srv.URL+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status || !strings.Contains(string(body), tt.contains) {
				t.Errorf("%s %s = %d %s; want %d containing %q", tt.method, tt.path, resp.StatusCode, body, tt.status, tt.contains)
			}
		})
	}
}

func TestSignedManifest(t *testing.T) {
	envelope := `{"signed":"e30=","signatures":[{"keyId":"0011223344556677","sig":"AA=="}]}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/quantix-os/manifest/signed" {
			http.NotFound(w, r)
			return
		}
		switch r.URL.Query().Get("channel") {
		case "dev":
			_, _ = io.WriteString(w, envelope)
		case "junk":
			_, _ = io.WriteString(w, "<html>")
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	c := &Client{Timeout: 2 * time.Second}
	ctx := context.Background()

	got, err := c.SignedManifest(ctx, srv.URL, "dev")
	if err != nil || string(got) != envelope {
		t.Fatalf("SignedManifest = %q, %v", got, err)
	}
	for _, tc := range []struct{ url, channel, want string }{
		{srv.URL, "nope", "404"},
		{srv.URL, "junk", "not JSON"},
		{srv.URL, "", "empty channel"},
		{"ftp://x", "dev", "not http"},
	} {
		if _, err := c.SignedManifest(ctx, tc.url, tc.channel); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SignedManifest(%s, %q) err = %v, want %q", tc.url, tc.channel, err, tc.want)
		}
	}
}

func TestStartServerBadListen(t *testing.T) {
	for _, listen := range []string{"nohost", "127.0.0.1:http", "127.0.0.1:70000"} {
		if _, err := StartServer(listen, t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), listen) {
			t.Errorf("StartServer(%q) err = %v, want one naming the address", listen, err)
		}
	}
	if _, err := StartServer("127.0.0.1:0", "", nil); err == nil {
		t.Error("StartServer without store dir: want an error")
	}
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add("qx.v1.events.a.update", []byte(`{"id":"a-1","nodeId":"a","seq":1,"time":"2024-01-01T00:00:00Z","type":"progress","status":"downloading","progress":5}`))
	f.Add("qx.v1.events.a.agent", []byte(`{"id":"a-1","nodeId":"a","seq":1,"time":"2024-01-01T00:00:00Z","type":"online","versions":{"os":"1","components":{}}}`))
	f.Add("qx.v1.events.a.other", []byte(`{}`))
	f.Add("qx.v1.events.a.update", []byte(`[`))
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		e := decodeEvent(subject, 1, data)
		n := 0
		if e.Update != nil {
			n++
		}
		if e.Agent != nil {
			n++
		}
		if e.Error != "" {
			n++
		}
		if n != 1 {
			t.Fatalf("decodeEvent(%q, %q) = %+v: want exactly one of update, agent, error", subject, data, e)
		}
	})
}

func FuzzDecodeCheckReply(f *testing.F) {
	f.Add([]byte(`{"nodeId":"a","available":false,"currentVersion":"1","channel":"dev","components":[],"fullImageAvailable":false,"totalDownloadSize":0}`))
	f.Add([]byte(`{"nodeId":"a.b"}`))
	f.Add([]byte(`nope`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeCheckReply(data)
		if err != nil && !strings.HasPrefix(r.Error, "malformed reply") {
			t.Fatalf("decodeCheckReply(%q) = %+v, %v: error and reply disagree", data, r, err)
		}
		if err == nil && subjects.ValidNodeID(r.NodeID) != nil {
			t.Fatalf("decodeCheckReply(%q) accepted node id %q", data, r.NodeID)
		}
	})
}
