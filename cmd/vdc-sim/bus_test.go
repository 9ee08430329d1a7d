package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quantix-os/update-agent/internal/natstest"
	"github.com/quantix-os/update-agent/internal/qxtest"
	"github.com/quantix-os/update-agent/internal/vdc"
	"github.com/quantix-os/update-agent/subjects"
)

// startFleetBus runs an embedded JetStream server with the stream and bucket.
func startFleetBus(t *testing.T) string {
	t.Helper()
	url := natstest.Start(t).ClientURL()
	natstest.Provision(t, url)
	return url
}

// busNode plays an agent on the bus: it answers checks, takes apply
// commands and reports the operation as events, ending with outcome.
type busNode struct {
	id      string
	version string
	outcome subjects.EventType // what an accepted apply ends with
	refuse  string             // non-empty: refuse every apply with this reason

	nc  *nats.Conn
	js  jetstream.JetStream
	seq uint64
	mu  sync.Mutex
	wg  sync.WaitGroup
}

func (n *busNode) start(t *testing.T, url string) *busNode {
	t.Helper()
	var err error
	if n.nc, err = nats.Connect(url); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.wg.Wait(); n.nc.Close() })
	if n.js, err = jetstream.New(n.nc); err != nil {
		t.Fatal(err)
	}
	respond := func(m *nats.Msg, v any) {
		b, _ := json.Marshal(v)
		_ = m.Respond(b)
	}
	check := func(m *nats.Msg) {
		respond(m, subjects.CheckReply{NodeID: n.id, Available: true, CurrentVersion: n.version, AvailableVersion: "0.0.6",
			Channel: "dev", TotalDownloadSize: 2048, Components: []subjects.ComponentUpdate{{Name: "qx-node", NewVersion: "0.0.6", SizeBytes: 2048}}})
	}
	handlers := map[string]nats.MsgHandler{
		subjects.FleetCheck():      check,
		subjects.UpdateCheck(n.id): check,
		subjects.UpdateApply(n.id): func(m *nats.Msg) {
			var cmd subjects.ApplyCommand
			if err := subjects.Decode(m.Data, &cmd); err != nil {
				respond(m, subjects.Ack{Reason: err.Error()})
				return
			}
			respond(m, subjects.Ack{Accepted: n.refuse == "", OperationID: cmd.OperationID, Reason: n.refuse})
			if n.refuse == "" {
				n.wg.Go(func() { n.run(t, cmd.OperationID) })
			}
		},
	}
	for subj, h := range handlers {
		if _, err := n.nc.Subscribe(subj, h); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	n.putState(t, subjects.StatusIdle, nil)
	return n
}

// run reports an operation: another operation's event first (which the
// follower must ignore), progress, then the outcome.
func (n *busNode) run(t *testing.T, op string) {
	n.emit(t, "someone-else", subjects.EventStatus, subjects.StatusApplying, nil, "")
	for _, p := range []int{0, 50, 100} {
		n.emit(t, op, subjects.EventProgress, subjects.StatusDownloading, &p, "")
	}
	msg := ""
	if n.outcome != subjects.EventCompleted {
		msg = "health check of qx-node failed"
	}
	n.emit(t, op, n.outcome, subjects.StatusIdle, nil, msg)
}

func (n *busNode) emit(t *testing.T, op string, typ subjects.EventType, st subjects.Status, progress *int, msg string) {
	n.mu.Lock()
	n.seq++
	ev := subjects.UpdateEvent{ID: fmt.Sprintf("%s-%d", n.id, n.seq), NodeID: n.id, Seq: n.seq, Time: time.Now().UTC(),
		Type: typ, OperationID: op, Status: st, Progress: progress, Component: "qx-node", Message: msg}
	n.mu.Unlock()
	data, _ := json.Marshal(ev)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := n.js.Publish(ctx, subjects.UpdateEvents(n.id), data, jetstream.WithMsgID(ev.ID)); err != nil {
		t.Errorf("node %s: publish event: %v", n.id, err)
	}
}

