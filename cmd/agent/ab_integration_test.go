package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quantix-os/update-agent/subjects"
)

// The A/B tests drive full-system updates through the real binaries: vdc-sim
// serves a release with a disk image and plays the maintenance coordinator,
// the agent writes the image to a slot file and runs a reboot script, and the
// test plays the machine: it stops the agent, applies the boot rule to a real
// GRUB environment block and starts the agent again.

// releaseFull publishes version with both components and the raw disk image img.
func (s *site) releaseFull(t *testing.T, version string, img []byte) {
	t.Helper()
	imgFile := filepath.Join(s.dir, "src", version, "system.img")
	writeFile(t, imgFile, string(img), 0o644)
	args := []string{"release", "--repo", s.repo, "--key", s.key, "--channel", "dev", "--version", version,
		"--notes", "release " + version, "--image", imgFile}
	for _, c := range []string{"qx-node", "qx-console"} {
		src := filepath.Join(s.dir, "src", version, c)
		writeFile(t, filepath.Join(src, "bin", c), c+" "+version+"\n", 0o755)
		writeFile(t, filepath.Join(src, "VERSION"), version+"\n", 0o644)
		args = append(args, "--component", c+"="+src)
	}
	runCmd(t, "vdc-sim", args...)
}

// testImage is a raw disk image of n bytes: a compressible run and random data.
func testImage(n int) []byte {
	b := bytes.Repeat([]byte("quantix-os system image 0.0.6\n"), n/30+1)[:n]
	r := rand.New(rand.NewPCG(6, 6))
	for i := n / 2; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// abHost is an agent with A/B slots: slot files a and b, a GRUB environment
// block, a kernel command line file and a reboot script that only records it ran.
type abHost struct {
	*host
	*abDisks
	node string
}

// abDisks are an A/B host's boot pieces, as files: the two slots (a holds
// slotAWas and is booted, b the old oldSlotB), the GRUB env block with
// qx_slot=a, the kernel command line, and a reboot command that counts its
// runs in reboots.
type abDisks struct {
	slotA, slotB, grubEnv, cmdline, rebootCmd, reboots string
	slotAWas                                           []byte
}

// layABDisks makes an A/B host's boot pieces in dir.
func layABDisks(t *testing.T, dir string) *abDisks {
	t.Helper()
	d := &abDisks{slotA: filepath.Join(dir, "slot-a"), slotB: filepath.Join(dir, "slot-b"),
		grubEnv: filepath.Join(dir, "grubenv"), cmdline: filepath.Join(dir, "cmdline"),
		rebootCmd: filepath.Join(dir, "reboot"), reboots: filepath.Join(dir, "reboots"),
		slotAWas: bytes.Repeat([]byte("slot a: system 0.0.5\n"), 4096)}
	writeFile(t, d.slotA, string(d.slotAWas), 0o644)
	writeFile(t, d.slotB, string(oldSlotB), 0o644)
	grubEditenv(t, d.grubEnv, "create")
	grubEditenv(t, d.grubEnv, "set", "qx_slot=a")
	writeFile(t, d.cmdline, "qx.slot=a\n", 0o644)
	writeFile(t, d.rebootCmd, "#!/bin/sh\necho reboot >>"+d.reboots+"\n", 0o755)
	return d
}

// oldSlotB is what slot b holds before any update; a refused update leaves it.
var oldSlotB = bytes.Repeat([]byte("slot b: old system 0.0.4\n"), 4096)

func newABHost(t *testing.T, s *site, node, maintenanceTimeout string) *abHost {
	t.Helper()
	lay := layHost(t)
	d := lay.dir
	h := &abHost{host: lay, abDisks: layABDisks(t, d), node: node}

	h.cfg = filepath.Join(d, "agent.yaml")
	writeFile(t, h.cfg, fmt.Sprintf(`nodeId: %s
nats: { url: %q }
updates: { serverUrl: %q, channel: dev, publicKeys: [%q] }
paths: { root: %q }
components:
  qx-node: { dir: opt/quantix/qx-node, service: qx-node }
  qx-console: { dir: opt/quantix/qx-console, service: qx-console }
services: { rcService: %q }
http: { listen: "127.0.0.1:0", tokenFile: %q }
log: { format: json, level: debug }
ab:
  slots: { a: %q, b: %q }
  grubEnv: %q
  cmdline: %q
  rebootCommand: [%q]
  maintenanceTimeout: %s
`, node, s.nats, s.url, s.pub, h.root, filepath.Join(d, "rc-service"), filepath.Join(d, "token"),
		h.slotA, h.slotB, h.grubEnv, h.cmdline, h.rebootCmd, maintenanceTimeout), 0o644)
	h.start(t)
	return h
}

// rebootCount is how many times the agent ran its reboot command.
func (h *abHost) rebootCount() int {
	b, _ := os.ReadFile(h.reboots)
	return strings.Count(string(b), "reboot\n")
}

// reboot plays the machine restarting: the agent stops, boot applies the
// boot rule (writing the command line), and the agent starts again.
func (h *abHost) reboot(t *testing.T, boot func() string) string {
	t.Helper()
	h.agent.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.agent.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("agent %s did not stop", h.node)
	}
	slot := boot()
	h.start(t)
	return slot
}

