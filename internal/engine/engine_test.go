package engine

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quantix-os/update-agent/internal/archive"
	"github.com/quantix-os/update-agent/internal/fetch"
	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/internal/qxtest"
	"github.com/quantix-os/update-agent/internal/release"
	"github.com/quantix-os/update-agent/internal/updatesrv"
	"github.com/quantix-os/update-agent/subjects"
)

// harness is a host (temp root at 0.0.5), a signed release 0.0.6 served by the
// real Update Server on loopback, and a stand-in rc-service recording its calls.
type harness struct {
	t      *testing.T
	dir    string
	root   string
	state  string
	repo   string
	key    ed25519.PrivateKey
	pub    ed25519.PublicKey
	srv    *httptest.Server
	rcLog  string
	rc     string
	eng    *Engine
	ctx    context.Context
	cancel context.CancelFunc
	events <-chan subjects.UpdateEvent
	mods   []func(*Options)
	image  string // raw image file released with the components, when set
	maint  Maintainer
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

func newHarness(t *testing.T, mods ...func(*Options)) *harness {
	return newHarnessWith(t, nil, mods...)
}

// newHarnessWith runs pre on the harness before the first release and start.
func newHarnessWith(t *testing.T, pre func(h *harness), mods ...func(*Options)) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), mods: mods}
	h.root = filepath.Join(h.dir, "root")
	h.state = filepath.Join(h.dir, "state")
	h.repo = filepath.Join(h.dir, "repo")
	writeFile(t, filepath.Join(h.root, VersionsFile), `{"os":"0.0.5","components":{"qx-node":"0.0.5","qx-console":"0.0.5"}}`, 0o644)
	for _, c := range []string{"qx-node", "qx-console"} {
		writeFile(t, filepath.Join(h.root, "opt/quantix", c, "bin", c), "old "+c+"\n", 0o755)
		writeFile(t, filepath.Join(h.root, "opt/quantix", c, "VERSION"), "0.0.5\n", 0o644)
		writeFile(t, filepath.Join(h.root, "opt/quantix", c, "old-only"), "gone after update\n", 0o644)
		writeFile(t, filepath.Join(h.dir, "src", c, "bin", c), "new "+c+"\n", 0o755)
		writeFile(t, filepath.Join(h.dir, "src", c, "VERSION"), "0.0.6\n", 0o644)
	}
	var err error
	h.pub, h.key, err = ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	if pre != nil {
		pre(h)
	}
	h.release("0.0.6", time.Now())
	h.srv = httptest.NewServer(updatesrv.Handler(h.repo, nil))
	t.Cleanup(h.srv.Close)
	h.rcLog = filepath.Join(h.dir, "rc.log")
	h.rc = filepath.Join(h.dir, "rc-service")
	writeFile(t, h.rc, "#!/bin/sh\necho \"$*\" >>"+h.rcLog+"\n", 0o755)
	h.start()
	return h
}

func (h *harness) release(version string, now time.Time) {
	h.t.Helper()
	_, err := release.Create(context.Background(), release.Spec{
		Repo: h.repo, Channel: "dev", Version: version, Notes: "notes " + version, Key: h.key, Now: now, Image: h.image,
		Components: map[string]string{"qx-node": filepath.Join(h.dir, "src/qx-node"), "qx-console": filepath.Join(h.dir, "src/qx-console")},
	})
	if err != nil {
		h.t.Fatalf("release %s: %v", version, err)
	}
}

func (h *harness) options() Options {
	client, err := fetch.New(h.srv.URL, fetch.Options{Retries: 1, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, StallTimeout: 2 * time.Second})
	if err != nil {
		h.t.Fatal(err)
	}
	o := Options{
		NodeID: "node-a", Root: h.root, StateDir: h.state, RCService: h.rc, Keys: []ed25519.PublicKey{h.pub}, Fetcher: client,
		ServerURL: h.srv.URL, Channel: "dev", CheckInterval: time.Hour,
		Components: map[string]Component{
			"qx-node":    {Dir: filepath.Join(h.root, "opt/quantix/qx-node"), Service: "qx-node"},
			"qx-console": {Dir: filepath.Join(h.root, "opt/quantix/qx-console"), Service: "qx-console"},
		},
	}
	for _, m := range h.mods {
		m(&o)
	}
	return o
}