func (n *busNode) putState(t *testing.T, st subjects.Status, progress *int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := n.js.KeyValue(ctx, subjects.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(subjects.NodeState{NodeID: n.id, Status: st, CurrentVersion: n.version, Progress: progress,
		Versions: subjects.Versions{OS: n.version}, UpdatedAt: time.Now().UTC()})
	if _, err := kv.Put(ctx, subjects.Key(n.id), data); err != nil {
		t.Fatal(err)
	}
}

func TestBusCheckAndHosts(t *testing.T) {
	url := startFleetBus(t)
	for _, id := range []string{"node-3", "node-1", "node-2"} {
		(&busNode{id: id, version: "0.0.5"}).start(t, url)
	}

	out := mustRun(t, "check", "--all", "--json", "--nats-url", url, "--settle", "300ms")
	var replies []subjects.CheckReply
	if err := json.Unmarshal([]byte(out), &replies); err != nil {
		t.Fatalf("check --all --json: %v\n%s", err, out)
	}
	if len(replies) != 3 || replies[0].NodeID != "node-1" || replies[2].NodeID != "node-3" || replies[1].AvailableVersion != "0.0.6" {
		t.Errorf("check --all --json = %+v; want node-1..3 sorted, 0.0.6 available", replies)
	}

	out = mustRun(t, "check", "--all", "--nats-url", url, "--settle", "300ms")
	for _, want := range []string{"CURRENT  AVAILABLE  COMPONENTS  SIZE", "node-2  0.0.5    0.0.6      qx-node     2.0 KiB  -", "3 nodes answered"} {
		if !strings.Contains(out, want) {
			t.Errorf("check --all output lacks %q:\n%s", want, out)
		}
	}

	out = mustRun(t, "check", "--node", "node-2", "--json", "--nats-url", url)
	var one subjects.CheckReply
	if err := json.Unmarshal([]byte(out), &one); err != nil || one.NodeID != "node-2" {
		t.Errorf("check --node --json = %s (%v)", out, err)
	}

	out = mustRun(t, "hosts", "--json", "--nats-url", url)
	var hosts []subjects.NodeState
	if err := json.Unmarshal([]byte(out), &hosts); err != nil {
		t.Fatalf("hosts --json: %v\n%s", err, out)
	}
	if len(hosts) != 3 || hosts[0].NodeID != "node-1" || hosts[0].Status != subjects.StatusIdle || hosts[0].CurrentVersion != "0.0.5" {
		t.Errorf("hosts --json = %+v", hosts)
	}
	out = mustRun(t, "hosts", "--nats-url", url)
	if !regexp.MustCompile(`(?m)^NODE\s+VERSION\s+STATUS\s+PROGRESS\s+LAST SEEN\nnode-1\s+0\.0\.5\s+idle\s+-\s+\d+s ago$`).MatchString(out) {
		t.Errorf("hosts table:\n%s", out)
	}

	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"check", "--nats-url", url}, 2, "exactly one of --all and --node"},
		{[]string{"check", "--node", "a.b", "--nats-url", url}, 2, "invalid node id"},
		{[]string{"check", "--node", "ghost", "--nats-url", url}, 1, "node did not answer"},
		{[]string{"hosts", "--nats-url", "nats://127.0.0.1:1"}, 1, "connect to nats://127.0.0.1:1"},
	} {
		_, errOut, code := vdcSim(t, tt.args...)
		if code != tt.code || !strings.Contains(errOut, tt.want) {
			t.Errorf("vdc-sim %s: exit %d, stderr %q; want %d and %q", strings.Join(tt.args, " "), code, errOut, tt.code, tt.want)
		}
	}
}

