package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quantix-os/update-agent/subjects"
)

// The crash tests kill the agent where a crash hurts most: the test build of
// the agent (-tags failpoint, failpoint_on.go) sends itself SIGKILL at the
// n-th hit of a named engine failpoint (QX_FAILPOINT=name[:n]). For every
// point, of a two-component release and of an A/B release with an image,
// the test checks what the crash left (each component wholly old or wholly
// new, the active slot untouched), starts the normal agent on the same root
// and state, and checks that the journal converges and the update completes
// with nothing left over.

// crashCase is one crash.
type crashCase struct {
	point     string // QX_FAILPOINT: an engine failpoint, ":n" for its n-th hit
	full      bool   // the A/B release (image), else the component release
	unhealthy bool   // qx-node, installed last, fails its health check until the crash: reaches the rollback's points
	reboot    bool   // the crash takes the host down: the boot loader runs before the agent starts again
	again     string // a failpoint for the first start after the crash: a crash during recovery
	inApply   bool   // the agent dies answering the apply request
	lost      bool   // the crash comes before the apply is journaled: nothing resumes, a new apply installs
	partial   bool   // the crash comes mid-download: a .part is left and the restart resumes it
}

func (c crashCase) name() string {
	n := strings.ReplaceAll(c.point, ":", "#")
	if c.full {
		n = "ab/" + n
	}
	if c.reboot {
		n += "+reboot"
	}
	if c.again != "" {
		n += "+" + strings.ReplaceAll(c.again, ":", "#")
	}
	return n
}

// crashCases covers every durable step: check, download, extraction,
// backup, install, restart, health, rollback, finish; and for A/B the image
// download, maintenance, slot write, arming, the trial boot and the commit.
func crashCases() []crashCase {
	var cs []crashCase
	add := func(c crashCase) { cs = append(cs, c) }
	// Component release: qx-console, then qx-node.
	add(crashCase{point: "manifest-fetched", inApply: true, lost: true})
	add(crashCase{point: "serial-recorded", inApply: true, lost: true})
	add(crashCase{point: "accepted", inApply: true})
	// Progress hits: qx-console at 0 and at its end, then qx-node at 0, about 1 MiB, ...
	add(crashCase{point: "download-progress:4", partial: true})
	add(crashCase{point: "downloaded:1"})
	add(crashCase{point: "downloaded:2"})
	add(crashCase{point: "staging:1"})
	add(crashCase{point: "extracted:1"})
	add(crashCase{point: "staged:1"})
	add(crashCase{point: "extracted:2"})
	add(crashCase{point: "staged:2"})
	for _, n := range []string{"1", "2"} {
		for _, p := range []string{"swapping", "backed-up", "moved-in", "swapped", "restarted", "healthy", "component-done"} {
			add(crashCase{point: p + ":" + n})
		}
	}
	add(crashCase{point: "finishing"})
	add(crashCase{point: "finish-journaled"})
	add(crashCase{point: "versions-written"})
	add(crashCase{point: "cleaned-up"})
	add(crashCase{point: "rolling-back", unhealthy: true})
	add(crashCase{point: "restored:1", unhealthy: true})
	add(crashCase{point: "restored:2", unhealthy: true})
	add(crashCase{point: "swapped:2", again: "restored:1"})
	add(crashCase{point: "backed-up:2", again: "restored:2"})
	// Killed again at the first staging of the resumed operation: the
	// recovery has run and nothing is swapped yet, so the trees are whole.
	add(crashCase{point: "backed-up:1", again: "staging:1"})
	add(crashCase{point: "backed-up:2", again: "staging:1"})
	// A/B release.
	add(crashCase{point: "accepted", full: true, inApply: true})
	add(crashCase{point: "image-download-progress:2", full: true, partial: true}) // at about 1 MiB of 1.5
	for _, p := range []string{"image-downloaded", "maintenance-acquiring",
		"maintenance-acquired", "writing", "image-progress:1", "image-written", "grubenv-armed", "armed",
		"trial-booted", "trial-healthy", "committed", "finishing", "finish-journaled", "versions-written", "cleaned-up"} {
		add(crashCase{point: p, full: true})
	}
	for _, p := range []string{"writing", "image-progress:1", "grubenv-armed", "armed", "committed"} {
		add(crashCase{point: p, full: true, reboot: true})
	}
	return cs
}

