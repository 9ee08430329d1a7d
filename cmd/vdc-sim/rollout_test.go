package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quantix-os/update-agent/subjects"
)

// fakeFleet is a fleet of simulated nodes for rollout: each answers checks
// with its version and takes an apply, then reports the operation after a
// delay. It counts how many nodes update at once.
type fakeFleet struct {
	t   *testing.T
	url string

	mu      sync.Mutex
	running int
	most    int
	applied map[string][]subjects.ApplyCommand
	wg      sync.WaitGroup
}

// fakeNode is one node of a fakeFleet.
type fakeNode struct {
	id, version string
	outcome     subjects.EventType // terminal event of an accepted apply (default completed)
	refuse      string             // non-empty: refuse every apply with this reason
	stopAt      subjects.Status    // non-empty: end the operation in this status, with no terminal event
	delay       time.Duration      // between the apply and the outcome
}

func newFakeFleet(t *testing.T, nodes ...fakeNode) *fakeFleet {
	t.Helper()
	f := &fakeFleet{t: t, url: startFleetBus(t), applied: map[string][]subjects.ApplyCommand{}}
	for _, n := range nodes {
		f.start(n)
	}
	return f
}

func (f *fakeFleet) start(n fakeNode) {
	t := f.t
	nc, err := nats.Connect(f.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.wg.Wait(); nc.Close() })
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var seq uint64
	var mu sync.Mutex
	emit := func(op string, typ subjects.EventType, st subjects.Status, msg string) {
		mu.Lock()
		seq++
		ev := subjects.UpdateEvent{ID: fmt.Sprintf("%s-%d", n.id, seq), NodeID: n.id, Seq: seq, Time: time.Now().UTC(),
			Type: typ, OperationID: op, Status: st, Message: msg, Version: "0.0.6"}
		mu.Unlock()
		data, _ := json.Marshal(ev)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := js.Publish(ctx, subjects.UpdateEvents(n.id), data, jetstream.WithMsgID(ev.ID)); err != nil {
			t.Errorf("node %s: publish event: %v", n.id, err)
		}
	}
	respond := func(m *nats.Msg, v any) {
		b, _ := json.Marshal(v)
		_ = m.Respond(b)
	}
	check := func(m *nats.Msg) {
		respond(m, subjects.CheckReply{NodeID: n.id, Available: n.version != "0.0.6", CurrentVersion: n.version, AvailableVersion: "0.0.6", Channel: "dev"})
	}
	run := func(op string) {
		f.mu.Lock()
		f.running++
		f.most = max(f.most, f.running)
		f.mu.Unlock()
		emit(op, subjects.EventStatus, subjects.StatusDownloading, "downloading")
		time.Sleep(n.delay)
		f.mu.Lock()
		f.running-- // before the outcome: the rollout may start the next node on it
		f.mu.Unlock()
		if n.stopAt != "" {
			emit(op, subjects.EventStatus, n.stopAt, "stopped in "+string(n.stopAt))
			return
		}
		switch n.outcome {
		case "", subjects.EventCompleted:
			emit(op, subjects.EventCompleted, subjects.StatusComplete, "version 0.0.6 installed")
		default:
			emit(op, n.outcome, subjects.StatusError, "health check of qx-node failed")
		}
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
			f.mu.Lock()
			f.applied[n.id] = append(f.applied[n.id], cmd)
			f.mu.Unlock()
			respond(m, subjects.Ack{Accepted: n.refuse == "", OperationID: cmd.OperationID, Reason: n.refuse})
			if n.refuse == "" {
				// Another operation's event first: the rollout must not take it for its own.
				emit("someone-else", subjects.EventFailed, subjects.StatusError, "not this one")
				f.wg.Go(func() { run(cmd.OperationID) })
			}
		},
	}
	for subj, h := range handlers {
		if _, err := nc.Subscribe(subj, h); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, subjects.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(subjects.NodeState{NodeID: n.id, Status: subjects.StatusIdle, CurrentVersion: n.version,
		Versions: subjects.Versions{OS: n.version}, UpdatedAt: time.Now().UTC()})
	if _, err := kv.Put(ctx, subjects.Key(n.id), data); err != nil {
		t.Fatal(err)
	}
}

func (f *fakeFleet) appliedTo(node string) []subjects.ApplyCommand {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied[node]
}

func (f *fakeFleet) mostAtOnce() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.most
}

