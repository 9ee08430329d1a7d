package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quantix-os/update-agent/internal/natstest"
	"github.com/quantix-os/update-agent/internal/qxtest"
	"github.com/quantix-os/update-agent/subjects"
)

// The reliability tests cut the bus in the middle of an update and check
// that nothing is lost or doubled: the update finishes, and the stream holds
// every event the node emitted exactly once, seq 1..K, the last `completed`.
// The update's download is slowed by a throttling proxy so that it
// straddles the outage.

const (
	bigSize       = 6 << 20               // the large component's payload: random, so zstd cannot shrink it
	throttleChunk = 16 << 10              // bytes the slow proxy writes at a time
	throttlePause = 12 * time.Millisecond // pause after each chunk: about 1.3 MiB/s
	stepTimeout   = 20 * time.Second      // bound on one waited-for step
	// catchUp bounds how long after the agent is back on the bus the events
	// it emitted meanwhile may take to reach the stream: its reconnect
	// backoff, never a publish timeout.
	catchUp = 5 * time.Second
)

// TestUpdateSurvivesNATSRestart restarts the only NATS server while the agent
// downloads: the events emitted while it was down reach the stream after it
// is back, once each and in order.
func TestUpdateSurvivesNATSRestart(t *testing.T) {
	ns := natstest.Start(t)
	s := newSite(t, "--nats-url", ns.ClientURL())
	s.nats = ns.ClientURL()
	payload := releaseRandom(t, s, "0.0.6", bigSize)
	h := newHost(t, s.withServer(slowUpdateServer(t, s.url)), "node-1", s.nats)
	defer stopProcs(h.agent, s.serve) // before the restarted server's cleanup shuts it down
	waitAgentOn(t, "node-1", ns)

	startApply(t, s, "node-1")
	h.waitDownloading(t)
	down := time.Now()
	ns.Shutdown()
	ns.WaitForShutdown()
	// Keep the server down while the download goes on, so the agent emits
	// progress with no bus to take it.
	h.waitProgressAdvances(t, 2)
	up := time.Now()
	ns = natstest.Restart(t, ns)
	waitAgentOn(t, "node-1", ns)
	if st := h.status(t); st["status"] != "downloading" {
		t.Fatalf("status %v once the agent was back on the bus: the download did not straddle the restart", st["status"])
	}

	waitOutageEvents(t, s, "node-1", down, up, catchUp)

	h.checkUpdated(t, payload)
	waitCompletedEvents(t, s, "node-1")
}

// TestAgentConnectionCut cuts the agent's TCP connection to NATS (the server
// stays up) during the download. First the server's answers stop reaching
// the agent, so an event is stored but its ack is lost: the agent must send
// it again once back, and the stream must keep it once by its id. Then the
// connection is closed and refused for a while.
func TestAgentConnectionCut(t *testing.T) {
	ns := natstest.Start(t)
	s := newSite(t, "--nats-url", ns.ClientURL())
	s.nats = ns.ClientURL()
	payload := releaseRandom(t, s, "0.0.6", bigSize)
	px := startTCPCut(t, ns.Addr().String())
	h := newHost(t, s.withServer(slowUpdateServer(t, s.url)), "node-1", px.url())
	defer stopProcs(h.agent, s.serve)
	before := waitAgentOn(t, "node-1", ns)

	startApply(t, s, "node-1")
	h.waitDownloading(t)
	stored := streamLastSeq(t, ns.ClientURL())
	px.mute()
	qxtest.WaitFor(t, 5*time.Second, "an event stored while its ack is lost", func() bool {
		return streamLastSeq(t, ns.ClientURL()) > stored
	})
	down := time.Now()
	px.cut()
	qxtest.WaitFor(t, stepTimeout, "the server to lose the agent's connection", func() bool {
		return agentConn(ns, "node-1") == nil
	})
	h.waitProgressAdvances(t, 2)
	up := time.Now()
	px.restore()
	after := waitAgentOn(t, "node-1", ns)
	if after.Cid == before.Cid {
		t.Fatalf("the agent kept connection %d across the cut", before.Cid)
	}
	if st := h.status(t); st["status"] != "downloading" {
		t.Fatalf("status %v once the agent was back on the bus: the download did not straddle the cut", st["status"])
	}
	waitOutageEvents(t, s, "node-1", down, up, catchUp)

	h.checkUpdated(t, payload)
	waitCompletedEvents(t, s, "node-1")
	if n := px.accepted(); n < 2 {
		t.Errorf("the proxy forwarded %d connections, want a reconnect after the cut", n)
	}
}

