package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The fault tests break what the agent depends on while it updates: the
// Update Server stops mid-download, answers 500, or serves another file under
// the artifact's name, and the state dir's disk fills up. Each ends in a
// clear error with the installed files intact, and the agent recovers once
// the fault is gone. (The NATS server restarting and a cluster node dying
// are in reliability_test.go.)

// faultServer stands between the agent and the Update Server. It passes
// requests on, except that artifact downloads can be slowed or answered by a
// fault; it can stop and start again on the same address.
type faultServer struct {
	t        *testing.T
	proxy    *httputil.ReverseProxy
	addr     string
	throttle atomic.Bool // artifact bodies trickle: 32 KiB every 10ms

	mu    sync.Mutex
	srv   *http.Server
	fault func(w http.ResponseWriter, file string, hit int) bool // answers the request itself when it returns true
	hits  map[string]int                                         // artifact requests by file name
}

func newFaultServer(t *testing.T, target string) *faultServer {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	f := &faultServer{t: t, proxy: httputil.NewSingleHostReverseProxy(u), addr: "127.0.0.1:0", hits: map[string]int{}}
	f.proxy.ErrorLog = log.New(io.Discard, "", 0) // bodies cut by stop are expected
	f.start()
	t.Cleanup(f.stop)
	return f
}

func (f *faultServer) url() string { return "http://" + f.addr }

// start listens on the server's address (a fresh port the first time).
func (f *faultServer) start() {
	f.t.Helper()
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		f.t.Fatalf("fault server listen %s: %v", f.addr, err)
	}
	srv := &http.Server{Handler: f, ErrorLog: log.New(io.Discard, "", 0)}
	f.mu.Lock()
	f.addr, f.srv = ln.Addr().String(), srv
	f.mu.Unlock()
	go srv.Serve(ln)
}

// stop closes the listener and every connection, mid-body or not.
func (f *faultServer) stop() {
	f.mu.Lock()
	srv := f.srv
	f.srv = nil
	f.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

func (f *faultServer) setFault(fn func(w http.ResponseWriter, file string, hit int) bool) {
	f.mu.Lock()
	f.fault = fn
	f.mu.Unlock()
}

func (f *faultServer) hitsOf(file string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits[file]
}

func (f *faultServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.Contains(r.URL.Path, "/releases/") {
		file := path.Base(r.URL.Path)
		f.mu.Lock()
		f.hits[file]++
		hit, fault := f.hits[file], f.fault
		f.mu.Unlock()
		if fault != nil && fault(w, file, hit) {
			return
		}
		if f.throttle.Load() {
			w = slowWriter{w}
		}
	}
	f.proxy.ServeHTTP(w, r)
}

// slowWriter trickles a body out: 32 KiB, flush, 10ms pause.
type slowWriter struct{ http.ResponseWriter }

func (w slowWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := min(len(b), 32<<10)
		m, err := w.ResponseWriter.Write(b[:k])
		n += m
		if err != nil {
			return n, err
		}
		w.Flush()
		b = b[k:]
		time.Sleep(10 * time.Millisecond)
	}
	return n, nil
}

func (w slowWriter) Flush() {
	if fl, ok := w.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
}

// checkUntouched asserts a failed update left 0.0.5 installed and whole,
// and took back what it had staged and downloaded.
func (h *crashHost) checkUntouched(t *testing.T) {
	t.Helper()
	for _, c := range crashComponents {
		if got := readTree(t, filepath.Join(h.root, "opt/quantix", c)); !sameTrees(got, h.old[c]) {
			t.Errorf("%s changed:\n%s", c, treeDiff(got, h.old[c], readTree(t, h.rel.trees[c])))
		}
	}
	if v := h.current(t); v != "0.0.5" {
		t.Errorf("current version %s, want 0.0.5", v)
	}
	if v := h.file(t, "etc/quantix/versions.json"); !strings.Contains(v, `"os":"0.0.5"`) && !strings.Contains(v, `"os": "0.0.5"`) {
		t.Errorf("versions.json = %s", v)
	}
	if left, _ := filepath.Glob(filepath.Join(h.root, "opt/quantix/.*")); len(left) > 0 {
		t.Errorf("left over: %v", left)
	}
	if _, err := os.Stat(filepath.Join(h.stateDir, "downloads", "0.0.6")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("downloads of the failed update kept: %v", err)
	}
	_, hist := h.do(t, "GET", "/api/v1/updates/history", "", nil)
	if es, _ := hist["history"].([]any); len(es) == 0 || es[0].(map[string]any)["result"] != "failed" {
		t.Errorf("history %v; want the newest entry failed", hist)
	}
}

// checkInstalled asserts 0.0.6 is installed, whole.
func (h *crashHost) checkInstalled(t *testing.T) {
	t.Helper()
	for _, c := range crashComponents {
		if got, want := readTree(t, filepath.Join(h.root, "opt/quantix", c)), readTree(t, h.rel.trees[c]); !sameTrees(got, want) {
			t.Errorf("%s is not wholly new:\n%s", c, treeDiff(got, h.old[c], want))
		}
	}
	if v := h.current(t); v != "0.0.6" {
		t.Errorf("current version %s, want 0.0.6", v)
	}
}

// applyAndWait applies 0.0.6 over REST and returns the status it ends in.
func (h *crashHost) applyAndWait(t *testing.T) map[string]any {
	t.Helper()
	if code, err := h.apply(); err != nil || code != 202 {
		t.Fatalf("apply: %d %v", code, err)
	}
	return h.waitStatus(t, "complete", "error")
}

