package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/quantix-os/update-agent/internal/qxtest"
)

// The integration tests build the real binaries once and drive them as an
// operator would: vdc-sim keygen, release and serve, then an agent on a temp root.

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qx-bin")
	if err != nil {
		panic(err)
	}
	for _, c := range []string{"agent", "vdc-sim"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, c), "../"+c).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", c, err, out)
			os.Exit(1)
		}
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running binary whose output is kept and searchable.
type proc struct {
	cmd  *exec.Cmd
	out  qxtest.SyncBuffer // what it wrote to stdout and stderr
	done chan struct{}
}

func (p *proc) output() string { return p.out.String() }

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(filepath.Join(binDir, name), args...), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.output())
		}
	})
	return p
}

// find waits until re matches the process output and returns its first group.
func (p *proc) find(t *testing.T, re string) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	var m []string
	waitFor(t, "output matching "+re, func() bool {
		m = rx.FindStringSubmatch(p.output())
		return m != nil
	})
	return m[1]
}

func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(binDir, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// waitFor polls cond for up to 60s: these tests wait on real agent and
// vdc-sim processes, often several at once.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	qxtest.WaitFor(t, 60*time.Second, what, cond)
}

func writeFile(t testing.TB, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// site is a release repository served by vdc-sim.
type site struct {
	dir, repo, key, pub, url, nats string
	serve                          *proc
}

func newSite(t *testing.T, extraServeArgs ...string) *site {
	t.Helper()
	s := &site{dir: t.TempDir()}
	s.repo = filepath.Join(s.dir, "repo")
	runCmd(t, "vdc-sim", "keygen", "--out", filepath.Join(s.dir, "keys"))
	s.key = filepath.Join(s.dir, "keys", "update.key")
	b, err := os.ReadFile(filepath.Join(s.dir, "keys", "update.pub"))
	if err != nil {
		t.Fatal(err)
	}
	s.pub = strings.TrimSpace(string(b))
	if err := os.MkdirAll(s.repo, 0o755); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"serve", "--repo", s.repo, "--http", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--store", filepath.Join(s.dir, "nats")}, extraServeArgs...)
	s.serve = start(t, "vdc-sim", args...)
	s.url = s.serve.find(t, `update server listening on (http://127\.0\.0\.1:\d+)`)
	if !strings.Contains(strings.Join(extraServeArgs, " "), "--nats-url") {
		s.nats = s.serve.find(t, `nats listening on (nats://127\.0\.0\.1:\d+)`)
	}
	return s
}

func (s *site) release(t *testing.T, version string) {
	t.Helper()
	args := []string{"release", "--repo", s.repo, "--key", s.key, "--channel", "dev", "--version", version, "--notes", "release " + version}
	for _, c := range []string{"qx-node", "qx-console"} {
		src := filepath.Join(s.dir, "src", version, c)
		writeFile(t, filepath.Join(src, "bin", c), c+" "+version+"\n", 0o755)
		writeFile(t, filepath.Join(src, "VERSION"), version+"\n", 0o644)
		args = append(args, "--component", c+"="+src)
	}
	runCmd(t, "vdc-sim", args...)
}

// host is a node agent on a temp root at 0.0.5.
type host struct {
	dir, root, rcLog, cfg, token, url string
	agent                             *proc
}

func newHost(t *testing.T, s *site, node, natsURL string) *host {
	t.Helper()
	return newHostWith(t, s, node, fmt.Sprintf("{ url: %q }", natsURL))
}

// newHostWith is newHost with the agent config's whole nats: value as YAML
// (for users, passwords and server lists).
func newHostWith(t *testing.T, s *site, node, natsYAML string) *host {
	t.Helper()
	h := layHost(t)
	h.cfg = filepath.Join(h.dir, "agent.yaml")
	writeFile(t, h.cfg, fmt.Sprintf(`nodeId: %s
nats: %s
updates: { serverUrl: %q, channel: dev, publicKeys: [%q] }
paths: { root: %q }
components:
  qx-node: { dir: opt/quantix/qx-node, service: qx-node }
  qx-console: { dir: opt/quantix/qx-console, service: qx-console }
services: { rcService: %q }
http: { listen: "127.0.0.1:0", tokenFile: %q }
log: { format: json, level: debug }
`, node, natsYAML, s.url, s.pub, h.root, filepath.Join(h.dir, "rc-service"), filepath.Join(h.dir, "token")), 0o644)
	h.start(t)
	return h
}

// layHost lays out a host in a temp dir, without its config: a root at
// 0.0.5 (versions.json, qx-node and qx-console), an rc-service stand-in that
// logs its calls to rcLog, and the API token file.
func layHost(t *testing.T) *host {
	t.Helper()
	h := &host{dir: t.TempDir(), token: "s3cret-token"}
	h.root = filepath.Join(h.dir, "root")
	writeFile(t, filepath.Join(h.root, "etc/quantix/versions.json"), `{"os":"0.0.5","components":{"qx-node":"0.0.5","qx-console":"0.0.5"}}`, 0o644)
	for _, c := range []string{"qx-node", "qx-console"} {
		writeFile(t, filepath.Join(h.root, "opt/quantix", c, "bin", c), c+" 0.0.5\n", 0o755)
		writeFile(t, filepath.Join(h.root, "opt/quantix", c, "VERSION"), "0.0.5\n", 0o644)
	}
	h.rcLog = filepath.Join(h.dir, "rc.log")
	writeFile(t, filepath.Join(h.dir, "rc-service"), "#!/bin/sh\necho \"$*\" >>"+h.rcLog+"\n", 0o755)
	writeFile(t, filepath.Join(h.dir, "token"), h.token+"\n", 0o600)
	return h
}

func (h *host) start(t *testing.T) {
	h.agent = start(t, "agent", "--config", h.cfg)
	h.url = h.agent.find(t, `"msg":"http listening".*?"url":"(http://[^"]+)"`)
}

func (h *host) do(t *testing.T, method, path, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, h.url+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func (h *host) status(t *testing.T) map[string]any {
	_, st := h.do(t, "GET", "/api/v1/updates/status", "", nil)
	return st
}

func (h *host) waitStatus(t *testing.T, want ...string) map[string]any {
	t.Helper()
	var st map[string]any
	waitFor(t, "status "+strings.Join(want, "|"), func() bool {
		st = h.status(t)
		for _, w := range want {
			if st["status"] == w {
				return true
			}
		}
		return false
	})
	return st
}

func (h *host) file(t *testing.T, rel string) string {
	b, err := os.ReadFile(filepath.Join(h.root, rel))
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

// TestComponentUpdateOverREST is the first capability tried as a new user would.
func TestComponentUpdateOverREST(t *testing.T) {
	s := newSite(t)
	s.release(t, "0.0.6")
	h := newHost(t, s, "node-a", "")

	code, check := h.do(t, "GET", "/api/v1/updates/check", "", nil)
	if code != 200 || check["available"] != true || check["latestVersion"] != "0.0.6" || check["currentVersion"] != "0.0.5" {
		t.Fatalf("check = %d %v", code, check)
	}
	comps, _ := check["components"].([]any)
	if len(comps) != 2 || check["totalDownloadSize"].(float64) <= 0 {
		t.Fatalf("components %v, size %v", comps, check["totalDownloadSize"])
	}
	for _, c := range comps {
		if c.(map[string]any)["sizeBytes"].(float64) <= 0 {
			t.Errorf("component without size: %v", c)
		}
	}

	if code, _ := h.do(t, "POST", "/api/v1/updates/apply", "", nil); code != 401 {
		t.Fatalf("apply without token = %d, want 401", code)
	}
	if code, _ := h.do(t, "POST", "/api/v1/updates/apply", "wrong", nil); code != 401 {
		t.Fatalf("apply with a wrong token = %d, want 401", code)
	}
	code, ack := h.do(t, "POST", "/api/v1/updates/apply", h.token, nil)
	if code != 202 || ack["status"] != "started" {
		t.Fatalf("apply = %d %v", code, ack)
	}
	st := h.waitStatus(t, "complete", "error")
	if st["status"] != "complete" {
		t.Fatalf("status %v", st)
	}
	for _, c := range []string{"qx-node", "qx-console"} {
		if got := h.file(t, "opt/quantix/"+c+"/bin/"+c); got != c+" 0.0.6\n" {
			t.Errorf("%s = %q", c, got)
		}
	}
	rc, _ := os.ReadFile(h.rcLog)
	if !strings.Contains(string(rc), "qx-node restart") || !strings.Contains(string(rc), "qx-console restart") {
		t.Errorf("rc-service calls: %q", rc)
	}
	_, cur := h.do(t, "GET", "/api/v1/updates/current", "", nil)
	if cur["osVersion"] != "0.0.6" || cur["qxNode"] != "0.0.6" || cur["qxConsole"] != "0.0.6" {
		t.Errorf("current = %v", cur)
	}
	_, hist := h.do(t, "GET", "/api/v1/updates/history", "", nil)
	entries, _ := hist["history"].([]any)
	if len(entries) != 1 || entries[0].(map[string]any)["result"] != "completed" {
		t.Errorf("history = %v", hist)
	}
	if v := h.file(t, "etc/quantix/versions.json"); !strings.Contains(v, `"os": "0.0.6"`) {
		t.Errorf("versions.json = %s", v)
	}

	// A release whose artifact was altered after signing ends in error, old files intact.
	s.release(t, "0.0.7")
	art, _ := filepath.Glob(filepath.Join(s.repo, "releases/0.0.7/qx-console-0.0.7.tar.zst"))
	if len(art) != 1 {
		t.Fatalf("artifact not found in %s", s.repo)
	}
	b, _ := os.ReadFile(art[0])
	b[len(b)/2] ^= 0x55
	os.WriteFile(art[0], b, 0o644)
	code, _ = h.do(t, "POST", "/api/v1/updates/apply", h.token, map[string]any{"version": "0.0.7"})
	if code != 202 {
		t.Fatalf("apply 0.0.7 = %d", code)
	}
	st = h.waitStatus(t, "complete", "error")
	if st["status"] != "error" || !strings.Contains(fmt.Sprint(st["message"]), "sha256") {
		t.Fatalf("status after altered artifact: %v", st)
	}
	for _, c := range []string{"qx-node", "qx-console"} {
		if got := h.file(t, "opt/quantix/"+c+"/bin/"+c); got != c+" 0.0.6\n" {
			t.Errorf("%s = %q after a refused update", c, got)
		}
	}
	_, hist = h.do(t, "GET", "/api/v1/updates/history", "", nil)
	entries, _ = hist["history"].([]any)
	if len(entries) != 2 || entries[0].(map[string]any)["result"] != "failed" || !strings.Contains(fmt.Sprint(entries[0]), "checksum") {
		t.Errorf("history after the failure = %v", entries)
	}

	// The agent restarted keeps its state.
	h.agent.cmd.Process.Signal(os.Interrupt)
	<-h.agent.done
	h.start(t)
	_, cur = h.do(t, "GET", "/api/v1/updates/current", "", nil)
	if cur["currentVersion"] != "0.0.6" {
		t.Errorf("after restart current = %v", cur)
	}
}

// TestBadConfigRefused: the agent refuses to start with a clear error naming the key.
func TestBadConfigRefused(t *testing.T) {
	tests := []struct{ yaml, want string }{
		{"nodeId: a\nupdates: { serverUrl: \"http://127.0.0.1:1\", publicKeys: [\"AAAA\"] }\nbogus: 1\n", "bogus"},
		{"nodeId: bad.node\nupdates: { serverUrl: \"http://127.0.0.1:1\", publicKeys: [\"AAAA\"] }\n", "nodeId"},
		{"nodeId: a\nupdates: { serverUrl: \"http://127.0.0.1:1\", publicKeys: [\"AAAA\"] }\n", "publicKeys"},
		{"nodeId: a\nupdates: { serverUrl: \"http://127.0.0.1:1\", publicKeys: [\"AAAA\"], checkInterval: soon }\n", "checkInterval"},
	}
	for _, tt := range tests {
		cfg := filepath.Join(t.TempDir(), "agent.yaml")
		writeFile(t, cfg, tt.yaml, 0o644)
		out, err := exec.Command(filepath.Join(binDir, "agent"), "--config", cfg).CombinedOutput()
		if err == nil {
			t.Fatalf("agent started with a bad config:\n%s", out)
		}
		if !strings.Contains(string(out), tt.want) {
			t.Errorf("error output does not name %q:\n%s", tt.want, out)
		}
	}
}

func TestVersionCommand(t *testing.T) {
	out := runCmd(t, "agent", "version")
	if !strings.HasPrefix(out, "agent ") {
		t.Fatalf("agent version = %q", out)
	}
}

func httpPost(url, body string) (int, error) {
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