// TestClusterFailover runs deploy/nats/cluster's three servers with the R3
// stream and bucket, puts the stream's leader on the server the agent uses,
// and shuts that server down during the download: the agent moves to
// another server, and the stream, after electing a new leader, holds every
// event once.
func TestClusterFailover(t *testing.T) {
	dir := filepath.Join("..", "..", "deploy", "nats", "cluster")
	servers, all := natstest.StartCluster(t, filepath.Join(dir, "n1.conf"), filepath.Join(dir, "n2.conf"), filepath.Join(dir, "n3.conf"))
	opts := all[0]
	vdcURLs := clusterURLs(servers, url.UserPassword("vdc", natstest.Password(t, opts, "vdc")))
	s := newSite(t, "--nats-url", vdcURLs, "--replicas", "3")
	s.nats = vdcURLs
	payload := releaseRandom(t, s, "0.0.6", bigSize)

	pwFile := filepath.Join(t.TempDir(), "node-1.password")
	writeFile(t, pwFile, natstest.Password(t, opts, "node-1")+"\n", 0o600)
	natsYAML := fmt.Sprintf(`{ url: %q, user: node-1, passwordFile: %q }`, clusterURLs(servers, nil), pwFile)
	h := newHostWith(t, s.withServer(slowUpdateServer(t, s.url)), "node-1", natsYAML)
	defer stopProcs(h.agent, s.serve)
	before := waitAgentOn(t, "node-1", servers...)
	var victim *server.Server
	for _, srv := range servers {
		if agentConn(srv, "node-1") != nil {
			victim = srv
		}
	}
	placeStreamLeader(t, vdcURLs, victim.Name())

	startApply(t, s, "node-1")
	h.waitDownloading(t)
	victim.Shutdown()
	victim.WaitForShutdown()
	var rest []*server.Server
	for _, srv := range servers {
		if srv != victim {
			rest = append(rest, srv)
		}
	}
	after := waitAgentOn(t, "node-1", rest...)
	t.Logf("agent moved from %s (cid %d), the stream leader, to another server (cid %d)", victim.Name(), before.Cid, after.Cid)
	if st := h.status(t); st["status"] != "downloading" {
		t.Fatalf("status %v once the agent was on another server: the download did not straddle the failover", st["status"])
	}

	h.checkUpdated(t, payload)
	evs := waitCompletedEvents(t, s, "node-1")
	if len(evs) < 4 {
		t.Errorf("only %d events stored: %v", len(evs), seqs(evs))
	}
}