// failpointPoints are the distinct engine failpoints the cases kill at.
func failpointPoints(cs []crashCase) []string {
	var names []string
	for _, c := range cs {
		for _, p := range []string{c.point, c.again} {
			if n, _, _ := strings.Cut(p, ":"); n != "" && !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	return names
}

var (
	failpointOnce sync.Once
	failpointErr  error
)

// buildFailpointAgent builds the agent with -tags failpoint into binDir
// (next to the binaries TestMain built), once, and returns its name there.
func buildFailpointAgent(t *testing.T) string {
	t.Helper()
	const name = "agent-failpoint"
	failpointOnce.Do(func() {
		out, err := exec.Command("go", "build", "-tags", "failpoint", "-o", filepath.Join(binDir, name), ".").CombinedOutput()
		if err != nil {
			failpointErr = fmt.Errorf("build the failpoint agent: %v\n%s", err, out)
		}
	})
	if failpointErr != nil {
		t.Fatal(failpointErr)
	}
	return name
}

// crashRelease is one release the crash cases install, and the trees to
// compare against.
type crashRelease struct {
	site  *site
	img   []byte            // raw system image; nil for the component release
	trees map[string]string // component → source dir of 0.0.6
}

// crashComponents are the components of every crash release, in manifest
// order (vdc-sim release sorts them by name), so the order they install in.
var crashComponents = []string{"qx-console", "qx-node"}

// releaseCrash publishes 0.0.6 on s: qx-node with 2.5 MiB of random data
// (several download progress steps) and a nested file, qx-console with a
// nested file, and the image img when not nil.
func releaseCrash(t *testing.T, s *site, img []byte) *crashRelease {
	t.Helper()
	const version = "0.0.6"
	r := &crashRelease{site: s, img: img, trees: map[string]string{}}
	args := []string{"release", "--repo", s.repo, "--key", s.key, "--channel", "dev", "--version", version, "--notes", "crash " + version}
	if img != nil {
		f := filepath.Join(s.dir, "src", version, "system.img")
		writeFile(t, f, string(img), 0o644)
		args = append(args, "--image", f)
	}
	for _, c := range crashComponents {
		src := filepath.Join(s.dir, "src", version, c)
		writeFile(t, filepath.Join(src, "bin", c), c+" "+version+"\n", 0o755)
		writeFile(t, filepath.Join(src, "VERSION"), version+"\n", 0o644)
		if c == "qx-node" {
			data := make([]byte, 5<<19)
			rnd := rand.New(rand.NewPCG(0, 6))
			for i := range data {
				data[i] = byte(rnd.Uint32())
			}
			writeFile(t, filepath.Join(src, "data.bin"), string(data), 0o644)
			writeFile(t, filepath.Join(src, "lib/qx/node.conf"), "listen = 0.0.0.0:8443\n", 0o644)
		} else {
			writeFile(t, filepath.Join(src, "share/ui/index.html"), "<h1>console "+version+"</h1>\n", 0o644)
		}
		r.trees[c] = src
		args = append(args, "--component", c+"="+src)
	}
	runCmd(t, "vdc-sim", args...)
	return r
}

// crashHost is an agent at 0.0.5 on a temp root, with health checks and
// an rc-service stand-in, and A/B slots when its release has an image.
type crashHost struct {
	*host
	rel         *crashRelease
	stateDir    string
	old         map[string]map[string]string // component → its 0.0.5 tree
	*abDisks                                 // A/B releases only
	healthMarks map[string]string            // component → file whose presence fails its health check
	node        string
}

// hostOpts change a crash host's configuration.
type hostOpts struct {
	serverURL string // the Update Server the agent asks; "": the release's site
	stateDir  string // paths.stateDir; "": the default under the root
}

func newCrashHost(t *testing.T, rel *crashRelease, node string, o hostOpts) *crashHost {
	t.Helper()
	lay := layHost(t)
	d := lay.dir
	h := &crashHost{host: lay, rel: rel, node: node,
		old: map[string]map[string]string{}, healthMarks: map[string]string{}}
	h.stateDir = filepath.Join(h.root, "var/lib/quantix/update")
	if o.stateDir != "" {
		h.stateDir = o.stateDir
	}
	if o.serverURL == "" {
		o.serverURL = rel.site.url
	}
	var comps strings.Builder
	for _, c := range crashComponents {
		dir := filepath.Join(h.root, "opt/quantix", c)
		writeFile(t, filepath.Join(dir, "etc/old-only.conf"), "dropped by 0.0.6\n", 0o644)
		h.old[c] = readTree(t, dir)
		h.healthMarks[c] = filepath.Join(d, "unhealthy-"+c)
		fmt.Fprintf(&comps, "  %s: { dir: opt/quantix/%s, service: %s, health: [\"/bin/sh\", \"-c\", %q], healthTimeout: 1s }\n",
			c, c, c, "test ! -e "+h.healthMarks[c])
	}
	natsURL, ab := "", ""
	if rel.img != nil {
		natsURL = rel.site.nats
		h.abDisks = layABDisks(t, d)
		ab = fmt.Sprintf(`ab:
  slots: { a: %q, b: %q }
  grubEnv: %q
  cmdline: %q
  rebootCommand: [%q]
  maintenanceTimeout: 30s
  healthCommand: ["/bin/sh", "-c", "test -f %s"]
`, h.slotA, h.slotB, h.grubEnv, h.cmdline, h.rebootCmd, filepath.Join(h.root, "etc/quantix/versions.json"))
	}
	h.cfg = filepath.Join(d, "agent.yaml")
	writeFile(t, h.cfg, fmt.Sprintf(`nodeId: %s
nats: { url: %q }
updates: { serverUrl: %q, channel: dev, publicKeys: [%q], retries: 2 }
paths: { root: %q, stateDir: %q }
components:
%sservices: { rcService: %q }
http: { listen: "127.0.0.1:0", tokenFile: %q }
log: { format: json, level: debug }
%s`, node, natsURL, o.serverURL, rel.site.pub, h.root, h.stateDir, comps.String(), filepath.Join(d, "rc-service"), filepath.Join(d, "token"), ab), 0o644)
	return h
}

// startFailpoint starts the failpoint agent killing itself at point. With
// waitHTTP it waits for the REST facade; a point hit during start-up (the
// recovery) kills the agent before it listens.
func (h *crashHost) startFailpoint(t *testing.T, bin, point string, waitHTTP bool) {
	t.Helper()
	p := &proc{cmd: exec.Command(filepath.Join(binDir, bin), "--config", h.cfg), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "QX_FAILPOINT="+point)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("failpoint agent (%s) output:\n%s", point, p.output())
		}
	})
	h.agent = p
	h.url = "" // the old agent's port may be another's by now
	p.find(t, `"msg":"(failpoint armed)"`)
	if waitHTTP {
		h.url = p.find(t, `"msg":"http listening".*?"url":"(http://[^"]+)"`)
		// REST answers before the engine takes commands; an agent that
		// resumes an operation may die at its point before it says so.
		waitFor(t, "the failpoint agent started (or killed)", func() bool {
			select {
			case <-p.done:
				return true
			default:
				return strings.Contains(p.output(), `"msg":"agent started"`)
			}
		})
	}
}

