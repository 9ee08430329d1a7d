package main

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/internal/qxtest"
)

// bin is the vdc-sim binary, built once for all tests.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vdc-sim-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "vdc-sim")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build vdc-sim: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// vdcSim runs vdc-sim to completion and returns its output and exit status.
func vdcSim(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("vdc-sim %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), code
}

// mustRun runs vdc-sim and fails the test unless it exits 0.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := vdcSim(t, args...)
	if code != 0 {
		t.Fatalf("vdc-sim %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// waitFor polls cond for up to 20s: long enough for a child process to start
// on a busy machine.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	qxtest.WaitFor(t, 20*time.Second, what, cond)
}

// serveProc is a running `vdc-sim serve`; logs collects its stdout and stderr.
type serveProc struct {
	cmd    *exec.Cmd
	logs   qxtest.SyncBuffer
	exited chan struct{} // closed when the process has exited; err is set then
	err    error
}

// startServe starts `vdc-sim serve args...`. When the test ends it kills
// the process if it still runs, and shows its log if the test failed, so
// every failure comes with what serve said.
func startServe(t *testing.T, args ...string) *serveProc {
	t.Helper()
	s := &serveProc{cmd: exec.Command(bin, append([]string{"serve"}, args...)...), exited: make(chan struct{})}
	s.cmd.Stdout, s.cmd.Stderr = &s.logs, &s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start vdc-sim serve: %v", err)
	}
	go func() { s.err = s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			s.cmd.Process.Kill()
			<-s.exited
		}
		if t.Failed() {
			t.Logf("vdc-sim serve %s log:\n%s", strings.Join(args, " "), s.logs.String())
		}
	})
	return s
}

// waitLog waits until serve's log contains substr.
func (s *serveProc) waitLog(t *testing.T, substr string) {
	t.Helper()
	s.waitUntil(t, fmt.Sprintf("serve to log %q", substr), func(log string) bool { return strings.Contains(log, substr) })
}

// natsURL waits for "nats listening on URL" and returns the URL.
func (s *serveProc) natsURL(t *testing.T) string {
	t.Helper()
	return s.listenURL(t, "nats listening on", regexp.MustCompile(`nats listening on (nats://127\.0\.0\.1:[0-9]+)\s`))
}

// httpURL waits for "update server listening on URL" and returns the URL.
func (s *serveProc) httpURL(t *testing.T) string {
	t.Helper()
	return s.listenURL(t, "update server listening on", regexp.MustCompile(`update server listening on (http://127\.0\.0\.1:[0-9]+)\s`))
}

// listenURL waits for the log to match re and returns its first group: a
// URL that must name the real port, not the :0 serve was given.
func (s *serveProc) listenURL(t *testing.T, line string, re *regexp.Regexp) string {
	t.Helper()
	var url string
	s.waitUntil(t, fmt.Sprintf("serve to log %q with a 127.0.0.1 URL", line), func(log string) bool {
		if m := re.FindStringSubmatch(log); m != nil {
			url = m[1]
		}
		return url != ""
	})
	if strings.HasSuffix(url, ":0") {
		t.Fatalf("serve printed port 0: %s", url)
	}
	return url
}

// waitUntil waits until cond holds for serve's log. It fails at once if
// serve exits first, rather than when waitFor gives up.
func (s *serveProc) waitUntil(t *testing.T, what string, cond func(log string) bool) {
	t.Helper()
	waitFor(t, what, func() bool {
		t.Helper() // report a Fatalf below at the test's line
		exited := false
		select {
		case <-s.exited: // the log is complete: Wait returns after copying it
			exited = true
		default:
		}
		if cond(s.logs.String()) {
			return true
		}
		if exited {
			t.Fatalf("serve exited (%v) while waiting for %s", s.err, what)
		}
		return false
	})
}