// releaseRandom publishes version with a qx-node carrying size random bytes
// (data.bin: zstd cannot shrink them, so the artifact is that large) and a
// small qx-console, and returns the random payload.
func releaseRandom(t *testing.T, s *site, version string, size int) []byte {
	t.Helper()
	payload := make([]byte, size)
	rand.Read(payload)
	args := []string{"release", "--repo", s.repo, "--key", s.key, "--channel", "dev", "--version", version}
	for _, c := range []string{"qx-node", "qx-console"} {
		src := filepath.Join(s.dir, "src", version, c)
		writeFile(t, filepath.Join(src, "bin", c), c+" "+version+"\n", 0o755)
		writeFile(t, filepath.Join(src, "VERSION"), version+"\n", 0o644)
		if c == "qx-node" {
			if err := os.WriteFile(filepath.Join(src, "data.bin"), payload, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		args = append(args, "--component", c+"="+src)
	}
	runCmd(t, "vdc-sim", args...)
	return payload
}

// withServer returns a copy of s whose Update Server URL, the one agents
// are configured with, is u.
func (s *site) withServer(u string) *site {
	c := *s
	c.url = u
	return &c
}

// slowUpdateServer is a reverse proxy to the Update Server at target that
// sends artifact bodies in small chunks with pauses; manifests pass at full
// speed. It returns the proxy's URL.
func slowUpdateServer(t *testing.T, target string) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorLog = log.New(io.Discard, "", 0) // the agent going away mid-body is expected at the end
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/releases/") {
			w = throttledWriter{w}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// throttledWriter writes the body throttleChunk bytes at a time, flushing
// and pausing after each.
type throttledWriter struct{ http.ResponseWriter }

func (w throttledWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := min(len(b), throttleChunk)
		m, err := w.ResponseWriter.Write(b[:k])
		n += m
		if err != nil {
			return n, err
		}
		w.Flush()
		b = b[k:]
		time.Sleep(throttlePause)
	}
	return n, nil
}

func (w throttledWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// tcpCut forwards TCP connections to a target until cut: then it closes
// every forwarded connection and refuses new ones until restore.
type tcpCut struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	down  bool // closing every connection
	muted bool // dropping what the server sends
	conns map[net.Conn]struct{}
	n     int // connections forwarded
}

func startTCPCut(t *testing.T, target string) *tcpCut {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpCut{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.acceptLoop)
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *tcpCut) url() string { return "nats://" + p.ln.Addr().String() }

func (p *tcpCut) acceptLoop() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.down { // cut while dialling
			p.mu.Unlock()
			c.Close()
			up.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.n++
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(c, up, true) })
		p.wg.Go(func() { p.pipe(up, c, false) })
	}
}

// pipe copies src to dst, dropping the server's bytes while muted; when
// either side ends, both close.
func (p *tcpCut) pipe(dst, src net.Conn, fromServer bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		p.mu.Lock()
		drop := fromServer && p.muted
		p.mu.Unlock()
		if n > 0 && !drop {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// mute drops everything the server sends from now on (replies, acks),
// until cut: the agent's messages still arrive.
func (p *tcpCut) mute() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.muted = true
}

func (p *tcpCut) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down, p.muted = true, false
	for c := range p.conns {
		c.Close()
	}
}

func (p *tcpCut) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

func (p *tcpCut) accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// agentConn returns node's agent connection on srv, or nil.
func agentConn(srv *server.Server, node string) *server.ConnInfo {
	if !srv.Running() {
		return nil
	}
	cz, err := srv.Connz(&server.ConnzOptions{Subscriptions: true})
	if err != nil {
		return nil
	}
	for _, c := range cz.Conns {
		if c.Name == "qx-agent-"+node {
			return c
		}
	}
	return nil
}

// waitAgentOn waits until node's agent is connected to one of servers with
// its command subscriptions in place, and returns that connection.
func waitAgentOn(t *testing.T, node string, servers ...*server.Server) *server.ConnInfo {
	t.Helper()
	var ci *server.ConnInfo
	qxtest.WaitFor(t, stepTimeout, node+"'s agent on the bus", func() bool {
		for _, srv := range servers {
			if c := agentConn(srv, node); c != nil && c.NumSubs > 0 {
				ci = c
				return true
			}
		}
		return false
	})
	return ci
}

// startApply tells node to update through vdc-sim, without waiting.
func startApply(t *testing.T, s *site, node string) {
	t.Helper()
	var ack subjects.Ack
	s.vdcJSON(t, &ack, "apply", "--node", node)
	if !ack.Accepted {
		t.Fatalf("apply refused: %+v", ack)
	}
}