// start (re)creates the engine on the same host, as a restarted agent would.
func (h *harness) start() {
	h.t.Helper()
	eng, err := New(h.options())
	if err != nil {
		h.t.Fatalf("engine.New: %v", err)
	}
	h.startEngine(eng)
}

func (h *harness) startEngine(eng *Engine) {
	if h.cancel != nil {
		h.cancel()
	}
	h.eng = eng
	h.ctx, h.cancel = context.WithCancel(context.Background())
	if h.maint != nil {
		eng.SetMaintainer(h.maint)
	}
	ev, unsub := eng.Subscribe()
	h.events = ev
	eng.Start(h.ctx)
	h.t.Cleanup(func() { h.cancel(); unsub(); eng.Wait() })
}

// wait returns the first terminal event.
func (h *harness) wait() subjects.UpdateEvent {
	h.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev := <-h.events:
			if ev.Type.Terminal() {
				return ev
			}
		case <-timeout:
			h.t.Fatalf("no terminal event; status %+v", h.eng.Status())
		}
	}
}

func (h *harness) apply(cmd subjects.ApplyCommand) subjects.UpdateEvent {
	h.t.Helper()
	ack, err := h.eng.Apply(context.Background(), cmd)
	if err != nil || !ack.Accepted {
		h.t.Fatalf("Apply = %+v, %v", ack, err)
	}
	return h.wait()
}

func (h *harness) rcCalls() []string {
	b, _ := os.ReadFile(h.rcLog)
	return strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(b)), " restart", ":restart"))
}

// tree is every file under the host root, path → mode and content.
func tree(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, _ := d.Info()
		if d.Type()&fs.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			out[rel] = "-> " + l
		} else if d.IsDir() {
			out[rel] = fmt.Sprintf("dir %v", info.Mode().Perm())
		} else {
			b, _ := os.ReadFile(p)
			out[rel] = fmt.Sprintf("%v %s", info.Mode().Perm(), b)
		}
		return nil
	})
	return out
}

func sameTree(t testing.TB, before, after map[string]string) {
	t.Helper()
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s changed: %q → %q", k, v, after[k])
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			t.Errorf("%s appeared", k)
		}
	}
}