func TestBusApplyWaitEvents(t *testing.T) {
	url := startFleetBus(t)
	(&busNode{id: "good", version: "0.0.5", outcome: subjects.EventCompleted}).start(t, url)
	(&busNode{id: "bad", version: "0.0.5", outcome: subjects.EventRolledBack}).start(t, url)
	(&busNode{id: "busy", version: "0.0.5", refuse: "another update is running"}).start(t, url)

	out, errOut, code := vdcSim(t, "apply", "--node", "good", "--wait", "--operation-id", "op-good", "--nats-url", url)
	if code != 0 || !strings.Contains(out, "node good accepted operation op-good") ||
		!strings.Contains(out, "progress downloading 50% qx-node op=op-good") || !strings.Contains(out, "completed idle") {
		t.Errorf("apply --wait on good node: exit %d\n%s%s", code, out, errOut)
	}
	if strings.Contains(out, "someone-") {
		t.Errorf("apply --wait showed another operation's event:\n%s", out)
	}

	out, errOut, code = vdcSim(t, "apply", "--node", "bad", "--wait", "--nats-url", url)
	if code != 1 || !strings.Contains(errOut, "rolled_back: health check of qx-node failed") {
		t.Errorf("apply --wait on failing node: exit %d\n%s%s", code, out, errOut)
	}

	out, errOut, code = vdcSim(t, "apply", "--node", "busy", "--json", "--nats-url", url)
	var ack subjects.Ack
	if code != 1 || json.Unmarshal([]byte(out), &ack) != nil || ack.Accepted || !strings.Contains(errOut, "another update is running") {
		t.Errorf("apply on busy node: exit %d\n%s%s", code, out, errOut)
	}

	// events: good's stored events, oldest first (another op's status, 3 progress, completed).
	out = mustRun(t, "events", "--node", "good", "--json", "--nats-url", url)
	var events []vdc.Event
	if err := json.Unmarshal([]byte(out), &events); err != nil {
		t.Fatalf("events --json: %v\n%s", err, out)
	}
	if len(events) != 5 || events[0].Seq() != 1 || events[4].Type() != subjects.EventCompleted {
		t.Errorf("events --node good = %d events: %s", len(events), out)
	}
	out = mustRun(t, "events", "--node", "bad", "--nats-url", url)
	if lines := strings.Count(out, "\n"); lines != 5 || !strings.Contains(out, "bad #5 rolled_back") {
		t.Errorf("events --node bad: %d lines\n%s", lines, out)
	}
}

func TestBusWatch(t *testing.T) {
	url := startFleetBus(t)
	n := (&busNode{id: "w1", version: "0.0.5"}).start(t, url)
	n.emit(t, "old", subjects.EventStatus, subjects.StatusIdle, nil, "before the watch")

	cmd := exec.Command(bin, "watch", "--json", "--nats-url", url)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr qxtest.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// Events keep coming until the watcher (which only shows new ones) prints one.
	var got vdc.Event
	deadline := time.After(10 * time.Second)
	for got.Update == nil {
		n.emit(t, "new", subjects.EventStatus, subjects.StatusChecking, nil, "")
		select {
		case l := <-lines:
			if err := json.Unmarshal([]byte(l), &got); err != nil {
				t.Fatalf("watch --json line %q: %v", l, err)
			}
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			cmd.Process.Kill()
			t.Fatalf("watch printed nothing\n%s", stderr.String())
		}
	}
	if got.NodeID != "w1" || got.Update.OperationID != "new" {
		t.Errorf("watch printed %+v; want a new event of w1", got)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("watch after Ctrl-C: %v\n%s", err, stderr.String())
	}
}