// downloaded reads the agent's status and downloaded bytes over REST.
func (h *host) downloaded(t *testing.T) (string, int64) {
	st := h.status(t)
	status, _ := st["status"].(string)
	p, _ := st["progress"].(map[string]any)
	b, _ := p["downloadedBytes"].(float64)
	return status, int64(b)
}

func (h *host) waitDownloading(t *testing.T) {
	t.Helper()
	qxtest.WaitFor(t, stepTimeout, "status downloading", func() bool {
		st, _ := h.downloaded(t)
		if st == "error" || st == "complete" {
			t.Fatalf("status %s before the download was seen", st)
		}
		return st == "downloading"
	})
}

// waitProgressAdvances waits until the agent reported n more progress
// steps, failing if the download ends first.
func (h *host) waitProgressAdvances(t *testing.T, n int) {
	t.Helper()
	_, last := h.downloaded(t)
	seen := 0
	qxtest.WaitFor(t, stepTimeout, fmt.Sprintf("%d progress steps", n), func() bool {
		st, b := h.downloaded(t)
		if st != "downloading" {
			t.Fatalf("status %s during the outage: the download is too fast to straddle it", st)
		}
		if b != last {
			seen++
			last = b
		}
		return seen >= n
	})
}

// checkUpdated waits for the update to complete and checks the new files.
func (h *host) checkUpdated(t *testing.T, payload []byte) {
	t.Helper()
	var st map[string]any
	// The rest of the slow download: allow for a loaded machine.
	qxtest.WaitFor(t, 30*time.Second, "status complete", func() bool {
		st = h.status(t)
		return st["status"] == "complete" || st["status"] == "error"
	})
	if st["status"] != "complete" {
		t.Fatalf("update ended with %v", st)
	}
	for _, c := range []string{"qx-node", "qx-console"} {
		if got := h.file(t, "opt/quantix/"+c+"/bin/"+c); got != c+" 0.0.6\n" {
			t.Errorf("%s = %q", c, got)
		}
	}
	if got := h.file(t, "opt/quantix/qx-node/data.bin"); got != string(payload) {
		t.Errorf("qx-node data.bin: %d bytes, not the released %d", len(got), len(payload))
	}
}

// waitCompletedEvents waits until node's last stored event is `completed`
// (the agent delivers its events in order, so all before it are in), then
// checks the node's events run 1..K with no gap, duplicate or repeated id.
// Reads are retried: during a failover the stream may have no leader yet.
func waitCompletedEvents(t *testing.T, s *site, node string) []storedEvent {
	t.Helper()
	var evs []storedEvent
	var lastErr error
	qxtest.WaitFor(t, stepTimeout, node+"'s completed event in the stream", func() bool {
		evs = nil
		if lastErr = s.tryVDCJSON(&evs, "events", "--node", node, "--timeout", "5s"); lastErr != nil {
			return false
		}
		n := len(evs)
		return n > 0 && evs[n-1].Update != nil && evs[n-1].Update.Type == subjects.EventCompleted
	})
	last := checkSeq(t, evs)
	if last.Type != subjects.EventCompleted || last.Version != "0.0.6" {
		t.Errorf("last event %+v", last)
	}
	ids := map[string]uint64{}
	for _, e := range evs {
		id := ""
		if e.Update != nil {
			id = e.Update.ID
		} else if e.Agent != nil {
			id = e.Agent.ID
		}
		if prev, dup := ids[id]; dup || id == "" {
			t.Errorf("event seq %d has id %q, also seq %d's", e.seq(), id, prev)
		}
		ids[id] = e.seq()
	}
	if evs[0].Agent == nil || evs[0].Agent.Type != subjects.EventOnline {
		t.Errorf("first event is not the agent coming online: %+v", evs[0])
	}
	return evs
}

// tryVDCJSON is vdcJSON returning its error, for reads that may fail for a
// while.
func (s *site) tryVDCJSON(v any, args ...string) error {
	args = append(args, "--json", "--nats-url", s.nats)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, "vdc-sim"), args...).Output()
	if err != nil {
		return fmt.Errorf("vdc-sim %s: %w", args[0], err)
	}
	return json.Unmarshal(out, v)
}