func (h *harness) read(rel string) string {
	b, err := os.ReadFile(filepath.Join(h.root, rel))
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

func TestCheckAndApplyComponents(t *testing.T) {
	h := newHarness(t)
	reply, err := h.eng.Check(context.Background(), subjects.CheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !reply.Available || reply.AvailableVersion != "0.0.6" || reply.CurrentVersion != "0.0.5" || len(reply.Components) != 2 {
		t.Fatalf("check reply %+v", reply)
	}
	var sum int64
	for _, c := range reply.Components {
		if c.SizeBytes <= 0 || c.CurrentVersion != "0.0.5" || c.NewVersion != "0.0.6" {
			t.Errorf("component %+v", c)
		}
		sum += c.SizeBytes
	}
	if reply.TotalDownloadSize != sum || reply.ReleaseNotes != "notes 0.0.6" {
		t.Errorf("total %d (sum %d), notes %q", reply.TotalDownloadSize, sum, reply.ReleaseNotes)
	}
	if st := h.eng.Status(); st.Status != subjects.StatusAvailable {
		t.Errorf("status after check = %s", st.Status)
	}

	ev := h.apply(subjects.ApplyCommand{OperationID: "op-1"})
	if ev.Type != subjects.EventCompleted || ev.Version != "0.0.6" {
		t.Fatalf("terminal event %+v", ev)
	}
	for _, c := range []string{"qx-node", "qx-console"} {
		if got := h.read("opt/quantix/" + c + "/bin/" + c); got != "new "+c+"\n" {
			t.Errorf("%s binary = %q", c, got)
		}
		if _, err := os.Stat(filepath.Join(h.root, "opt/quantix", c, "old-only")); !os.IsNotExist(err) {
			t.Errorf("%s: file of the old tree survived: %v", c, err)
		}
		if exists(filepath.Join(h.root, "opt/quantix", "."+c+".qx-backup")) || exists(filepath.Join(h.root, "opt/quantix", "."+c+".qx-staging")) {
			t.Errorf("%s: backup or staging left behind", c)
		}
	}
	calls := strings.Join(h.rcCalls(), ",")
	if !strings.Contains(calls, "qx-node:restart") || !strings.Contains(calls, "qx-console:restart") {
		t.Errorf("rc-service calls = %s", calls)
	}
	var v subjects.Versions
	if err := json.Unmarshal([]byte(h.read(VersionsFile)), &v); err != nil || v.OS != "0.0.6" || v.Components["qx-node"] != "0.0.6" {
		t.Errorf("versions.json = %+v, %v", v, err)
	}
	if h.eng.CurrentVersion() != "0.0.6" || h.eng.Status().Status != subjects.StatusComplete {
		t.Errorf("current %s status %s", h.eng.CurrentVersion(), h.eng.Status().Status)
	}
	hist := h.eng.History()
	if len(hist) != 1 || hist[0].Result != subjects.EventCompleted || hist[0].FromVersion != "0.0.5" || hist[0].OperationID != "op-1" {
		t.Errorf("history %+v", hist)
	}
	// The same operation id: the same Ack, and no second run.
	ack, err := h.eng.Apply(context.Background(), subjects.ApplyCommand{OperationID: "op-1"})
	if err != nil || !ack.Accepted || ack.OperationID != "op-1" || len(h.eng.History()) != 1 {
		t.Errorf("replayed apply = %+v, %v; history %d", ack, err, len(h.eng.History()))
	}
	// A new one finds nothing to do.
	if _, err := h.eng.Apply(context.Background(), subjects.ApplyCommand{OperationID: "op-2"}); !errors.Is(err, ErrNothingToApply) {
		t.Errorf("second apply: %v, want ErrNothingToApply", err)
	}
	// A restarted agent keeps what it installed (the journal is the truth now).
	h.cancel()
	h.eng.Wait()
	h.start()
	if h.eng.CurrentVersion() != "0.0.6" {
		t.Errorf("after restart current = %s", h.eng.CurrentVersion())
	}
}

func TestSeqRisesAcrossRestart(t *testing.T) {
	h := newHarness(t)
	h.apply(subjects.ApplyCommand{OperationID: "op-1"})
	var seq1 uint64
	h.eng.Journal().View(func(s *journal.State) { seq1 = s.Seq })
	if seq1 < 4 {
		t.Fatalf("seq after an update = %d, want several events", seq1)
	}
	h.cancel()
	h.eng.Wait()
	h.start()
	ev := h.eng.EmitAgent("a")
	if ev.Seq != seq1+1 {
		t.Fatalf("seq after restart = %d, want %d", ev.Seq, seq1+1)
	}
}

// resign rewrites the channel's manifest through fn and signs it with key.
func (h *harness) resign(key ed25519.PrivateKey, fn func(m *manifest.Manifest)) {
	h.t.Helper()
	m, err := release.Channel(h.repo, "dev")
	if err != nil {
		h.t.Fatal(err)
	}
	fn(m)
	b, err := json.Marshal(m)
	if err != nil {
		h.t.Fatal(err)
	}
	env, err := manifest.Sign(b, key)
	if err != nil {
		h.t.Fatal(err)
	}
	writeFile(h.t, filepath.Join(h.repo, "channels/dev/manifest.json"), string(b), 0o644)
	writeFile(h.t, filepath.Join(h.repo, "channels/dev/manifest.signed.json"), string(env), 0o644)
}

// replaceArtifact writes data as component name's artifact and fixes the
// manifest's size and hash so that only the content is hostile.
func (h *harness) replaceArtifact(name string, data []byte, rawSize int64) {
	h.t.Helper()
	h.resign(h.key, func(m *manifest.Manifest) {
		for i := range m.Components {
			if m.Components[i].Name == name {
				writeFile(h.t, filepath.Join(h.repo, m.Components[i].Artifact), string(data), 0o644)
				sum := sha256.Sum256(data)
				m.Components[i].SHA256 = hex.EncodeToString(sum[:])
				m.Components[i].Size = int64(len(data))
				if rawSize > 0 {
					m.Components[i].RawSize = rawSize
				}
			}
		}
	})
}

func (h *harness) artifactPath(name string) string {
	m, err := release.Channel(h.repo, "dev")
	if err != nil {
		h.t.Fatal(err)
	}
	for _, c := range m.Components {
		if c.Name == name {
			return filepath.Join(h.repo, c.Artifact)
		}
	}
	h.t.Fatalf("no component %s", name)
	return ""
}

func TestBadInputKeepsHostWhole(t *testing.T) {
	tests := []struct {
		name string
		mods []func(*Options)
		prep func(h *harness)
		// applyErr: the apply is refused at once with this; else it runs and fails with want.
		applyErr error
		want     error
	}{
		{name: "unknown key", mods: []func(*Options){func(o *Options) {
			other, _, _ := ed25519.GenerateKey(nil)
			o.Keys = []ed25519.PublicKey{other}
		}}, applyErr: manifest.ErrNoValidSignature},
		{name: "expired", prep: func(h *harness) {
			h.resign(h.key, func(m *manifest.Manifest) {
				m.ExpiresAt = time.Now().Add(-time.Hour)
				m.ReleasedAt = m.ExpiresAt.Add(-time.Hour)
			})
		}, applyErr: manifest.ErrExpired},
		{name: "lower serial", prep: func(h *harness) {
			h.eng.Journal().Update(func(s *journal.State) error { s.Serials["dev"] = 50; return nil })
		}, applyErr: manifest.ErrSerialRollback},
		{name: "downgrade", prep: func(h *harness) {
			h.eng.Journal().Update(func(s *journal.State) error { s.CurrentVersion = "0.0.9"; return nil })
		}, applyErr: manifest.ErrDowngrade},
		{name: "artifact altered after signing", prep: func(h *harness) {
			p := h.artifactPath("qx-console")
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 0xff
			os.WriteFile(p, b, 0o644)
		}, want: fetch.ErrChecksum},
		{name: "artifact truncated", prep: func(h *harness) {
			p := h.artifactPath("qx-console")
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)-7], 0o644)
		}, want: fetch.ErrSize},
		{name: "archive entry with ..", prep: func(h *harness) {
			h.replaceArtifact("qx-console", tarZst(t, tarEntry{name: "../../../escaped", body: "x"}), 0)
		}, want: archive.ErrUnsafePath},
		{name: "archive absolute name", prep: func(h *harness) {
			h.replaceArtifact("qx-console", tarZst(t, tarEntry{name: "/etc/evil", body: "x"}), 0)
		}, want: archive.ErrUnsafePath},
		{name: "archive symlink escape", prep: func(h *harness) {
			h.replaceArtifact("qx-console", tarZst(t, tarEntry{name: "lnk", link: "../../../../etc", symlink: true}, tarEntry{name: "lnk/passwd", body: "x"}), 0)
		}, want: nil},
		{name: "archive device node", prep: func(h *harness) {
			h.replaceArtifact("qx-console", tarZst(t, tarEntry{name: "dev", device: true}), 0)
		}, want: archive.ErrSpecialFile},
		{name: "zstd larger than declared", prep: func(h *harness) {
			h.replaceArtifact("qx-console", tarZst(t, tarEntry{name: "big", body: strings.Repeat("z", 64<<10)}), 4096)
		}, want: archive.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.mods...)
			if tt.prep != nil {
				tt.prep(h)
			}
			before := tree(t, h.root)
			ack, err := h.eng.Apply(context.Background(), subjects.ApplyCommand{OperationID: "op-bad"})
			if tt.applyErr != nil {
				if ack.Accepted || !errors.Is(err, tt.applyErr) {
					t.Fatalf("Apply = %+v, %v; want refusal with %v", ack, err, tt.applyErr)
				}
				if ack.Reason == "" {
					t.Errorf("refusal has no reason")
				}
			} else {
				if err != nil || !ack.Accepted {
					t.Fatalf("Apply = %+v, %v", ack, err)
				}
				ev := h.wait()
				if ev.Type != subjects.EventFailed || ev.Status != subjects.StatusError {
					t.Fatalf("terminal event %+v, want failed", ev)
				}
				if tt.want != nil && !strings.Contains(ev.Message, tt.want.Error()) {
					t.Errorf("message %q does not name %q", ev.Message, tt.want)
				}
			}
			sameTree(t, before, tree(t, h.root))
			st := h.eng.Status()
			if st.Status != subjects.StatusError || st.Message == "" {
				t.Errorf("status %+v, want error with a message", st)
			}
			hist := h.eng.History()
			if len(hist) == 0 || hist[len(hist)-1].Result != subjects.EventFailed || hist[len(hist)-1].Error == "" {
				t.Errorf("history %+v, want a failed entry with its error", hist)
			}
			if h.eng.CurrentVersion() != "0.0.5" && tt.name != "downgrade" {
				t.Errorf("current version moved to %s", h.eng.CurrentVersion())
			}
			// Nothing may have been written next to the host root either.
			if exists(filepath.Join(h.dir, "escaped")) || exists(filepath.Join(filepath.Dir(h.dir), "escaped")) {
				t.Errorf("an entry escaped the staging dir")
			}
		})
	}
}