// startAgent starts the normal agent and waits until it takes commands.
func (h *crashHost) startAgent(t *testing.T) {
	t.Helper()
	h.start(t)
	h.agent.find(t, `"msg":"(agent started)"`)
}

// crashClient bounds a request to an agent that may be dying (a killed
// process's sockets close at once); generous, for a loaded machine.
var crashClient = &http.Client{Timeout: 20 * time.Second}

// tryStatus is the agent's status, or an error when it does not answer.
func (h *crashHost) tryStatus() (string, error) {
	if h.url == "" {
		return "", errors.New("not listening")
	}
	resp, err := crashClient.Get(h.url + "/api/v1/updates/status")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var st struct {
		Status string `json:"status"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return "", err
	}
	return st.Status, nil
}

// apply asks for the update over REST; the agent may die answering.
func (h *crashHost) apply() (int, error) {
	req, _ := http.NewRequest("POST", h.url+"/api/v1/updates/apply", strings.NewReader(`{"forceReboot": true}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+h.token)
	resp, err := crashClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// waitKilled waits until the failpoint agent killed itself at point. When
// the update reaches the reboot first, it plays the machine: it stops the
// agent, boots and starts the failpoint agent again, for the points after
// the reboot.
func (h *crashHost) waitKilled(t *testing.T, bin, point string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-h.agent.done:
			ws, _ := h.agent.cmd.ProcessState.Sys().(syscall.WaitStatus)
			if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("the agent ended (%v) without being killed at %s:\n%s", h.agent.cmd.ProcessState, point, h.agent.output())
			}
			if !strings.Contains(h.agent.output(), `"msg":"failpoint hit: killing the agent"`) {
				t.Fatalf("the agent was killed, but not by its failpoint %s", point)
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("failpoint %s was not hit within 60s", point)
		}
		st, err := h.tryStatus()
		if err != nil {
			continue // dying, or not listening yet
		}
		switch st {
		case "reboot_required":
			if h.rel.img == nil {
				t.Fatalf("status reboot_required for a component update")
			}
			if h.trialArmed(t) {
				h.reboot(t, func() { h.startFailpoint(t, bin, point, true) })
			}
		case "complete", "error":
			t.Fatalf("the update ended (%s) without hitting failpoint %s", st, point)
		}
	}
}