// stop sends SIGTERM and waits up to 15 s for serve to exit, which it must
// do with status 0.
func (s *serveProc) stop(t *testing.T) {
	t.Helper()
	select {
	case <-s.exited:
		t.Fatalf("serve exited (%v) before it was sent SIGTERM", s.err)
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM serve: %v", err)
	}
	select {
	case <-s.exited:
		if s.err != nil {
			t.Errorf("serve exited with %v after SIGTERM", s.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("serve did not stop within 15s of SIGTERM")
	}
}

func writeFile(t *testing.T, p, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"help"}} {
		out, errOut, code := vdcSim(t, args...)
		if code != 0 {
			t.Errorf("vdc-sim %s: exit %d", args[0], code)
		}
		for _, c := range []string{"keygen", "release", "serve"} {
			if !strings.Contains(out+errOut, "\n  "+c+" ") {
				t.Errorf("vdc-sim %s does not list %s:\n%s%s", args[0], c, out, errOut)
			}
		}
	}
	tests := []struct {
		args []string
		want string
	}{
		{nil, "commands:"},
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"keygen"}, "--out is required"},
		{[]string{"keygen", "--out", "x", "extra"}, `unexpected argument "extra"`},
		{[]string{"release", "--nope"}, "flag provided but not defined: -nope"},
		{[]string{"release", "--repo", "r", "--key", "k", "--channel", "dev"}, "--version is required"},
		{[]string{"release", "--component", "x"}, "want NAME=SRC_DIR"},
		{[]string{"release", "--expires", "0d"}, "positive whole number of days"},
		{[]string{"serve"}, "--repo is required"},
		{[]string{"-log-level", "loud", "serve"}, `-log-level "loud"`},
	}
	for _, tt := range tests {
		_, errOut, code := vdcSim(t, tt.args...)
		if code != 2 || !strings.Contains(errOut, tt.want) {
			t.Errorf("vdc-sim %s: exit %d, stderr %q; want exit 2 and %q", strings.Join(tt.args, " "), code, errOut, tt.want)
		}
	}
}

func TestKeygenReleaseServe(t *testing.T) {
	dir := t.TempDir()
	keys, repo := filepath.Join(dir, "keys"), filepath.Join(dir, "repo")

	out := mustRun(t, "keygen", "--out", keys)
	pubText, err := os.ReadFile(filepath.Join(keys, "update.pub"))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := manifest.ParsePublicKey(string(pubText))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, manifest.KeyID(pub)) {
		t.Errorf("keygen output does not show the keyId %s:\n%s", manifest.KeyID(pub), out)
	}

	var compArgs []string
	for _, c := range []string{"qx-node", "qx-console"} {
		src := filepath.Join(dir, "src", c)
		writeFile(t, filepath.Join(src, "bin", c), strings.Repeat(c+" binary\n", 300))
		writeFile(t, filepath.Join(src, "VERSION"), "0.0.6\n")
		compArgs = append(compArgs, "--component", c+"="+src)
	}
	key := filepath.Join(keys, "update.key")
	out = mustRun(t, append([]string{"release", "--repo", repo, "--key", key, "--channel", "dev", "--version", "0.0.6",
		"--notes", "first release", "--expires", "30d"}, compArgs...)...)
	for _, want := range []string{"quantix-os 0.0.6 on channel dev, serial 1", "qx-node", "qx-console", "releases/0.0.6/qx-node-0.0.6.tar.zst", " B "} {
		if !strings.Contains(out, want) {
			t.Errorf("release summary does not say %q:\n%s", want, out)
		}
	}

	// An older version than the channel's is refused with a clear message.
	stdout, stderr, code := vdcSim(t, append([]string{"release", "--repo", repo, "--key", key, "--channel", "dev", "--version", "0.0.5"}, compArgs...)...)
	if code != 1 || !strings.Contains(stderr, "version 0.0.5: not newer than the channel's current release: channel dev is at 0.0.6 (serial 1)") {
		t.Errorf("older release: exit %d\n%s%s", code, stdout, stderr)
	}

	// serve on a free port; the address comes from its log.
	srv := startServe(t, "--repo", repo, "--http", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0")
	base := srv.httpURL(t)

	resp, err := http.Get(base + "/api/v1/quantix-os/manifest/signed?channel=dev")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET signed manifest: %d %v", resp.StatusCode, err)
	}
	m, _, err := manifest.Verify(body, []ed25519.PublicKey{pub})
	if err != nil {
		t.Fatalf("served manifest does not verify with update.pub: %v", err)
	}
	if m.Version != "0.0.6" || m.Serial != 1 || len(m.Components) != 2 || m.ReleaseNotes != "first release" ||
		m.ExpiresAt.Sub(m.ReleasedAt) != 30*24*time.Hour {
		t.Errorf("served manifest = %+v", m)
	}
	resp, err = http.Get(base + "/api/v1/quantix-os/" + m.Components[0].Artifact)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != m.Components[0].Size {
		t.Errorf("GET artifact: %d, %d bytes, want %d", resp.StatusCode, resp.ContentLength, m.Components[0].Size)
	}

	// SIGTERM shuts it down cleanly.
	srv.stop(t)
	if !strings.Contains(srv.logs.String(), "update server stopped") {
		t.Errorf("no shutdown log: serve did not log %q", "update server stopped")
	}
}