// grubEditenv runs the real grub-editenv on file.
func grubEditenv(t *testing.T, file string, args ...string) string {
	t.Helper()
	out, err := exec.Command("grub-editenv", append([]string{file}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("grub-editenv %s %s: %v\n%s", file, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// grubList is the environment block as grub-editenv lists it.
func grubList(t *testing.T, file string) map[string]string {
	t.Helper()
	vars := map[string]string{}
	for line := range strings.Lines(grubEditenv(t, file, "list")) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			vars[k] = v
		}
	}
	return vars
}

// bootByHand applies the boot rule of DESIGN.md section 6 with grub-editenv:
// a trial slot with tries left boots, its count lowered and saved first;
// otherwise the committed slot boots. It writes the command line and
// returns the slot.
func bootByHand(t *testing.T, grubEnv, cmdline string) string {
	t.Helper()
	vars := grubList(t, grubEnv)
	slot := vars["qx_slot"]
	if slot == "" {
		slot = "a"
	}
	if try := vars["qx_try_slot"]; try != "" {
		if n, err := strconv.Atoi(vars["qx_tries"]); err == nil && n > 0 {
			grubEditenv(t, grubEnv, "set", "qx_tries="+strconv.Itoa(n-1))
			slot = try
		}
	}
	writeFile(t, cmdline, "qx.slot="+slot+"\n", 0o644)
	return slot
}

// bootSim boots h with vdc-sim's boot loader.
func (h *abHost) bootSim(t *testing.T, extra ...string) string {
	t.Helper()
	return strings.TrimSpace(runCmd(t, "vdc-sim", append([]string{"boot", "--grubenv", h.grubEnv, "--cmdline", h.cmdline}, extra...)...))
}

// maintLog records the maintenance events vDC publishes to nodes.
type maintLog struct {
	mu     sync.Mutex
	events []subjects.MaintenanceEvent
}

// watchMaintenance subscribes to every node's maintenance subject.
func watchMaintenance(t *testing.T, nc *nats.Conn) *maintLog {
	t.Helper()
	l := &maintLog{}
	sub, err := nc.Subscribe(subjects.NodeMaintenance("*"), func(m *nats.Msg) {
		var ev subjects.MaintenanceEvent
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Errorf("maintenance event %s: %v", m.Data, err)
			return
		}
		l.mu.Lock()
		l.events = append(l.events, ev)
		l.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

// states is node's maintenance states in order, repeats folded.
func (l *maintLog) states(node string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, ev := range l.events {
		if ev.NodeID == node && (len(out) == 0 || out[len(out)-1] != string(ev.State)) {
			out = append(out, string(ev.State))
		}
	}
	return out
}

// last is node's latest maintenance event.
func (l *maintLog) last(node string) (subjects.MaintenanceEvent, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.events) - 1; i >= 0; i-- {
		if l.events[i].NodeID == node {
			return l.events[i], true
		}
	}
	return subjects.MaintenanceEvent{}, false
}

// maxActive is the most nodes that were draining or ready at one time.
func (l *maintLog) maxActive() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	active, most := map[string]bool{}, 0
	for _, ev := range l.events {
		switch ev.State {
		case subjects.MaintenanceDraining, subjects.MaintenanceReady:
			active[ev.NodeID] = true
		default:
			delete(active, ev.NodeID)
		}
		most = max(most, len(active))
	}
	return most
}

func natsClient(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// waitAnswering waits until node answers on the bus: the agent logs that it
// listens on HTTP before its NATS subscriptions are in place.
func waitAnswering(t *testing.T, nc *nats.Conn, nodes ...string) {
	t.Helper()
	for _, n := range nodes {
		waitFor(t, n+" answering status requests", func() bool {
			_, err := nc.Request(subjects.UpdateStatus(n), []byte(`{}`), time.Second)
			return err == nil
		})
	}
}

// waitExit waits for p to end and returns its exit status.
func (p *proc) waitExit(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not end:\n%s", p.cmd.Path, p.output())
	}
	return p.cmd.ProcessState.ExitCode()
}

func (h *abHost) current(t *testing.T) map[string]any {
	_, cur := h.do(t, "GET", "/api/v1/updates/current", "", nil)
	return cur
}

func mustReadFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFullUpdateCommits: a full update drains the host, writes slot b, arms
// a trial boot and reboots; the trial boot (the rule applied by hand with
// grub-editenv) comes up in b and the agent commits it.
func TestFullUpdateCommits(t *testing.T) {
	s := newSite(t, "--vms-per-node", "2", "--drain-interval", "50ms")
	img := testImage(3 << 20)
	s.releaseFull(t, "0.0.6", img)
	h := newABHost(t, s, "ab-1", "30s")
	nc := natsClient(t, s.nats)
	maint := watchMaintenance(t, nc)
	waitAnswering(t, nc, "ab-1")

	apply := start(t, "vdc-sim", "apply", "--node", "ab-1", "--force-reboot", "--wait", "--nats-url", s.nats)
	waitFor(t, "the reboot command", func() bool { return h.rebootCount() == 1 })
	env := grubList(t, h.grubEnv)
	if env["qx_slot"] != "a" || env["qx_try_slot"] != "b" || env["qx_tries"] != "1" {
		t.Fatalf("armed env = %v; want qx_slot=a qx_try_slot=b qx_tries=1", env)
	}
	if got := h.status(t)["status"]; got != "reboot_required" {
		t.Errorf("status before the reboot = %v", got)
	}
	if slot := h.reboot(t, func() string { return bootByHand(t, h.grubEnv, h.cmdline) }); slot != "b" {
		t.Fatalf("the boot rule chose slot %s, want the trial slot b", slot)
	}

	if code := apply.waitExit(t); code != 0 {
		t.Fatalf("apply --wait exit %d:\n%s", code, apply.output())
	}
	if out := apply.output(); !strings.Contains(out, "reboot_required") || !strings.Contains(out, "completed complete") {
		t.Errorf("apply --wait did not show the reboot and the completion:\n%s", out)
	}
	// The agent announces itself after the commit, with what now runs.
	waitFor(t, "the online event from slot b", func() bool {
		out := s.serve.output()
		i := strings.Index(out, "type=completed")
		return i >= 0 && strings.Contains(out[i:], "type=online os=0.0.6 bootSlot=b")
	})
	if !bytes.Equal(mustReadFile(t, h.slotB), img) {
		t.Errorf("slot b is not the raw image")
	}
	env = grubList(t, h.grubEnv)
	if env["qx_slot"] != "b" || env["qx_try_slot"] != "" || env["qx_tries"] != "" || len(env) != 1 {
		t.Errorf("committed env = %v; want only qx_slot=b", env)
	}
	if cur := h.current(t); cur["currentVersion"] != "0.0.6" || cur["osVersion"] != "0.0.6" {
		t.Errorf("current = %v", cur)
	}
	if h.rebootCount() != 1 {
		t.Errorf("reboot command ran %d times", h.rebootCount())
	}
	waitFor(t, "the maintenance release", func() bool {
		ev, _ := maint.last("ab-1")
		return ev.State == subjects.MaintenanceReleased
	})
	if got := strings.Join(maint.states("ab-1"), ","); got != "draining,ready,released" {
		t.Errorf("maintenance states %s; want draining,ready,released", got)
	}
	if ev, _ := maint.last("ab-1"); ev.Reason != "completed" {
		t.Errorf("released with outcome %q, want completed", ev.Reason)
	}
}

// TestFullUpdateRollsBack: the trial boot of slot b fails, the boot loader
// falls back to a, and the agent reports rolled_back and releases the host.
func TestFullUpdateRollsBack(t *testing.T) {
	s := newSite(t, "--vms-per-node", "1", "--drain-interval", "50ms")
	s.releaseFull(t, "0.0.6", testImage(1<<20))
	h := newABHost(t, s, "ab-2", "30s")
	nc := natsClient(t, s.nats)
	maint := watchMaintenance(t, nc)
	waitAnswering(t, nc, "ab-2")

	apply := start(t, "vdc-sim", "apply", "--node", "ab-2", "--force-reboot", "--wait", "--nats-url", s.nats)
	waitFor(t, "the reboot command", func() bool { return h.rebootCount() == 1 })
	if slot := h.reboot(t, func() string { return h.bootSim(t, "--fail-trial") }); slot != "a" {
		t.Fatalf("after a failed trial the boot loader chose %s, want a", slot)
	}
	if code := apply.waitExit(t); code != 1 || !strings.Contains(apply.output(), "rolled_back") {
		t.Fatalf("apply --wait exit %d, want 1 and rolled_back:\n%s", code, apply.output())
	}
	env := grubList(t, h.grubEnv)
	if env["qx_slot"] != "a" || env["qx_try_slot"] != "" || env["qx_tries"] != "" {
		t.Errorf("env after the rollback = %v; want qx_slot=a and no trial", env)
	}
	if cur := h.current(t); cur["currentVersion"] != "0.0.5" {
		t.Errorf("current after the rollback = %v", cur)
	}
	waitFor(t, "the maintenance release", func() bool {
		ev, _ := maint.last("ab-2")
		return ev.State == subjects.MaintenanceReleased && ev.Reason == "rolled_back"
	})
	_, hist := h.do(t, "GET", "/api/v1/updates/history", "", nil)
	entries, _ := hist["history"].([]any)
	if len(entries) != 1 || entries[0].(map[string]any)["result"] != "rolled_back" {
		t.Errorf("history = %v", hist)
	}
}

// TestFullUpdateMaintenanceRefused: a maintenance window vDC cancels, or one
// not ready within the agent's maintenanceTimeout, ends the update before
// anything is written.
func TestFullUpdateMaintenanceRefused(t *testing.T) {
	// 50 VMs at one a second: the drain outlasts the test.
	s := newSite(t, "--vms-per-node", "50")
	s.releaseFull(t, "0.0.6", testImage(1<<20))
	hc := newABHost(t, s, "ab-cancel", "30s")
	ht := newABHost(t, s, "ab-timeout", "1s")
	nc := natsClient(t, s.nats)
	maint := watchMaintenance(t, nc)
	waitAnswering(t, nc, "ab-cancel", "ab-timeout")

	t.Run("cancelled", func(t *testing.T) {
		apply := start(t, "vdc-sim", "apply", "--node", "ab-cancel", "--force-reboot", "--wait", "--nats-url", s.nats)
		waitFor(t, "ab-cancel draining", func() bool {
			ev, _ := maint.last("ab-cancel")
			return ev.State == subjects.MaintenanceDraining
		})
		out, err := exec.Command(filepath.Join(binDir, "vdc-sim"), "cancel", "--node", "ab-cancel", "--reason", "operator said no", "--nats-url", s.nats).CombinedOutput()
		// vDC's coordinator sees the cancel too and may end the window
		// first, failing the update before the agent reads the command.
		if err != nil && !strings.Contains(string(out), "no update in progress") {
			t.Fatalf("cancel: %v\n%s", err, out)
		}
		if code := apply.waitExit(t); code != 1 || !strings.Contains(apply.output(), "cancelled") {
			t.Fatalf("apply --wait exit %d, want 1 and cancelled:\n%s", code, apply.output())
		}
		waitFor(t, "the window to end", func() bool {
			ev, _ := maint.last("ab-cancel")
			return ev.State == subjects.MaintenanceReleased
		})
		// cancelled shows when the coordinator ended the window before the
		// agent released it.
		if got := strings.Join(maint.states("ab-cancel"), ","); got != "draining,cancelled,released" && got != "draining,released" {
			t.Errorf("maintenance states %s; want draining,[cancelled,]released", got)
		}
		checkUntouched(t, hc)
	})
	t.Run("timeout", func(t *testing.T) {
		out, err := exec.Command(filepath.Join(binDir, "vdc-sim"), "apply", "--node", "ab-timeout", "--force-reboot", "--wait", "--nats-url", s.nats).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "failed") || !strings.Contains(string(out), "maintenance not ready after 1s") {
			t.Fatalf("apply --wait: %v, want a failure naming the timeout:\n%s", err, out)
		}
		waitFor(t, "the window to end", func() bool {
			ev, _ := maint.last("ab-timeout")
			return ev.State == subjects.MaintenanceReleased && ev.Reason == "failed"
		})
		checkUntouched(t, ht)
	})
}

// checkUntouched asserts a refused full update left slot b, the boot
// configuration and the installed version as they were.
func checkUntouched(t *testing.T, h *abHost) {
	t.Helper()
	if !bytes.Equal(mustReadFile(t, h.slotB), oldSlotB) {
		t.Errorf("%s: slot b was written", h.node)
	}
	if env := grubList(t, h.grubEnv); env["qx_slot"] != "a" || len(env) != 1 {
		t.Errorf("%s: env = %v; want only qx_slot=a", h.node, env)
	}
	if h.rebootCount() != 0 {
		t.Errorf("%s: rebooted", h.node)
	}
	st := h.waitStatus(t, "idle", "error")
	if v := h.current(t)["currentVersion"]; v != "0.0.5" {
		t.Errorf("%s: current %v, status %v", h.node, v, st)
	}
}

// rolloutRow is one node of rollout --json's summary.
type rolloutRow struct {
	NodeID     string    `json:"nodeId"`
	From       string    `json:"from"`
	To         string    `json:"to"`
	Result     string    `json:"result"`
	Message    string    `json:"message"`
	StartedAt  time.Time `json:"startedAt"`
	FinishedAt time.Time `json:"finishedAt"`
}

// TestRolloutMixedFleet rolls a release with components and an image out
// over component-only hosts and A/B hosts, two nodes at a time, while vDC
// lets only one host into maintenance at a time.
func TestRolloutMixedFleet(t *testing.T) {
	s := newSite(t, "--vms-per-node", "1", "--drain-interval", "50ms", "--max-unavailable", "1")
	s.releaseFull(t, "0.0.6", testImage(1<<20))
	nc := natsClient(t, s.nats)
	maint := watchMaintenance(t, nc)
	abs := map[string]*abHost{"ab-1": newABHost(t, s, "ab-1", "30s"), "ab-2": newABHost(t, s, "ab-2", "30s")}
	comps := map[string]*host{}
	for _, n := range []string{"c-1", "c-2", "c-3"} {
		comps[n] = newHost(t, s, n, s.nats)
	}
	waitAnswering(t, nc, "ab-1", "ab-2", "c-1", "c-2", "c-3")
	runCmd(t, "vdc-sim", "apply", "--node", "c-3", "--wait", "--nats-url", s.nats) // already current: skipped

	var stdout bytes.Buffer
	ro := &proc{cmd: exec.Command(filepath.Join(binDir, "vdc-sim"), "rollout", "--version", "0.0.6", "--max-unavailable", "2",
		"--force-reboot", "--json", "--nats-url", s.nats), done: make(chan struct{})}
	ro.cmd.Stdout, ro.cmd.Stderr = &stdout, &ro.out
	if err := ro.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { ro.cmd.Wait(); close(ro.done) }()
	t.Cleanup(func() {
		ro.cmd.Process.Kill()
		<-ro.done
		if t.Failed() {
			t.Logf("rollout stderr:\n%s", ro.output())
		}
	})

	// Play the machines: reboot each A/B host when it asks to.
	for rebooted := map[string]bool{}; len(rebooted) < len(abs); {
		var next *abHost
		waitFor(t, "an A/B host to run its reboot command", func() bool {
			for n, h := range abs {
				if !rebooted[n] && h.rebootCount() > 0 {
					next = h
					return true
				}
			}
			return false
		})
		if slot := next.reboot(t, func() string { return next.bootSim(t) }); slot != "b" {
			t.Fatalf("%s booted %s, want the trial slot b", next.node, slot)
		}
		rebooted[next.node] = true
	}
	if code := ro.waitExit(t); code != 0 {
		t.Fatalf("rollout exit %d\n%s\n%s", code, stdout.String(), ro.output())
	}
	var rep struct {
		Halted bool         `json:"halted"`
		Nodes  []rolloutRow `json:"nodes"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("rollout --json: %v\n%s", err, stdout.String())
	}
	want := map[string]string{"ab-1": "completed", "ab-2": "completed", "c-1": "completed", "c-2": "completed", "c-3": "skipped"}
	if len(rep.Nodes) != len(want) || rep.Halted {
		t.Fatalf("rollout summary %+v", rep)
	}
	for _, n := range rep.Nodes {
		if n.Result != want[n.NodeID] || n.To != "0.0.6" {
			t.Errorf("%s: %+v, want %s", n.NodeID, n, want[n.NodeID])
		}
		if wantFrom := map[bool]string{true: "0.0.6", false: "0.0.5"}[n.NodeID == "c-3"]; n.From != wantFrom {
			t.Errorf("%s: from %s, want %s", n.NodeID, n.From, wantFrom)
		}
	}
	// The rollout had both A/B hosts updating at once, never more than two
	// nodes; vDC still drained only one host at a time.
	var a, b rolloutRow
	for _, n := range rep.Nodes {
		switch n.NodeID {
		case "ab-1":
			a = n
		case "ab-2":
			b = n
		}
	}
	if !a.StartedAt.Before(b.FinishedAt) || !b.StartedAt.Before(a.FinishedAt) {
		t.Errorf("the A/B hosts did not update at the same time: %+v %+v", a, b)
	}
	if most := mostAtOnce(rep.Nodes); most > 2 {
		t.Errorf("%d nodes updated at once, --max-unavailable is 2", most)
	}
	waitFor(t, "both windows released", func() bool {
		x, _ := maint.last("ab-1")
		y, _ := maint.last("ab-2")
		return x.State == subjects.MaintenanceReleased && y.State == subjects.MaintenanceReleased
	})
	if most := maint.maxActive(); most != 1 {
		t.Errorf("%d hosts were in maintenance at once, serve --max-unavailable is 1", most)
	}
	for n := range abs {
		if got := strings.Join(maint.states(n), ","); got != "draining,ready,released" {
			t.Errorf("%s maintenance states %s", n, got)
		}
	}
	for n, h := range comps {
		if got := h.file(t, "opt/quantix/qx-node/bin/qx-node"); got != "qx-node 0.0.6\n" {
			t.Errorf("%s qx-node = %q", n, got)
		}
	}
	for n, h := range abs {
		if env := grubList(t, h.grubEnv); env["qx_slot"] != "b" || len(env) != 1 {
			t.Errorf("%s env %v", n, env)
		}
	}
}

// mostAtOnce is the most rows whose [start, finish] intervals overlap.
func mostAtOnce(rows []rolloutRow) int {
	most := 0
	for _, r := range rows {
		if r.StartedAt.IsZero() {
			continue
		}
		n := 0
		for _, o := range rows {
			if !o.StartedAt.IsZero() && !o.StartedAt.After(r.StartedAt) && o.FinishedAt.After(r.StartedAt) {
				n++
			}
		}
		most = max(most, n)
	}
	return most
}