func wantMessage(t *testing.T, st map[string]any, status string, parts ...string) {
	t.Helper()
	msg := fmt.Sprint(st["message"])
	t.Logf("status %v: %s", st["status"], msg)
	if st["status"] != status {
		t.Fatalf("status %v (%s), want %s", st["status"], msg, status)
	}
	for _, p := range parts {
		if !strings.Contains(msg, p) {
			t.Errorf("message %q does not say %q", msg, p)
		}
	}
}

// TestFaultServerStopsMidDownload: the Update Server goes away in the middle
// of a download. The agent retries, gives up with an error naming the
// refused connection, and keeps 0.0.5; once the server is back, a new apply
// installs 0.0.6.
func TestFaultServerStopsMidDownload(t *testing.T) {
	rel := releaseCrash(t, newSite(t), nil)
	fs := newFaultServer(t, rel.site.url)
	fs.throttle.Store(true)
	h := newCrashHost(t, rel, "fault-stop", hostOpts{serverURL: fs.url()})
	h.startAgent(t)

	if code, err := h.apply(); err != nil || code != 202 {
		t.Fatalf("apply: %d %v", code, err)
	}
	waitFor(t, "download progress", func() bool {
		_, st := h.do(t, "GET", "/api/v1/updates/status", "", nil)
		p, _ := st["progress"].(map[string]any)
		b, _ := p["downloadedBytes"].(float64)
		return st["status"] == "downloading" && b > 0
	})
	fs.stop()
	st := h.waitStatus(t, "complete", "error")
	wantMessage(t, st, "error", "download qx-node", "giving up after 3 attempts", "connection refused")
	h.checkUntouched(t)

	fs.throttle.Store(false)
	fs.start()
	wantMessage(t, h.applyAndWait(t), "complete")
	h.checkInstalled(t)
}

// TestFaultServerAnswers: the Update Server answers 500s or serves another
// file under the artifact's name.
func TestFaultServerAnswers(t *testing.T) {
	rel := releaseCrash(t, newSite(t), nil)
	console := "qx-console-0.0.6.tar.zst"
	real := mustReadFile(t, filepath.Join(rel.site.repo, "releases/0.0.6", console))
	other := mustReadFile(t, filepath.Join(rel.site.repo, "releases/0.0.6", "qx-node-0.0.6.tar.zst"))
	serve := func(w http.ResponseWriter, b []byte) {
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		w.Write(b)
	}
	tests := []struct {
		name   string
		fault  func(w http.ResponseWriter, file string, hit int) bool
		status string
		msg    []string
		hits   int // requests for qx-console's artifact, at least
	}{
		{"500 twice, then the file", func(w http.ResponseWriter, file string, hit int) bool {
			if file == console && hit <= 2 {
				http.Error(w, "upstream unavailable", http.StatusInternalServerError)
				return true
			}
			return false
		}, "complete", nil, 3},
		{"500 for good", func(w http.ResponseWriter, file string, hit int) bool {
			if file == console {
				http.Error(w, "upstream unavailable", http.StatusInternalServerError)
				return true
			}
			return false
		}, "error", []string{"download qx-console", "giving up after 3 attempts", "HTTP 500"}, 3},
		{"another file of the same size", func(w http.ResponseWriter, file string, hit int) bool {
			if file == console {
				b := bytes.Clone(real)
				b[len(b)/2] ^= 0x55
				serve(w, b)
				return true
			}
			return false
		}, "error", []string{"download qx-console", "sha256 mismatch", "checksum mismatch"}, 1},
		{"another file of another size", func(w http.ResponseWriter, file string, hit int) bool {
			if file == console {
				serve(w, other)
				return true
			}
			return false
		}, "error", []string{"download qx-console", "size mismatch", fmt.Sprintf("server has %d bytes, want %d", len(other), len(real))}, 1},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFaultServer(t, rel.site.url)
			fs.setFault(tt.fault)
			h := newCrashHost(t, rel, fmt.Sprintf("fault-answer-%d", i), hostOpts{serverURL: fs.url()})
			h.startAgent(t)
			wantMessage(t, h.applyAndWait(t), tt.status, tt.msg...)
			if n := fs.hitsOf(console); n < tt.hits {
				t.Errorf("%d requests for %s, want at least %d", n, console, tt.hits)
			}
			if tt.status == "complete" {
				h.checkInstalled(t)
				return
			}
			h.checkUntouched(t)
		})
	}
}

// TestFaultDiskFull: the state dir sits on a 2 MiB tmpfs and the release
// does not fit. The update ends, before it downloads a byte, in an error
// naming the full disk (a disk that fills up during the download is
// internal/engine's TestDiskFillsDuringDownload), the installed files are
// intact, the agent still answers, and the next apply is not blocked by the
// failed one.
func TestFaultDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestFaultDiskFull mounts a tmpfs as the state dir: run it as root (CI does)")
	}
	rel := releaseCrash(t, newSite(t), nil) // qx-node alone is 2.5 MiB of random data
	state := filepath.Join(t.TempDir(), "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", state).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs on %s: %v\n%s", state, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", state).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", state, err, out)
		}
	})
	h := newCrashHost(t, rel, "fault-disk", hostOpts{stateDir: state})
	h.startAgent(t)

	for i := range 2 {
		st := h.applyAndWait(t)
		wantMessage(t, st, "error", "disk space on "+state, "not enough free space")
		if _, st := h.do(t, "GET", "/api/v1/updates/status", "", nil); st["status"] != "error" {
			t.Errorf("status after the failure: %v", st)
		}
		h.checkUntouched(t)
		var left []string
		filepath.WalkDir(state, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), "journal.json") {
				left = append(left, p)
			}
			return nil
		})
		if len(left) > 0 {
			t.Errorf("apply %d: the state dir still holds %v", i+1, left)
		}
	}
}