// rolloutJSON runs rollout --json and decodes its summary.
func rolloutJSON(t *testing.T, url string, args ...string) (rolloutReport, string, int) {
	t.Helper()
	out, errOut, code := vdcSim(t, append([]string{"rollout", "--json", "--nats-url", url, "--settle", "300ms"}, args...)...)
	var rep rolloutReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("rollout --json: exit %d, %v\n%s%s", code, err, out, errOut)
	}
	return rep, errOut, code
}

// results is the rollout's result by node.
func results(rep rolloutReport) map[string]result {
	m := map[string]result{}
	for _, n := range rep.Nodes {
		m[n.NodeID] = n.Result
	}
	return m
}

func sameResults(t *testing.T, rep rolloutReport, want map[string]result) {
	t.Helper()
	got := results(rep)
	if len(got) != len(want) {
		t.Errorf("rollout rows %v, want %v", got, want)
	}
	for n, r := range want {
		if got[n] != r {
			t.Errorf("%s: %s, want %s (all: %v)", n, got[n], r, got)
		}
	}
}

func TestRolloutWaves(t *testing.T) {
	f := newFakeFleet(t,
		fakeNode{id: "r1", version: "0.0.6"},
		fakeNode{id: "r2", version: "0.0.5", delay: 150 * time.Millisecond},
		fakeNode{id: "r3", version: "0.0.5", delay: 150 * time.Millisecond},
		fakeNode{id: "r4", version: "0.0.4", delay: 150 * time.Millisecond},
		fakeNode{id: "r5", version: "0.0.5", delay: 150 * time.Millisecond},
	)
	rep, errOut, code := rolloutJSON(t, f.url, "--version", "0.0.6", "--max-unavailable", "2", "--force-reboot")
	if code != 0 || rep.Halted || rep.Failures != 0 {
		t.Fatalf("rollout: exit %d, %+v\n%s", code, rep, errOut)
	}
	sameResults(t, rep, map[string]result{"r1": resultSkipped, "r2": resultCompleted, "r3": resultCompleted, "r4": resultCompleted, "r5": resultCompleted})
	if most := f.mostAtOnce(); most != 2 {
		t.Errorf("%d nodes updated at once, want 2 (--max-unavailable 2)", most)
	}
	if got := f.appliedTo("r1"); len(got) != 0 {
		t.Errorf("r1, already at 0.0.6, was sent %+v", got)
	}
	for _, n := range rep.Nodes[1:] {
		cmds := f.appliedTo(n.NodeID)
		if len(cmds) != 1 || cmds[0].Version != "0.0.6" || !cmds[0].ForceReboot || cmds[0].OperationID != n.OperationID {
			t.Errorf("%s was sent %+v; want one apply of 0.0.6 with forceReboot, operation %s", n.NodeID, cmds, n.OperationID)
		}
		if n.DurationSeconds < 0.15 || n.StartedAt.IsZero() || n.Message != "version 0.0.6 installed" {
			t.Errorf("%s row %+v", n.NodeID, n)
		}
	}
	if r4 := rep.Nodes[3]; r4.NodeID != "r4" || r4.From != "0.0.4" || r4.To != "0.0.6" {
		t.Errorf("rows not sorted by node, or from/to wrong: %+v", rep.Nodes)
	}
}

