package nats_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quantix-os/update-agent/internal/natstest"
	"github.com/quantix-os/update-agent/subjects"
)

// nodes are the node users auth.conf defines.
var nodes = []string{"node-1", "node-2", "node-3"}

// waitFor polls cond until it returns nil or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func loadConfig(t *testing.T, file string) *server.Options {
	t.Helper()
	opts, err := server.ProcessConfigFile(file)
	if err != nil {
		t.Fatalf("load %s: %v", file, err)
	}
	return opts
}

func startServer(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	opts.NoLog = true
	opts.NoSigs = true
	return natstest.Run(t, opts)
}

// bus is a running server loaded from auth.conf, with the stream and bucket
// created by vdc the way vdc-sim creates them.
type bus struct {
	opts *server.Options
	url  string
	vdc  *nats.Conn
	js   jetstream.JetStream
	str  jetstream.Stream
	kv   jetstream.KeyValue
}

func startBus(t *testing.T) *bus {
	t.Helper()
	opts := loadConfig(t, "auth.conf")
	opts.Host = "127.0.0.1"
	opts.Port = -1
	opts.JetStream = true
	opts.StoreDir = t.TempDir()
	s := startServer(t, opts)

	b := &bus{opts: opts, url: s.ClientURL()}
	b.vdc, _ = connect(t, b, "vdc")
	b.js = mustJetStream(t, b.vdc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var err error
	b.str, err = b.js.CreateStream(ctx, streamConfig(1))
	if err != nil {
		t.Fatalf("vdc: create stream %s: %v", subjects.Stream, err)
	}
	b.kv, err = b.js.CreateKeyValue(ctx, bucketConfig(1))
	if err != nil {
		t.Fatalf("vdc: create bucket %s: %v", subjects.Bucket, err)
	}
	return b
}

func streamConfig(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:       subjects.Stream,
		Subjects:   []string{subjects.AllEvents()},
		Storage:    jetstream.FileStorage,
		Duplicates: 2 * time.Minute,
		Replicas:   replicas,
	}
}

func bucketConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:   subjects.Bucket,
		Storage:  jetstream.FileStorage,
		Replicas: replicas,
	}
}

func mustJetStream(t *testing.T, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// connect logs user in to b. Node users get their own inbox prefix, as the
// agent sets it. The channel carries the connection's asynchronous errors,
// permission violations among them.
func connect(t *testing.T, b *bus, user string, extra ...nats.Option) (*nats.Conn, <-chan error) {
	t.Helper()
	var opts []nats.Option
	if user != "vdc" {
		opts = append(opts, nats.CustomInboxPrefix(subjects.InboxPrefix(user)))
	}
	return dial(t, b.url, user, natstest.Password(t, b.opts, user), append(opts, extra...)...)
}

func dial(t *testing.T, url, user, pass string, extra ...nats.Option) (*nats.Conn, <-chan error) {
	t.Helper()
	errs := make(chan error, 64)
	opts := append([]nats.Option{
		nats.UserInfo(user, pass),
		nats.Name(user),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}),
	}, extra...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

// wantViolation waits for the server to refuse op ("Publish" or
// "Subscription") on a subject starting with subjectPrefix. It does not stop
// the test, so the checks after it show what a missing refusal let through.
func wantViolation(t *testing.T, errs <-chan error, op, subjectPrefix string) {
	t.Helper()
	want := fmt.Sprintf("%s to %q", op, subjectPrefix)
	want = strings.TrimSuffix(want, `"`) // a prefix: leave the quote open
	timeout := time.After(2 * time.Second)
	for {
		select {
		case err := <-errs:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), want) {
				return
			}
			t.Logf("other async error: %v", err)
		case <-timeout:
			t.Errorf("no permissions violation for %s", want)
			return
		}
	}
}

// noViolation fails if the server refused anything nc did.
func noViolation(t *testing.T, nc *nats.Conn, errs <-chan error) {
	t.Helper()
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	select {
	case err := <-errs:
		t.Fatalf("unexpected async error: %v", err)
	default:
	}
	if err := nc.LastError(); err != nil {
		t.Fatalf("last error: %v", err)
	}
}

// nothingOn reports an error if sub receives a message within a short window.
func nothingOn(t *testing.T, sub *nats.Subscription) {
	t.Helper()
	if m, err := sub.NextMsg(200 * time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		if err != nil {
			t.Errorf("%s: %v", sub.Subject, err)
			return
		}
		t.Errorf("%s: received %s %q, want nothing", sub.Subject, m.Subject, m.Data)
	}
}