func TestBusServe(t *testing.T) {
	dir := t.TempDir()
	keys, repo := filepath.Join(dir, "keys"), filepath.Join(dir, "repo")
	mustRun(t, "keygen", "--out", keys)
	writeFile(t, filepath.Join(dir, "src", "VERSION"), "0.0.6\n")
	mustRun(t, "release", "--repo", repo, "--key", filepath.Join(keys, "update.key"), "--channel", "dev", "--version", "0.0.6",
		"--component", "qx-node="+filepath.Join(dir, "src"))

	srv := startServe(t, "--repo", repo, "--http", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--store", filepath.Join(dir, "nats"))
	natsURL, base := srv.natsURL(t), srv.httpURL(t)

	// serve provisioned the bus: a node can report into it, and vDC's REST side sees it.
	n := (&busNode{id: "s1", version: "0.0.5", outcome: subjects.EventCompleted}).start(t, natsURL)
	resp, err := http.Get(base + "/api/v1/updates/hosts")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `{"hosts":[{"nodeId":"s1","status":"idle"`) {
		t.Errorf("GET hosts = %d %s", resp.StatusCode, body)
	}
	resp, err = http.Post(base+"/api/v1/updates/hosts/s1/apply", "application/json", strings.NewReader(`{"forceReboot":true}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || !strings.Contains(string(body), `"accepted":true`) {
		t.Errorf("POST apply = %d %s", resp.StatusCode, body)
	}
	// serve logs the events the operation produced.
	srv.waitLog(t, "update event")
	srv.waitLog(t, "type=completed")
	n.wg.Wait()
	srv.stop(t)
}

func TestFollowTerminal(t *testing.T) {
	url := startFleetBus(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c, err := vdc.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := (&busNode{id: "tty", version: "0.0.5", outcome: subjects.EventCompleted}).start(t, url)
	n.emit(t, "op-tty", subjects.EventStatus, subjects.StatusIdle, nil, "before the subscription")
	sub, err := c.Subscribe(ctx, "tty", true)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()
	n.run(t, "op-tty")

	var out strings.Builder
	if err := follow(ctx, &out, sub, "op-tty", false, true); err != nil {
		t.Fatalf("follow: %v\n%q", err, out.String())
	}
	got := out.String()
	for _, want := range []string{
		"\r[                    ]   0% downloading qx-node\x1b[K",
		"\r[##########          ]  50% downloading qx-node\x1b[K",
		"\r[####################] 100% downloading qx-node\x1b[K\n",
		"tty #6 completed idle qx-node op=op-tty\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("follow on a terminal lacks %q:\n%q", want, got)
		}
	}
	if strings.Contains(got, "before the subscription") || strings.Contains(got, "someone-") {
		t.Errorf("follow showed an event it should not:\n%q", got)
	}
}

func TestEventPrinterGaps(t *testing.T) {
	ev := func(node string, seq uint64) vdc.Event {
		return vdc.Event{NodeID: node, Update: &subjects.UpdateEvent{NodeID: node, Seq: seq, Type: subjects.EventStatus, Status: subjects.StatusIdle}}
	}
	var out strings.Builder
	p := newEventPrinter(&out, false)
	for _, e := range []vdc.Event{ev("a", 4), ev("b", 1), ev("a", 5), ev("a", 8), ev("a", 8), {Subject: "x", Error: "bad"}} {
		if err := p.print(e); err != nil {
			t.Fatal(err)
		}
	}
	got := out.String()
	for _, want := range []string{"!! a: 2 event(s) missing between seq 5 and 8", "!! a: seq 8 again after 8", "bad event on x (stream seq 0): bad"} {
		if !strings.Contains(got, want) {
			t.Errorf("printer output lacks %q:\n%s", want, got)
		}
	}
	if strings.Count(got, "!!") != 2 {
		t.Errorf("want exactly two notes:\n%s", got)
	}
}

func TestAgo(t *testing.T) {
	now := time.Date(2025, 1, 2, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		t    time.Time
		want string
	}{
		{time.Time{}, "-"},
		{now.Add(-3 * time.Second), "3s ago"},
		{now.Add(time.Second), "0s ago"}, // a node clock slightly ahead
		{now.Add(-5 * time.Minute), "5m ago"},
		{now.Add(-30 * time.Hour), "30h ago"},
	} {
		if got := ago(tt.t, now); got != tt.want {
			t.Errorf("ago(%v) = %q, want %q", tt.t, got, tt.want)
		}
	}
}