func TestUpdateServerDownOrSlow(t *testing.T) {
	t.Run("down", func(t *testing.T) {
		h := newHarness(t)
		h.srv.Close()
		before := tree(t, h.root)
		reply, err := h.eng.Check(context.Background(), subjects.CheckRequest{})
		if err == nil || reply.Error == "" {
			t.Fatalf("check against a stopped server = %+v, %v", reply, err)
		}
		if _, err := h.eng.Apply(context.Background(), subjects.ApplyCommand{OperationID: "x"}); err == nil {
			t.Fatal("apply against a stopped server accepted")
		}
		sameTree(t, before, tree(t, h.root))
		if st := h.eng.Status(); st.Status != subjects.StatusError {
			t.Errorf("status %s", st.Status)
		}
	})
	t.Run("stalls mid-download", func(t *testing.T) {
		var stall sync.Once
		block := make(chan struct{})
		t.Cleanup(func() { close(block) })
		h := newHarness(t, func(o *Options) {
			client, _ := fetch.New(o.ServerURL, fetch.Options{Retries: -1, StallTimeout: 200 * time.Millisecond})
			o.Fetcher = client
		})
		inner := h.srv.Config.Handler
		h.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/releases/") {
				stall.Do(func() {})
				w.Header().Set("Content-Length", "100000")
				w.WriteHeader(200)
				w.Write([]byte("partial"))
				w.(http.Flusher).Flush()
				select {
				case <-block:
				case <-r.Context().Done():
				}
				return
			}
			inner.ServeHTTP(w, r)
		})
		before := tree(t, h.root)
		ack, err := h.eng.Apply(context.Background(), subjects.ApplyCommand{OperationID: "slow"})
		if err != nil || !ack.Accepted {
			t.Fatal(ack, err)
		}
		ev := h.wait()
		if ev.Type != subjects.EventFailed || !strings.Contains(ev.Message, "download") {
			t.Fatalf("event %+v", ev)
		}
		sameTree(t, before, tree(t, h.root))
	})
}