func subscribeSync(t *testing.T, nc *nats.Conn, subject string) *nats.Subscription {
	t.Helper()
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		t.Fatalf("subscribe %s: %v", subject, err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush after subscribe %s: %v", subject, err)
	}
	return sub
}

func TestAuthConfPermissions(t *testing.T) {
	opts := loadConfig(t, "auth.conf")
	users := map[string]*server.User{}
	for _, u := range opts.Users {
		users[u.Username] = u
	}
	if got, want := len(users), 1+len(nodes); got != want {
		t.Fatalf("auth.conf has %d users, want %d (vdc and %v)", got, want, nodes)
	}
	vdc := users["vdc"]
	if vdc == nil {
		t.Fatal("auth.conf has no vdc user")
	}
	if vdc.Permissions != nil {
		t.Errorf("vdc has permissions %+v, want none (everything in its account)", vdc.Permissions)
	}
	for _, id := range nodes {
		u := users[id]
		if u == nil {
			t.Errorf("auth.conf has no user %s", id)
			continue
		}
		if u.Account == nil || u.Account.Name != vdc.Account.Name {
			t.Errorf("%s is not in vdc's account", id)
		}
		p := u.Permissions
		if p == nil || p.Publish == nil || p.Subscribe == nil {
			t.Errorf("%s: permissions %+v, want publish and subscribe", id, p)
			continue
		}
		wantPub := []string{subjects.Events(id), subjects.VDCMaintenanceFrom(id), subjects.KVSubject(id)}
		wantSub := []string{subjects.NodeCommands(id), subjects.Fleet(), subjects.InboxPrefix(id) + ".>"}
		for _, c := range []struct {
			what      string
			got, want []string
		}{
			{"publish allow", p.Publish.Allow, wantPub},
			{"publish deny", p.Publish.Deny, nil},
			{"subscribe allow", p.Subscribe.Allow, wantSub},
			{"subscribe deny", p.Subscribe.Deny, nil},
		} {
			got, want := slices.Sorted(slices.Values(c.got)), slices.Sorted(slices.Values(c.want))
			if !slices.Equal(got, want) {
				t.Errorf("%s %s = %q, want %q", id, c.what, got, want)
			}
		}
		if p.Response == nil {
			t.Errorf("%s: allow_responses is not set", id)
		}
	}
}