// trialArmed reports whether the boot loader would try a slot: only then is
// a reboot what the agent waits for. Just after the trial boot the agent
// shows reboot_required from its journal until it has decided the trial.
func (h *crashHost) trialArmed(t *testing.T) bool {
	t.Helper()
	env := grubList(t, h.grubEnv)
	n, _ := strconv.Atoi(env["qx_tries"])
	return env["qx_try_slot"] != "" && n > 0
}

// reboot plays the machine restarting cleanly: the agent stops, the boot
// loader (vdc-sim boot) picks the slot, and start starts an agent again.
func (h *crashHost) reboot(t *testing.T, start func()) {
	t.Helper()
	h.agent.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.agent.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("agent %s did not stop", h.node)
	}
	h.boot(t)
	start()
}

// boot runs the boot loader: the slot the boot rule picks goes into the
// kernel command line.
func (h *crashHost) boot(t *testing.T) string {
	t.Helper()
	return strings.TrimSpace(runCmd(t, "vdc-sim", "boot", "--grubenv", h.grubEnv, "--cmdline", h.cmdline))
}

// checkWhole checks what a crash may leave: every component wholly old or
// wholly new (a component release) or untouched (an A/B release), and the
// slot the host runs from byte for byte as it was. The swap exchanges the
// trees in one rename, so there is no moment without an install dir.
func (h *crashHost) checkWhole(t *testing.T, when string) {
	t.Helper()
	for _, c := range crashComponents {
		dir := filepath.Join(h.root, "opt/quantix", c)
		got := readTree(t, dir)
		isOld, isNew := sameTrees(got, h.old[c]), sameTrees(got, readTree(t, h.rel.trees[c]))
		switch {
		case isOld:
		case isNew && h.rel.img == nil:
		default:
			t.Errorf("%s: %s is neither its old nor its new tree:\n%s", when, c, treeDiff(got, h.old[c], readTree(t, h.rel.trees[c])))
		}
	}
	if h.rel.img != nil {
		if !bytes.Equal(mustReadFile(t, h.slotA), h.slotAWas) {
			t.Errorf("%s: the active slot a was written", when)
		}
		env := grubList(t, h.grubEnv)
		if s := env["qx_slot"]; s != "a" && s != "b" {
			t.Errorf("%s: qx_slot = %q", when, s)
		}
		if env["qx_slot"] == "b" && !bytes.Equal(mustReadFile(t, h.slotB), h.rel.img) {
			t.Errorf("%s: slot b committed but it is not the image", when)
		}
	}
}

