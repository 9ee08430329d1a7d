package bus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quantix-os/update-agent/internal/bus"
	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/internal/natstest"
	"github.com/quantix-os/update-agent/internal/qxtest"
	"github.com/quantix-os/update-agent/subjects"
)

func pending(seq uint64, agent bool) journal.Pending {
	id := fmt.Sprintf("ev-%d", seq)
	var payload any = subjects.UpdateEvent{ID: id, NodeID: "node-a", Seq: seq, Type: subjects.EventStatus, Status: subjects.StatusChecking}
	if agent {
		payload = subjects.AgentEvent{ID: id, NodeID: "node-a", Seq: seq, Type: subjects.EventOnline}
	}
	b, _ := json.Marshal(payload)
	return journal.Pending{Seq: seq, ID: id, Agent: agent, Payload: b}
}

func publish(c *bus.Conn, p journal.Pending) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Publish(ctx, p)
}

func stream(t *testing.T, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	st, err := js.Stream(context.Background(), subjects.Stream)
	if err != nil {
		t.Fatalf("stream %s: %v", subjects.Stream, err)
	}
	return st
}

func TestPublish(t *testing.T) {
	s := natstest.Start(t)
	natstest.Provision(t, s.ClientURL())
	_, js := client(t, s.ClientURL())
	c := connect(t, s.ClientURL(), "node-a")
	qxtest.WaitFor(t, 5*time.Second, "the connection", c.NATS().IsConnected)

	tests := []struct {
		p       journal.Pending
		subject string
	}{
		{pending(1, true), subjects.AgentEvents("node-a")},
		{pending(2, false), subjects.UpdateEvents("node-a")},
	}
	for _, tt := range tests {
		if err := publish(c, tt.p); err != nil {
			t.Fatalf("Publish seq %d: %v", tt.p.Seq, err)
		}
		m, err := stream(t, js).GetLastMsgForSubject(context.Background(), tt.subject)
		if err != nil {
			t.Fatalf("event seq %d not on %s: %v", tt.p.Seq, tt.subject, err)
		}
		if got := m.Header.Get(subjects.MsgIDHeader); got != tt.p.ID {
			t.Errorf("%s header = %q, want %q", subjects.MsgIDHeader, got, tt.p.ID)
		}
		if string(m.Data) != string(tt.p.Payload) {
			t.Errorf("payload = %s, want %s", m.Data, tt.p.Payload)
		}
	}

	// The same event again (its ack was lost, say): stored once.
	if err := publish(c, tests[1].p); err != nil {
		t.Fatalf("republish: %v", err)
	}
	info, err := stream(t, js).Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Errorf("stream holds %d messages after a republish, want 2", info.State.Msgs)
	}
}

func TestPublishWithoutStream(t *testing.T) {
	s := natstest.Start(t) // not provisioned
	c := connect(t, s.ClientURL(), "node-a")
	qxtest.WaitFor(t, 5*time.Second, "the connection", c.NATS().IsConnected)
	err := publish(c, pending(1, false))
	if err == nil || !strings.Contains(err.Error(), subjects.UpdateEvents("node-a")) {
		t.Errorf("Publish with no stream: %v, want an error naming the subject", err)
	}
}

func TestConnectBeforeServer(t *testing.T) {
	port := natstest.FreePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	c := connect(t, url, "node-a")
	if c.NATS().IsConnected() {
		t.Fatal("connected with no server")
	}
	if err := publish(c, pending(1, false)); !errors.Is(err, bus.ErrNotConnected) {
		t.Errorf("Publish while down: %v, want ErrNotConnected", err)
	}
	eng := newFake("node-a")
	serve(t, c, eng)

	s := natstest.Start(t, func(o *server.Options) { o.Port = port })
	natstest.Provision(t, s.ClientURL())
	nc, js := client(t, s.ClientURL())
	m := request(t, nc, subjects.UpdateCheck("node-a"), []byte(`{}`))
	if r := decode[subjects.CheckReply](t, m.Data); r.NodeID != "node-a" {
		t.Errorf("reply = %+v", r)
	}
	// The first put failed (no server, then no bucket); a retry stores it.
	kv := bucket(t, js)
	qxtest.WaitFor(t, 8*time.Second, "the NodeState", func() bool {
		_, _, ok := nodeState(t, kv, "node-a")
		return ok
	})
	if err := publish(c, pending(1, false)); err != nil {
		t.Errorf("Publish once connected: %v", err)
	}
}

func TestServerRestart(t *testing.T) {
	s := natstest.Start(t)
	natstest.Provision(t, s.ClientURL())
	c := connect(t, s.ClientURL(), "node-a")
	serve(t, c, newFake("node-a"))
	nc, js := client(t, s.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	request(t, nc, subjects.UpdateStatus("node-a"), nil)
	var rev uint64
	qxtest.WaitFor(t, 5*time.Second, "the NodeState", func() bool {
		var ok bool
		_, rev, ok = nodeState(t, bucket(t, js), "node-a")
		return ok
	})
	if err := publish(c, pending(1, false)); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	s.Shutdown()
	s.WaitForShutdown()
	qxtest.WaitFor(t, 5*time.Second, "the disconnect", func() bool { return !c.NATS().IsConnected() })
	if err := publish(c, pending(2, false)); err == nil {
		t.Fatal("Publish succeeded with the server down")
	}

	natstest.Restart(t, s)
	qxtest.WaitFor(t, 8*time.Second, "Publish after the restart", func() bool { return publish(c, pending(2, false)) == nil })
	m := request(t, nc, subjects.UpdateStatus("node-a"), nil)
	if r := decode[subjects.StatusReport](t, m.Data); r.NodeID != "node-a" {
		t.Errorf("status after restart = %+v", r)
	}
	// The NodeState is put again after the reconnect.
	qxtest.WaitFor(t, 5*time.Second, "the NodeState put after the reconnect", func() bool {
		_, r, _ := nodeState(t, bucket(t, js), "node-a")
		return r > rev
	})
	info, err := stream(t, js).Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Errorf("stream holds %d events, want 2", info.State.Msgs)
	}
}