// TestNodeCan proves node-1 can do everything the agent needs.
func TestNodeCan(t *testing.T) {
	b := startBus(t)
	const id = "node-1"
	node, errs := connect(t, b, id)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("answer commands and fleet checks", func(t *testing.T) {
		answer := func(m *nats.Msg) {
			if m.Reply != "" {
				_ = m.Respond([]byte(id + " answers " + m.Subject))
			}
		}
		for _, s := range []string{subjects.NodeCommands(id), subjects.Fleet()} {
			if _, err := node.Subscribe(s, answer); err != nil {
				t.Fatalf("subscribe %s: %v", s, err)
			}
		}
		if err := node.Flush(); err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{
			subjects.UpdateCheck(id), subjects.UpdateApply(id), subjects.UpdateCancel(id),
			subjects.UpdateStatus(id), subjects.FleetCheck(),
		} {
			reply, err := b.vdc.Request(s, []byte("{}"), 2*time.Second)
			if err != nil {
				t.Fatalf("vdc request %s: %v", s, err)
			}
			if want := id + " answers " + s; string(reply.Data) != want {
				t.Errorf("reply to %s = %q, want %q", s, reply.Data, want)
			}
		}
		// Maintenance events are plain publishes to the node.
		sub := subscribeSync(t, node, subjects.NodeMaintenance(id))
		if err := b.vdc.Publish(subjects.NodeMaintenance(id), []byte(`{"state":"ready"}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := sub.NextMsg(2 * time.Second); err != nil {
			t.Errorf("maintenance event: %v", err)
		}
		noViolation(t, node, errs)
	})

	t.Run("request maintenance from vdc", func(t *testing.T) {
		if _, err := b.vdc.Subscribe(subjects.VDCMaintenanceAll(), func(m *nats.Msg) {
			_ = m.Respond([]byte("vdc answers " + m.Subject))
		}); err != nil {
			t.Fatal(err)
		}
		if err := b.vdc.Flush(); err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{
			subjects.VDCMaintenanceRequest(id), subjects.VDCMaintenanceStatus(id), subjects.VDCMaintenanceRelease(id),
		} {
			reply, err := node.Request(s, []byte("{}"), 2*time.Second)
			if err != nil {
				t.Fatalf("node request %s: %v", s, err)
			}
			if want := "vdc answers " + s; string(reply.Data) != want {
				t.Errorf("reply to %s = %q, want %q", s, reply.Data, want)
			}
		}
		noViolation(t, node, errs)
	})

	t.Run("publish own events through JetStream", func(t *testing.T) {
		js := mustJetStream(t, node)
		for i, s := range []string{subjects.UpdateEvents(id), subjects.AgentEvents(id)} {
			data := []byte(fmt.Sprintf(`{"seq":%d}`, i+1))
			msgID := "ev-" + strconv.Itoa(i)
			ack, err := js.Publish(ctx, s, data, jetstream.WithMsgID(msgID))
			if err != nil {
				t.Fatalf("publish %s: %v", s, err)
			}
			if ack.Stream != subjects.Stream || ack.Duplicate {
				t.Errorf("ack for %s = %+v, want a new message in %s", s, ack, subjects.Stream)
			}
			// The same event again is acked as a duplicate, not stored twice.
			again, err := js.Publish(ctx, s, data, jetstream.WithMsgID(msgID))
			if err != nil {
				t.Fatalf("republish %s: %v", s, err)
			}
			if !again.Duplicate || again.Sequence != ack.Sequence {
				t.Errorf("republish ack = %+v, want duplicate of seq %d", again, ack.Sequence)
			}
			got, err := b.str.GetLastMsgForSubject(ctx, s)
			if err != nil {
				t.Fatalf("vdc: read %s: %v", s, err)
			}
			if string(got.Data) != string(data) {
				t.Errorf("stored %s = %q, want %q", s, got.Data, data)
			}
		}
		noViolation(t, node, errs)
	})

	t.Run("put own KV key", func(t *testing.T) {
		// A node cannot look the bucket up ($JS.API is closed to it), so it
		// publishes the put straight to its key's subject.
		state := []byte(`{"nodeId":"node-1","status":"idle"}`)
		ack, err := mustJetStream(t, node).Publish(ctx, subjects.KVSubject(id), state)
		if err != nil {
			t.Fatalf("put %s: %v", subjects.KVSubject(id), err)
		}
		if want := "KV_" + subjects.Bucket; ack.Stream != want {
			t.Errorf("ack stream = %q, want %q", ack.Stream, want)
		}
		e, err := b.kv.Get(ctx, subjects.Key(id))
		if err != nil {
			t.Fatalf("vdc: get %s: %v", subjects.Key(id), err)
		}
		if string(e.Value()) != string(state) {
			t.Errorf("vdc read %q, want %q", e.Value(), state)
		}
		noViolation(t, node, errs)
	})
}

// TestNodeCannot proves node-1 cannot command, impersonate or eavesdrop on
// node-2, nor act as vDC.
func TestNodeCannot(t *testing.T) {
	b := startBus(t)
	const me, other = "node-1", "node-2"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// node-2 is online and listening, so a command that got through would land.
	victim, victimErrs := connect(t, b, other)
	victimSubs := []*nats.Subscription{
		subscribeSync(t, victim, subjects.NodeCommands(other)),
		subscribeSync(t, victim, subjects.Fleet()),
	}
	noViolation(t, victim, victimErrs)

	t.Run("publish", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			subject string
			// stored reports whether the message reached JetStream anyway.
			stored func() bool
		}{
			{name: "command another node", subject: subjects.UpdateApply(other)},
			{name: "check another node", subject: subjects.UpdateCheck(other)},
			{name: "send another node maintenance", subject: subjects.NodeMaintenance(other)},
			{name: "broadcast a fleet check", subject: subjects.FleetCheck()},
			{name: "emit another node's update event", subject: subjects.UpdateEvents(other), stored: func() bool {
				_, err := b.str.GetLastMsgForSubject(ctx, subjects.UpdateEvents(other))
				return !errors.Is(err, jetstream.ErrMsgNotFound)
			}},
			{name: "emit another node's agent event", subject: subjects.AgentEvents(other), stored: func() bool {
				_, err := b.str.GetLastMsgForSubject(ctx, subjects.AgentEvents(other))
				return !errors.Is(err, jetstream.ErrMsgNotFound)
			}},
			{name: "put another node's KV key", subject: subjects.KVSubject(other), stored: func() bool {
				_, err := b.kv.Get(ctx, subjects.Key(other))
				return !errors.Is(err, jetstream.ErrKeyNotFound)
			}},
			{name: "ask maintenance for another node", subject: subjects.VDCMaintenanceRequest(other)},
			{name: "release another node's maintenance", subject: subjects.VDCMaintenanceRelease(other)},
			{name: "purge the event stream", subject: "$JS.API.STREAM.PURGE." + subjects.Stream},
		} {
			t.Run(tc.name, func(t *testing.T) {
				// vdc sees every subject of the account: if the server let
				// the message through, this witness would get it.
				witness := subscribeSync(t, b.vdc, tc.subject)
				defer func() { _ = witness.Unsubscribe() }()

				node, errs := connect(t, b, me)
				if err := node.PublishRequest(tc.subject, node.NewInbox(), []byte(`{"forged":true}`)); err != nil {
					t.Fatalf("publish: %v", err)
				}
				wantViolation(t, errs, "Publish", tc.subject)
				nothingOn(t, witness)
				if tc.stored != nil && tc.stored() {
					t.Errorf("%s was stored", tc.subject)
				}
			})
		}
		for _, sub := range victimSubs {
			nothingOn(t, sub)
		}
		noViolation(t, victim, victimErrs)
	})

	t.Run("subscribe", func(t *testing.T) {
		for _, tc := range []struct {
			name      string
			subscribe string
			probe     string // vdc publishes here; the subscription would match it
		}{
			{"another node's commands", subjects.NodeCommands(other), subjects.UpdateApply(other)},
			{"one command of another node", subjects.UpdateApply(other), subjects.UpdateApply(other)},
			{"every event", subjects.AllEvents(), subjects.UpdateEvents(other)},
			{"another node's events", subjects.Events(other), subjects.AgentEvents(other)},
			{"every maintenance request", subjects.VDCMaintenanceAll(), subjects.VDCMaintenanceRequest(other)},
			{"the KV bucket", subjects.KVAll(), subjects.KVSubject(other)},
			{"another node's inbox", subjects.InboxPrefix(other) + ".>", subjects.InboxPrefix(other) + ".reply"},
			{"the default inbox", nats.InboxPrefix + ">", nats.InboxPrefix + "reply"},
			{"everything", ">", subjects.UpdateApply(other)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				node, errs := connect(t, b, me)
				sub := subscribeSync(t, node, tc.subscribe)
				wantViolation(t, errs, "Subscription", tc.subscribe)
				if err := b.vdc.Publish(tc.probe, []byte(`{}`)); err != nil {
					t.Fatal(err)
				}
				if err := b.vdc.Flush(); err != nil {
					t.Fatal(err)
				}
				nothingOn(t, sub)
			})
		}
	})

	t.Run("use another inbox prefix", func(t *testing.T) {
		if _, err := b.vdc.Subscribe(subjects.VDCMaintenanceAll(), func(m *nats.Msg) {
			_ = m.Respond([]byte("vdc answers"))
		}); err != nil {
			t.Fatal(err)
		}
		if err := b.vdc.Flush(); err != nil {
			t.Fatal(err)
		}
		for _, prefix := range []string{subjects.InboxPrefix(other), strings.TrimSuffix(nats.InboxPrefix, ".")} {
			t.Run(prefix, func(t *testing.T) {
				node, errs := connect(t, b, me, nats.CustomInboxPrefix(prefix))
				_, err := node.Request(subjects.VDCMaintenanceRequest(me), []byte("{}"), 500*time.Millisecond)
				if err == nil {
					t.Fatal("request answered through a foreign inbox")
				}
				wantViolation(t, errs, "Subscription", prefix+".")
			})
		}
	})
}

func TestConfigsParse(t *testing.T) {
	for _, tc := range []struct {
		file      string
		name      string
		port      int
		storeDir  string
		users     int
		cluster   int   // cluster listen port, 0 for none
		routes    []int // route ports
		jsAccount bool
	}{
		{file: "dev.conf", name: "qx-dev", port: 4222, storeDir: "/tmp/qx-nats/dev"},
		{file: "auth-dev.conf", name: "qx-dev", port: 4222, storeDir: "/tmp/qx-nats/dev", users: 1 + len(nodes)},
		{file: "cluster/n1.conf", name: "n1", port: 4222, storeDir: "/tmp/qx-nats/n1", users: 1 + len(nodes), cluster: 6222, routes: []int{6223, 6224}},
		{file: "cluster/n2.conf", name: "n2", port: 4223, storeDir: "/tmp/qx-nats/n2", users: 1 + len(nodes), cluster: 6223, routes: []int{6222, 6224}},
		{file: "cluster/n3.conf", name: "n3", port: 4224, storeDir: "/tmp/qx-nats/n3", users: 1 + len(nodes), cluster: 6224, routes: []int{6222, 6223}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			o := loadConfig(t, tc.file)
			if o.ServerName != tc.name {
				t.Errorf("server_name = %q, want %q", o.ServerName, tc.name)
			}
			if o.Host != "127.0.0.1" || o.Port != tc.port {
				t.Errorf("listen = %s:%d, want 127.0.0.1:%d", o.Host, o.Port, tc.port)
			}
			if !o.JetStream || o.StoreDir != tc.storeDir {
				t.Errorf("jetstream = %v, store_dir %q; want enabled in %q", o.JetStream, o.StoreDir, tc.storeDir)
			}
			if o.MaxPayload != subjects.MaxPayload {
				t.Errorf("max_payload = %d, want %d", o.MaxPayload, subjects.MaxPayload)
			}
			if len(o.Users) != tc.users {
				t.Errorf("%d users, want %d", len(o.Users), tc.users)
			}
			if tc.cluster == 0 {
				if o.Cluster.Port != 0 || len(o.Routes) != 0 {
					t.Errorf("cluster port %d with %d routes, want no cluster", o.Cluster.Port, len(o.Routes))
				}
				return
			}
			if o.Cluster.Name != "qx" || o.Cluster.Host != "127.0.0.1" || o.Cluster.Port != tc.cluster {
				t.Errorf("cluster %q on %s:%d, want qx on 127.0.0.1:%d", o.Cluster.Name, o.Cluster.Host, o.Cluster.Port, tc.cluster)
			}
			var routes []int
			for _, r := range o.Routes {
				p, _ := strconv.Atoi(r.Port())
				if r.Hostname() != "127.0.0.1" {
					t.Errorf("route %s is not on the loopback", r)
				}
				routes = append(routes, p)
			}
			slices.Sort(routes)
			if !slices.Equal(routes, tc.routes) {
				t.Errorf("route ports = %v, want %v", routes, tc.routes)
			}
		})
	}
}

// TestClusterForms starts the three cluster configs, moved to free ports,
// and creates the R3 stream and bucket the way production does.
func TestClusterForms(t *testing.T) {
	servers, all := natstest.StartCluster(t, "cluster/n1.conf", "cluster/n2.conf", "cluster/n3.conf")
	opts := all[0]
	vdc, _ := dial(t, servers[0].ClientURL(), "vdc", natstest.Password(t, opts, "vdc"))
	js := mustJetStream(t, vdc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	var str jetstream.Stream
	waitFor(t, 15*time.Second, "create R3 stream", func() error {
		var err error
		str, err = js.CreateStream(ctx, streamConfig(3))
		return err
	})
	info, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Replicas != 3 || info.Cluster == nil || info.Cluster.Name != "qx" || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("stream cluster info = %+v, want a leader and 2 replicas in qx", info.Cluster)
	}
	var kv jetstream.KeyValue
	waitFor(t, 15*time.Second, "create R3 bucket", func() error {
		var err error
		kv, err = js.CreateKeyValue(ctx, bucketConfig(3))
		return err
	})
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Config().Replicas != 3 {
		t.Errorf("bucket replicas = %d, want 3", st.Config().Replicas)
	}

	// Every server carries auth.conf: node-1, on another server than vdc, is
	// held to its subjects there too.
	node, errs := dial(t, servers[1].ClientURL(), "node-1", natstest.Password(t, opts, "node-1"),
		nats.CustomInboxPrefix(subjects.InboxPrefix("node-1")))
	ack, err := mustJetStream(t, node).Publish(ctx, subjects.UpdateEvents("node-1"), []byte(`{"seq":1}`))
	if err != nil {
		t.Fatalf("node-1 event on n2: %v", err)
	}
	if ack.Stream != subjects.Stream {
		t.Errorf("ack stream = %q, want %q", ack.Stream, subjects.Stream)
	}
	if err := node.Publish(subjects.UpdateApply("node-2"), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	wantViolation(t, errs, "Publish", subjects.UpdateApply("node-2"))
}