// partials are the partial downloads in the state dir.
func (h *crashHost) partials() []string {
	var parts []string
	filepath.WalkDir(filepath.Join(h.stateDir, "downloads"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".part") {
			parts = append(parts, p)
		}
		return nil
	})
	return parts
}

// converge starts the normal agent and drives the update to its end: an
// operation left in the journal resumes (through the reboot for A/B); a
// lost one is applied again.
func (h *crashHost) converge(t *testing.T, tc crashCase) {
	t.Helper()
	h.startAgent(t)
	if tc.partial {
		h.agent.find(t, `"msg":"(fetch: resuming)"`)
	}
	applied := false
	deadline := time.Now().Add(60 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("the update did not converge within 60s")
		}
		st := h.waitStatus(t, "idle", "complete", "reboot_required", "error")
		switch st["status"] {
		case "reboot_required":
			if h.trialArmed(t) {
				h.reboot(t, func() { h.startAgent(t) })
			} else {
				time.Sleep(50 * time.Millisecond)
			}
			continue
		case "error":
			t.Fatalf("after the restart: %v", st)
		case "complete":
			return
		}
		// idle: no operation in the journal.
		if cur := h.current(t); cur == "0.0.6" {
			if tc.lost {
				t.Fatalf("the crash at %s was to lose the apply, yet 0.0.6 is installed", tc.point)
			}
			return // finished before the crash
		}
		if !tc.lost || applied {
			t.Fatalf("after the restart: idle at %s, the operation is lost", h.current(t))
		}
		applied = true
		if code, err := h.apply(); err != nil || code != 202 {
			t.Fatalf("apply again: %d %v", code, err)
		}
		h.waitStatus(t, "downloading", "applying", "reboot_required", "complete", "error")
	}
}

func (h *crashHost) current(t *testing.T) string {
	t.Helper()
	_, cur := h.do(t, "GET", "/api/v1/updates/current", "", nil)
	v, _ := cur["currentVersion"].(string)
	return v
}