func TestHealthFailureRollsBack(t *testing.T) {
	h := newHarness(t, func(o *Options) {
		// Components install in manifest order (qx-console, qx-node): the
		// second fails, so the first must be rolled back too.
		c := o.Components["qx-node"]
		c.Health = []string{"/bin/sh", "-c", "echo node unhealthy; exit 3"}
		c.HealthTimeout = 500 * time.Millisecond
		o.Components["qx-node"] = c
	})
	before := tree(t, h.root)
	ev := h.apply(subjects.ApplyCommand{OperationID: "op-h"})
	if ev.Type != subjects.EventRolledBack || !strings.Contains(ev.Message, "node unhealthy") {
		t.Fatalf("event %+v", ev)
	}
	sameTree(t, before, tree(t, h.root))
	calls := h.rcCalls()
	// Both restarted with the new code, then both again with the old.
	count := map[string]int{}
	for _, c := range calls {
		count[c]++
	}
	if count["qx-node:restart"] != 2 || count["qx-console:restart"] != 2 {
		t.Errorf("rc-service calls %v", calls)
	}
	if h.eng.CurrentVersion() != "0.0.5" {
		t.Errorf("current %s", h.eng.CurrentVersion())
	}
	if hist := h.eng.History(); hist[len(hist)-1].Result != subjects.EventRolledBack {
		t.Errorf("history %+v", hist)
	}
}