// TestNodePermissions runs a node under the permissions deploy/nats gives
// it: its events and KV key to publish, its commands, the fleet and its
// own inbox to subscribe. Publishing, the NodeState and every reply must work
// without the JetStream API.
func TestNodePermissions(t *testing.T) {
	node := "node-a"
	s := natstest.Start(t, func(o *server.Options) {
		o.Users = []*server.User{
			{Username: "admin", Password: "admin"},
			{Username: node, Password: "secret", Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{subjects.Events(node), subjects.VDCMaintenanceFrom(node), subjects.KVSubject(node)}},
				Subscribe: &server.SubjectPermission{Allow: []string{subjects.NodeCommands(node), subjects.Fleet(), subjects.InboxPrefix(node) + ".>"}},
				Response:  &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
			}},
		}
	})
	natstest.Provision(t, s.ClientURL(), nats.UserInfo("admin", "admin"))
	nc, js := client(t, s.ClientURL(), nats.UserInfo("admin", "admin"))
	c := connect(t, s.ClientURL(), node, func(o *bus.Options) { o.User, o.Password = node, "secret" })
	serve(t, c, newFake(node))

	m := request(t, nc, subjects.FleetCheck(), []byte(`{}`))
	if r := decode[subjects.CheckReply](t, m.Data); r.NodeID != node {
		t.Errorf("fleet reply = %+v", r)
	}
	kv := bucket(t, js)
	qxtest.WaitFor(t, 5*time.Second, "the NodeState", func() bool {
		_, _, ok := nodeState(t, kv, node)
		return ok
	})
	if err := publish(c, pending(1, true)); err != nil {
		t.Errorf("Publish as the node's user: %v", err)
	}
}

func TestConnectOptions(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		o    bus.Options
		want string
		is   error
	}{
		{"bad node id", bus.Options{NodeID: "node.a", URL: "nats://127.0.0.1:1"}, `"node.a"`, subjects.ErrInvalidNodeID},
		{"empty node id", bus.Options{URL: "nats://127.0.0.1:1"}, "node id", subjects.ErrInvalidNodeID},
		{"no url", bus.Options{NodeID: "a"}, "URL", nil},
		{"creds and nkey", bus.Options{NodeID: "a", URL: "nats://127.0.0.1:1", Creds: junk, NkeySeed: junk}, "creds and nkey", nil},
		{"missing creds", bus.Options{NodeID: "a", URL: "nats://127.0.0.1:1", Creds: filepath.Join(dir, "none.creds")}, "none.creds", os.ErrNotExist},
		{"bad nkey seed", bus.Options{NodeID: "a", URL: "nats://127.0.0.1:1", NkeySeed: junk}, "junk.pem", nil},
		{"missing ca", bus.Options{NodeID: "a", URL: "nats://127.0.0.1:1", TLSCA: filepath.Join(dir, "ca.pem")}, "ca.pem", os.ErrNotExist},
		{"ca without certificate", bus.Options{NodeID: "a", URL: "nats://127.0.0.1:1", TLSCA: junk}, "junk.pem", nil},
		{"cert without key", bus.Options{NodeID: "a", URL: "nats://127.0.0.1:1", TLSCert: junk}, "together", nil},
		{"bad client cert", bus.Options{NodeID: "a", URL: "nats://127.0.0.1:1", TLSCert: junk, TLSKey: junk}, "junk.pem", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := bus.Connect(context.Background(), tt.o)
			if err == nil {
				c.Close()
				t.Fatal("Connect succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not name %s", err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
		})
	}
}

func TestProvision(t *testing.T) {
	s := natstest.Start(t)
	_, js := client(t, s.ClientURL())
	ctx := context.Background()
	for range 2 { // creating and updating
		if err := bus.Provision(ctx, js, bus.Storage{}); err != nil {
			t.Fatalf("Provision: %v", err)
		}
	}
	info, err := stream(t, js).Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.Config
	if len(cfg.Subjects) != 1 || cfg.Subjects[0] != subjects.AllEvents() || cfg.Storage != jetstream.FileStorage ||
		cfg.Duplicates < 2*time.Minute || cfg.Replicas != 1 || cfg.MaxAge != 0 || cfg.MaxBytes != -1 {
		t.Errorf("stream config = %+v", cfg)
	}
	// Limits, set on the existing stream: old events go first.
	if err := bus.Provision(ctx, js, bus.Storage{MaxAge: time.Hour, MaxBytes: 1 << 20}); err != nil {
		t.Fatalf("Provision with limits: %v", err)
	}
	if info, err = stream(t, js).Info(ctx); err != nil {
		t.Fatal(err)
	}
	if cfg := info.Config; cfg.MaxAge != time.Hour || cfg.MaxBytes != 1<<20 || cfg.Discard != jetstream.DiscardOld {
		t.Errorf("stream limits = age %s, bytes %d, discard %v", cfg.MaxAge, cfg.MaxBytes, cfg.Discard)
	}
	st, err := bucket(t, js).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.History() != 1 || st.BackingStore() != "JetStream" {
		t.Errorf("bucket history %d, backing %s", st.History(), st.BackingStore())
	}
}