// checkDone checks the end state: 0.0.6 installed and published, the trees
// (or slots) right, the journal empty of operations and nothing left over.
func (h *crashHost) checkDone(t *testing.T, maint *maintLog) {
	t.Helper()
	if v := h.current(t); v != "0.0.6" {
		t.Errorf("current version %s, want 0.0.6", v)
	}
	for _, c := range crashComponents {
		got := readTree(t, filepath.Join(h.root, "opt/quantix", c))
		want, what := readTree(t, h.rel.trees[c]), "new"
		if h.rel.img != nil {
			want, what = h.old[c], "old (the image carries the new one)"
		}
		if !sameTrees(got, want) {
			t.Errorf("%s is not wholly %s:\n%s", c, what, treeDiff(got, h.old[c], readTree(t, h.rel.trees[c])))
		}
	}
	if v := h.file(t, "etc/quantix/versions.json"); !strings.Contains(v, `"os": "0.0.6"`) {
		t.Errorf("versions.json = %s", v)
	}
	var j struct {
		Op *json.RawMessage `json:"op"`
	}
	if err := json.Unmarshal(mustReadFile(t, filepath.Join(h.stateDir, "journal.json")), &j); err != nil || j.Op != nil {
		t.Errorf("journal: op %s, err %v; want no operation", ptrString(j.Op), err)
	}
	_, hist := h.do(t, "GET", "/api/v1/updates/history", "", nil)
	if es, _ := hist["history"].([]any); len(es) == 0 || es[0].(map[string]any)["result"] != "completed" {
		t.Errorf("history %v; want the newest entry completed", hist)
	}
	// Leftovers: staging and backup trees, downloads, partial files. (The
	// journal's temp file comes and goes with every update of it, and a
	// stale one is removed at start.)
	left, _ := filepath.Glob(filepath.Join(h.root, "opt/quantix/.*"))
	filepath.WalkDir(h.stateDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), "journal.json") {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("left over: %v", left)
	}
	if h.rel.img == nil {
		// The services run the new code: the last restarts are the final install's.
		rc := strings.Split(strings.TrimSpace(string(mustReadFile(t, h.rcLog))), "\n")
		if n := len(rc); n < 2 || rc[n-2] != crashComponents[0]+" restart" || rc[n-1] != crashComponents[1]+" restart" {
			t.Errorf("rc-service calls %q; want the last two to restart %s", rc, strings.Join(crashComponents, ", then "))
		}
		return
	}
	if !bytes.Equal(mustReadFile(t, h.slotA), h.slotAWas) {
		t.Errorf("slot a (the fallback) was written")
	}
	if !bytes.Equal(mustReadFile(t, h.slotB), h.rel.img) {
		t.Errorf("slot b is not the image")
	}
	if env := grubList(t, h.grubEnv); env["qx_slot"] != "b" || len(env) != 1 {
		t.Errorf("grubenv %v; want only qx_slot=b", env)
	}
	waitFor(t, "the maintenance window released", func() bool {
		ev, _ := maint.last(h.node)
		return ev.State == subjects.MaintenanceReleased && ev.Reason == "completed"
	})
}

func ptrString(m *json.RawMessage) string {
	if m == nil {
		return "null"
	}
	return string(*m)
}

// readTree maps every entry under dir to its kind, mode and content hash;
// a missing dir is an empty tree.
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	tree := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == dir {
				return fs.SkipAll
			}
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			tree[rel] = "dir"
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			tree[rel] = "link " + target
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			tree[rel] = fmt.Sprintf("file %v %s", info.Mode().Perm(), hex.EncodeToString(sum[:8]))
		default:
			tree[rel] = "other " + info.Mode().String()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read tree %s: %v", dir, err)
	}
	return tree
}

