// Package natstest runs embedded NATS servers with JetStream for tests. It is
// imported only from _test.go files, so the agent binary does not carry a
// server.
package natstest

import (
	"context"
	"net"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quantix-os/update-agent/internal/bus"
	"github.com/quantix-os/update-agent/internal/qxtest"
)

// started remembers each server's options with its bound port, so Restart can
// bring up a server on the same port and store.
var started sync.Map // *server.Server → *server.Options

// Start runs a server on 127.0.0.1 with a random port and JetStream storing
// into a test temp dir, and shuts it down when the test ends. opts adjust the
// options before the server starts (users, TLS, a fixed port).
func Start(t testing.TB, opts ...func(*server.Options)) *server.Server {
	t.Helper()
	o := &server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	}
	for _, f := range opts {
		f(o)
	}
	return Run(t, o)
}

// Restart shuts s down (if it still runs) and starts a server with the same
// options on the same port and store dir, so clients reconnect to it and find
// their streams.
func Restart(t testing.TB, s *server.Server) *server.Server {
	t.Helper()
	v, ok := started.Load(s)
	if !ok {
		t.Fatal("natstest: Restart of a server Start did not create")
	}
	s.Shutdown()
	s.WaitForShutdown()
	return Run(t, v.(*server.Options).Clone())
}

// Run starts a server with o as they are, waits until it takes
// connections, and shuts it down when the test ends.
func Run(t testing.TB, o *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatalf("natstest: new server: %v", err)
	}
	s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
		started.Delete(s)
	})
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("natstest: server not ready for connections")
	}
	bound := o.Clone()
	bound.Port = s.Addr().(*net.TCPAddr).Port
	started.Store(s, bound)
	return s
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago, for
// tests that connect before the server exists.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("natstest: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Provision creates the event stream and the node bucket on the server at url
// (single replica), as vdc-sim does at start.
func Provision(t testing.TB, url string, opts ...nats.Option) {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("natstest: connect %s: %v", url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("natstest: jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.Provision(ctx, js, bus.Storage{Replicas: 1}); err != nil {
		t.Fatalf("natstest: %v", err)
	}
}

// StartCluster runs the servers of a cluster from their config files (paths
// of configs such as deploy/nats/cluster/n1.conf), each on a random client
// port and with the cluster ports the files name moved to free loopback
// ports, routes included, with a temp store dir. It waits for a JetStream
// meta leader and returns the servers and their options, in file order.
func StartCluster(t testing.TB, files ...string) ([]*server.Server, []*server.Options) {
	t.Helper()
	all := make([]*server.Options, len(files))
	moved := map[int]int{} // cluster port in the file → a free port
	for i, f := range files {
		o, err := server.ProcessConfigFile(f)
		if err != nil {
			t.Fatalf("natstest: load %s: %v", f, err)
		}
		all[i] = o
		moved[o.Cluster.Port] = FreePort(t)
	}
	servers := make([]*server.Server, len(files))
	for i, o := range all {
		o.Port = -1
		o.Cluster.Port = moved[o.Cluster.Port]
		o.StoreDir = t.TempDir()
		o.NoLog, o.NoSigs = true, true
		for j, r := range o.Routes {
			old, _ := strconv.Atoi(r.Port())
			p, ok := moved[old]
			if !ok {
				t.Fatalf("natstest: %s: route %s points at no server of the cluster", files[i], r)
			}
			o.Routes[j] = &url.URL{Scheme: r.Scheme, Host: net.JoinHostPort(r.Hostname(), strconv.Itoa(p))}
		}
		servers[i] = Run(t, o)
	}
	qxtest.WaitFor(t, 20*time.Second, "a JetStream meta leader", func() bool {
		leaders := 0
		for _, s := range servers {
			if s.JetStreamIsLeader() {
				leaders++
			}
			if !s.JetStreamIsCurrent() {
				return false
			}
		}
		return leaders == 1
	})
	return servers, all
}

// Password is user's password in the server options o (as a config file
// such as deploy/nats/auth.conf holds it), so example secrets live in one place.
func Password(t testing.TB, o *server.Options, user string) string {
	t.Helper()
	for _, u := range o.Users {
		if u.Username == user {
			return u.Password
		}
	}
	t.Fatalf("natstest: config has no user %q", user)
	return ""
}