func TestRestartFailureRollsBack(t *testing.T) {
	h := newHarness(t)
	writeFile(t, h.rc, "#!/bin/sh\necho \"$*\" >>"+h.rcLog+"\n[ \"$1\" = qx-console ] && [ ! -e "+h.dir+"/rolled ] && touch "+h.dir+"/rolled && echo boom >&2 && exit 1\nexit 0\n", 0o755)
	before := tree(t, h.root)
	ev := h.apply(subjects.ApplyCommand{OperationID: "op-r"})
	if ev.Type != subjects.EventRolledBack || !strings.Contains(ev.Message, "boom") {
		t.Fatalf("event %+v", ev)
	}
	sameTree(t, before, tree(t, h.root))
}

// TestCrashAtEveryStep stops the operation's goroutine dead at each durable
// step (as a kill would: nothing after it runs), starts a new engine on the
// same host, and checks the host is whole before and the update completes after.
func TestCrashAtEveryStep(t *testing.T) {
	points := []string{"downloaded", "staged", "swapping", "moved-in", "backed-up", "swapped", "restarted", "component-done"}
	for _, point := range points {
		for _, nth := range []int{1, 2} {
			t.Run(fmt.Sprintf("%s#%d", point, nth), func(t *testing.T) {
				var mu sync.Mutex
				hits := 0
				armed := true
				h := newHarness(t, func(o *Options) {
					o.Failpoint = func(name string) {
						mu.Lock()
						defer mu.Unlock()
						if !armed || name != point {
							return
						}
						hits++
						if hits == nth {
							armed = false
							runtime.Goexit()
						}
					}
				})
				old := tree(t, h.root)
				ack, err := h.eng.Apply(context.Background(), subjects.ApplyCommand{OperationID: "op-crash"})
				if err != nil || !ack.Accepted {
					t.Fatal(ack, err)
				}
				waitFor(t, "the crash", func() bool { return h.eng.Done() == nil || isClosed(h.eng.Done()) })
				var op *journal.Operation
				h.eng.Journal().View(func(s *journal.State) { op = s.Op })
				if op == nil {
					t.Fatalf("no operation in the journal after the crash")
				}
				h.cancel()
				// "Restart": a new engine on the same root and state dir.
				eng, err := New(h.options())
				if err != nil {
					t.Fatal(err)
				}
				allDone := true
				for _, c := range op.Components {
					allDone = allDone && c.Step == journal.StepDone
				}
				if !allDone {
					sameTree(t, old, tree(t, h.root))
				}
				h.startEngine(eng)
				ev := h.wait()
				if ev.Type != subjects.EventCompleted {
					t.Fatalf("after restart: %+v", ev)
				}
				for _, c := range []string{"qx-node", "qx-console"} {
					if got := h.read("opt/quantix/" + c + "/bin/" + c); got != "new "+c+"\n" {
						t.Errorf("%s = %q", c, got)
					}
				}
			})
		}
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// waitFor polls cond for up to 20s, room for a slow machine under -race.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	qxtest.WaitFor(t, 20*time.Second, what, cond)
}

func TestBusyAndCancel(t *testing.T) {
	release := make(chan struct{})
	h := newHarness(t)
	inner := h.srv.Config.Handler
	h.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/releases/") {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		inner.ServeHTTP(w, r)
	})
	defer close(release)
	before := tree(t, h.root)
	ack, err := h.eng.Apply(context.Background(), subjects.ApplyCommand{OperationID: "first"})
	if err != nil || !ack.Accepted {
		t.Fatal(ack, err)
	}
	ack2, err := h.eng.Apply(context.Background(), subjects.ApplyCommand{OperationID: "second"})
	if ack2.Accepted || !errors.Is(err, ErrBusy) || !strings.Contains(ack2.Reason, "first") {
		t.Fatalf("second apply = %+v, %v; want busy naming the first", ack2, err)
	}
	if st := h.eng.Status(); st.Status != subjects.StatusDownloading || st.OperationID != "first" {
		t.Errorf("status %+v", st)
	}
	if _, err := h.eng.Cancel(context.Background(), subjects.CancelCommand{OperationID: "other"}); !errors.Is(err, ErrNoOperation) {
		t.Errorf("cancel of another op: %v", err)
	}
	cack, err := h.eng.Cancel(context.Background(), subjects.CancelCommand{Reason: "test"})
	if err != nil || !cack.Accepted || cack.OperationID != "first" {
		t.Fatalf("cancel = %+v, %v", cack, err)
	}
	ev := h.wait()
	if ev.Type != subjects.EventCancelled || ev.OperationID != "first" {
		t.Fatalf("event %+v", ev)
	}
	sameTree(t, before, tree(t, h.root))
	if _, err := h.eng.Cancel(context.Background(), subjects.CancelCommand{}); !errors.Is(err, ErrNoOperation) {
		t.Errorf("cancel with nothing running: %v", err)
	}
}