func sameTrees(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// treeDiff lists the entries of got that differ from old and from new.
func treeDiff(got, old, new map[string]string) string {
	var b strings.Builder
	keys := map[string]bool{}
	for _, m := range []map[string]string{got, old, new} {
		for k := range m {
			keys[k] = true
		}
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	slices.Sort(sorted)
	for _, k := range sorted {
		if got[k] != old[k] || got[k] != new[k] {
			fmt.Fprintf(&b, "  %s: got %q, old %q, new %q\n", k, got[k], old[k], new[k])
		}
	}
	return b.String()
}

// runCrash is one case: crash, check, restart, converge, check.
func runCrash(t *testing.T, bin string, tc crashCase, rel *crashRelease, maint *maintLog, node string) {
	h := newCrashHost(t, rel, node, hostOpts{})
	if tc.unhealthy {
		writeFile(t, h.healthMarks["qx-node"], "", 0o644)
	}
	h.startFailpoint(t, bin, tc.point, true)
	code, err := h.apply()
	switch {
	case tc.inApply && err == nil:
		t.Fatalf("apply answered %d: the agent was to die at %s while accepting it", code, tc.point)
	case !tc.inApply && (err != nil || code != 202):
		t.Fatalf("apply: %d %v", code, err)
	}
	h.waitKilled(t, bin, tc.point)
	h.checkWhole(t, "after the crash")
	if tc.partial && len(h.partials()) == 0 {
		t.Errorf("no partial download left by a crash mid-download")
	}
	if tc.reboot {
		slot := h.boot(t)
		t.Logf("the crash rebooted the host into slot %s", slot)
	}
	os.Remove(h.healthMarks["qx-node"])
	if tc.again != "" {
		h.startFailpoint(t, bin, tc.again, false)
		h.waitKilled(t, bin, tc.again)
		h.checkWhole(t, "after the crash during recovery")
	}
	h.converge(t, tc)
	h.checkDone(t, maint)
}

// crashWorkers is how many cases run at once: they mostly wait on
// processes and disks, so more than the cores.
func crashWorkers() int {
	if n, err := strconv.Atoi(os.Getenv("QX_CRASH_WORKERS")); err == nil && n > 0 {
		return n
	}
	return 6
}

// TestCrash kills the agent at every crash point (QX_SOAK=1: five times each)
// and proves the host stays whole and the update converges after a restart.
func TestCrash(t *testing.T) {
	bin := buildFailpointAgent(t)
	comp := releaseCrash(t, newSite(t), nil)
	abSite := newSite(t, "--vms-per-node", "1", "--drain-interval", "50ms", "--max-unavailable", "64")
	ab := releaseCrash(t, abSite, testImage(3<<20))
	maint := watchMaintenance(t, natsClient(t, abSite.nats))

	cases := crashCases()
	points := failpointPoints(cases)
	if len(points) < 30 {
		t.Errorf("%d distinct crash points, want at least 30: %v", len(points), points)
	}
	reps := 1
	if os.Getenv("QX_SOAK") == "1" {
		reps = 5
	}
	type job struct {
		tc   crashCase
		name string
		node string
	}
	jobs := make(chan job)
	var tried, converged atomic.Int32
	var wg sync.WaitGroup
	for range crashWorkers() {
		wg.Go(func() {
			for j := range jobs {
				rel := comp
				if j.tc.full {
					rel = ab
				}
				ran := false
				ok := t.Run(j.name, func(t *testing.T) {
					ran = true
					runCrash(t, bin, j.tc, rel, maint, j.node)
				})
				if ran { // -run may filter it out
					tried.Add(1)
					if ok {
						converged.Add(1)
					}
				}
			}
		})
	}
	start := time.Now()
	for r := range reps {
		for i, tc := range cases {
			name := tc.name()
			if reps > 1 {
				name += fmt.Sprintf("/run%d", r+1)
			}
			jobs <- job{tc: tc, name: name, node: fmt.Sprintf("crash-%d-%d", r, i)}
		}
	}
	close(jobs)
	wg.Wait()
	t.Logf("crash suite: %d distinct failpoints, %d cases tried, %d converged, in %s",
		len(points), tried.Load(), converged.Load(), time.Since(start).Round(time.Second))
	if converged.Load() != tried.Load() {
		t.Errorf("%d of %d crash cases did not converge", tried.Load()-converged.Load(), tried.Load())
	}
}

// TestFailpointBuild: the failpoints exist only in the test build. The
// failpoint agent refuses a malformed QX_FAILPOINT; the agent built as in
// production ignores QX_FAILPOINT and updates.
func TestFailpointBuild(t *testing.T) {
	bin := buildFailpointAgent(t)
	rel := releaseCrash(t, newSite(t), nil)
	h := newCrashHost(t, rel, "failpoint-build", hostOpts{})
	for _, spec := range []string{"swapped:0", "swapped:x", ":2"} {
		cmd := exec.Command(filepath.Join(binDir, bin), "--config", h.cfg)
		cmd.Env = append(os.Environ(), "QX_FAILPOINT="+spec)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "QX_FAILPOINT") {
			t.Errorf("QX_FAILPOINT=%s: %v, want exit status 2 naming QX_FAILPOINT:\n%s", spec, err, out)
		}
	}

	t.Setenv("QX_FAILPOINT", "accepted")
	h.startAgent(t)
	if code, err := h.apply(); err != nil || code != 202 {
		t.Fatalf("apply: %d %v", code, err)
	}
	if st := h.waitStatus(t, "complete", "error"); st["status"] != "complete" {
		t.Fatalf("status %v", st)
	}
	if out := h.agent.output(); strings.Contains(out, `"msg":"failpoint`) {
		t.Errorf("the production build armed a failpoint:\n%s", out)
	}
}