func TestRolloutHalts(t *testing.T) {
	f := newFakeFleet(t,
		fakeNode{id: "h1", version: "0.0.5"},
		fakeNode{id: "h2", version: "0.0.5", outcome: subjects.EventRolledBack},
		fakeNode{id: "h3", version: "0.0.5"},
		fakeNode{id: "h4", version: "0.0.5"},
	)
	out, errOut, code := vdcSim(t, "rollout", "--version", "0.0.6", "--nats-url", f.url, "--settle", "300ms")
	if code != 1 || !strings.Contains(errOut, "rollout halted: 1 node(s) failed, more than --failure-threshold 0") {
		t.Fatalf("rollout: exit %d, want 1 and halted\n%s%s", code, out, errOut)
	}
	for _, want := range []string{
		"NODE  FROM   TO     RESULT       DURATION",
		"h2    0.0.5  0.0.6  rolled_back",
		"health check of qx-node failed",
		"h3    0.0.5  0.0.6  not_started  -         rollout halted",
		"rollout of 0.0.6 HALTED after 1 failure(s) (threshold 0): 1 completed, 1 rolled_back, 2 not_started",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	for _, n := range []string{"h3", "h4"} {
		if got := f.appliedTo(n); len(got) != 0 {
			t.Errorf("%s was updated after the halt: %+v", n, got)
		}
	}
}

func TestRolloutThreshold(t *testing.T) {
	f := newFakeFleet(t,
		fakeNode{id: "t1", version: "0.0.5", refuse: "another update is running"},
		fakeNode{id: "t2", version: "0.0.5"},
		fakeNode{id: "t3", version: "0.0.5", stopAt: subjects.StatusRebootRequired},
	)
	// One failure is within --failure-threshold 1; without --force-reboot a
	// node waiting for its reboot is done as far as the rollout goes.
	rep, errOut, code := rolloutJSON(t, f.url, "--version", "0.0.6", "--failure-threshold", "1")
	if code != 0 || rep.Halted || rep.Failures != 1 || rep.FailureThreshold != 1 || rep.MaxUnavailable != 1 {
		t.Fatalf("rollout: exit %d, %+v\n%s", code, rep, errOut)
	}
	sameResults(t, rep, map[string]result{"t1": resultRefused, "t2": resultCompleted, "t3": resultRebootRequired})
	if rep.Nodes[0].Message != "another update is running" {
		t.Errorf("refused row %+v", rep.Nodes[0])
	}
	if cmds := f.appliedTo("t2"); len(cmds) != 1 || cmds[0].ForceReboot {
		t.Errorf("t2 was sent %+v; want no forceReboot", cmds)
	}

	// With --force-reboot the rollout waits for the node to come back; one
	// that never does ends after --node-timeout, and counts.
	rep, _, code = rolloutJSON(t, f.url, "--version", "0.0.6", "--failure-threshold", "1", "--force-reboot", "--node-timeout", "300ms")
	if code != 1 || !rep.Halted || rep.Failures != 2 {
		t.Errorf("second rollout: exit %d, %+v", code, rep)
	}
	if t3 := rep.Nodes[2]; t3.Result != resultFailed || t3.Message != "no outcome after --node-timeout 300ms" {
		t.Errorf("t3 row %+v", t3)
	}
}

func TestRolloutUsage(t *testing.T) {
	url := startFleetBus(t)
	// A port nothing listens on: one just closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "nats://" + ln.Addr().String()
	ln.Close()
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"rollout", "--nats-url", url}, 2, "--version is required"},
		{[]string{"rollout", "--version", "six", "--nats-url", url}, 2, "--version"},
		{[]string{"rollout", "--version", "0.0.6", "--max-unavailable", "0", "--nats-url", url}, 2, "--max-unavailable 0: want 1 or more"},
		{[]string{"rollout", "--version", "0.0.6", "--failure-threshold", "-1", "--nats-url", url}, 2, "--failure-threshold -1"},
		{[]string{"rollout", "--version", "0.0.6", "--nats-url", url, "--settle", "100ms"}, 1, "no nodes"},
		{[]string{"rollout", "--version", "0.0.6", "--nats-url", closed}, 1, "connect to " + closed},
	} {
		_, errOut, code := vdcSim(t, tt.args...)
		if code != tt.code || !strings.Contains(errOut, tt.want) {
			t.Errorf("vdc-sim %s: exit %d, stderr %q; want %d and %q", strings.Join(tt.args, " "), code, errOut, tt.code, tt.want)
		}
	}
}

func TestPrintRollout(t *testing.T) {
	start := time.Date(2025, 1, 2, 12, 0, 0, 0, time.UTC)
	rep := rolloutReport{Version: "0.0.6", MaxUnavailable: 1, Nodes: []rolloutNode{
		{NodeID: "a", From: "0.0.5", To: "0.0.6", Result: resultCompleted, StartedAt: start, FinishedAt: start.Add(1234 * time.Millisecond), DurationSeconds: 1.234},
		{NodeID: "b", From: "0.0.6", To: "0.0.6", Result: resultSkipped, Message: "already at 0.0.6"},
		{NodeID: "c", To: "0.0.6", Result: resultFailed, Message: "apply node c:\n node did not answer", StartedAt: start, DurationSeconds: 0.0421},
	}}
	var out strings.Builder
	if err := printRollout(&out, rep); err != nil {
		t.Fatal(err)
	}
	want := `NODE  FROM   TO     RESULT     DURATION  MESSAGE
a     0.0.5  0.0.6  completed  1.2s      -
b     0.0.6  0.0.6  skipped    -         already at 0.0.6
c     -      0.0.6  failed     42ms      apply node c: node did not answer
rollout of 0.0.6 done: 1 completed, 1 skipped, 1 failed
`
	if out.String() != want {
		t.Errorf("summary:\n%s\nwant:\n%s", out.String(), want)
	}
}