// waitOutageEvents waits at most within for the stream to hold an event
// node emitted between from and to, while it was off the bus.
func waitOutageEvents(t *testing.T, s *site, node string, from, to time.Time, within time.Duration) {
	t.Helper()
	back := time.Now()
	var evs []storedEvent
	deadline := back.Add(within)
	for {
		evs = nil
		if err := s.tryVDCJSON(&evs, "events", "--node", node, "--timeout", "5s"); err == nil && emittedBetween(evs, from, to) > 0 {
			t.Logf("events of the outage stored %v after the agent was back", time.Since(back).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v after %s was back on the bus, the stream holds no event it emitted while off it (%s..%s); stored: %v",
				within, node, from.Format(time.StampMilli), to.Format(time.StampMilli), eventTimes(evs))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// streamLastSeq is the last sequence number of the event stream on the
// server at url.
func streamLastSeq(t *testing.T, url string) uint64 {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name("reliability test"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	str, err := js.Stream(ctx, subjects.Stream)
	if err != nil {
		t.Fatalf("stream %s: %v", subjects.Stream, err)
	}
	return str.CachedInfo().State.LastSeq
}

func eventTime(e storedEvent) time.Time {
	if e.Update != nil {
		return e.Update.Time
	}
	if e.Agent != nil {
		return e.Agent.Time
	}
	return time.Time{}
}

// emittedBetween counts the events the agent emitted between from and to.
func emittedBetween(evs []storedEvent, from, to time.Time) int {
	n := 0
	for _, e := range evs {
		if tm := eventTime(e); tm.After(from) && tm.Before(to) {
			n++
		}
	}
	return n
}

func eventTimes(evs []storedEvent) []string {
	var out []string
	for _, e := range evs {
		out = append(out, fmt.Sprintf("%d@%s", e.seq(), eventTime(e).Local().Format(time.StampMilli)))
	}
	return out
}

// stopProcs interrupts the processes and waits for each to exit, so they
// stop before the servers they use; start's cleanup then has nothing to do.
func stopProcs(ps ...*proc) {
	for _, p := range ps {
		p.cmd.Process.Signal(os.Interrupt)
	}
	for _, p := range ps {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// clusterURLs lists the servers' client URLs, comma-separated, each with
// user's credentials when user is not nil.
func clusterURLs(servers []*server.Server, user *url.Userinfo) string {
	var us []string
	for _, srv := range servers {
		u, _ := url.Parse(srv.ClientURL())
		u.User = user
		us = append(us, u.String())
	}
	return strings.Join(us, ",")
}

// placeStreamLeader moves the QX_EVENTS stream's leader to the server named
// name, so shutting that server down also forces a leader election.
func placeStreamLeader(t *testing.T, urls, name string) {
	t.Helper()
	nc, err := nats.Connect(urls, nats.Name("reliability test"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	leader := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		str, err := js.Stream(ctx, subjects.Stream)
		if err != nil {
			return ""
		}
		info, err := str.Info(ctx)
		if err != nil || info.Cluster == nil {
			return ""
		}
		if info.Config.Replicas != 3 {
			t.Fatalf("stream %s has %d replicas, want 3", subjects.Stream, info.Config.Replicas)
		}
		return info.Cluster.Leader
	}
	qxtest.WaitFor(t, stepTimeout, "stream "+subjects.Stream+" led by "+name, func() bool {
		switch leader() {
		case name:
			return true
		case "":
			return false
		}
		req := fmt.Sprintf(`{"placement":{"preferred":%q}}`, name)
		// The JetStream API subject for a stream leader step-down.
		if _, err := nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+subjects.Stream, []byte(req), 2*time.Second); err != nil {
			t.Logf("stream leader step-down: %v", err)
		}
		return false
	})
}