func TestAutoCheckAndApply(t *testing.T) {
	h := newHarness(t, func(o *Options) {
		o.AutoCheck, o.AutoApply, o.CheckInterval = true, true, 20*time.Millisecond
	})
	ev := h.wait()
	if ev.Type != subjects.EventCompleted || h.eng.CurrentVersion() != "0.0.6" {
		t.Fatalf("auto apply: %+v, current %s", ev, h.eng.CurrentVersion())
	}
}

func TestSettings(t *testing.T) {
	h := newHarness(t)
	s := h.eng.Settings()
	if s.Channel != "dev" || s.AutoCheck || s.CheckInterval != "1h0m0s" || s.ServerURL != h.srv.URL {
		t.Fatalf("defaults %+v", s)
	}
	beta, on, iv := "beta", true, "15m"
	s, err := h.eng.UpdateSettings(SettingsUpdate{Channel: &beta, AutoCheck: &on, CheckInterval: &iv})
	if err != nil || s.Channel != "beta" || !s.AutoCheck || s.CheckInterval != "15m0s" {
		t.Fatalf("update = %+v, %v", s, err)
	}
	bad := []SettingsUpdate{
		{Channel: ptr("Bad Channel")},
		{CheckInterval: ptr("1s")},
		{CheckInterval: ptr("soon")},
		{AutoCheck: ptr(false), AutoApply: ptr(true)},
	}
	for _, u := range bad {
		if _, err := h.eng.UpdateSettings(u); !errors.Is(err, ErrInvalidSettings) {
			t.Errorf("UpdateSettings(%+v) = %v, want ErrInvalidSettings", u, err)
		}
	}
	h.cancel()
	h.eng.Wait()
	h.start()
	if s := h.eng.Settings(); s.Channel != "beta" || !s.AutoCheck {
		t.Errorf("settings not persisted: %+v", s)
	}
}

func ptr[T any](v T) *T { return &v }
