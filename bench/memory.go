package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/quantix-os/update-agent/internal/grubenv"
	"github.com/quantix-os/update-agent/internal/manifest"
)

// Memory limits of figure 4.
const (
	peakLimitMiB = 64
	idleLimitMiB = 32
	// idleSettle is how long the agent runs before its idle RSS is read.
	idleSettle = 3 * time.Second
)

// Memory measures figure 4 with the real agent binary: standalone (no NATS,
// so no maintenance), A/B with slot files, it applies the ImageSize image
// release through REST (download, verify, write the slot, read it back, arm
// the trial boot). Idle is VmRSS after idleSettle; peak is VmHWM when the
// update is done. Baselines: for the peak, zstd's and dd's peak RSS summed
// from figure 3's shell runs; for idle, the binary loaded and its packages
// initialized, nothing running yet (agentStartRSS).
func (s *Site) Memory(ctx context.Context) []Result {
	peakName := fmt.Sprintf("memory: agent peak RSS, %d MiB A/B update, vs zstd|dd", s.opts.ImageSize>>20)
	idleName := "memory: agent idle RSS, vs the binary just started"
	peakTarget := Target{Kind: MaxValue, Limit: peakLimitMiB}
	idleTarget := Target{Kind: MaxValue, Limit: idleLimitMiB}
	fail := func(err error) []Result {
		return []Result{failed("4a", peakName, "MiB", peakTarget, err), failed("4b", idleName, "MiB", idleTarget, err)}
	}
	if _, err := os.Stat(s.opts.Agent); err != nil {
		return fail(fmt.Errorf("agent binary: %w (make build puts it in bin/agent)", err))
	}
	m, err := s.imageRelease(ctx)
	if err != nil {
		return fail(err)
	}
	if s.shellRSS == 0 {
		if _, err := s.imageShell(ctx, m.Image, filepath.Join(s.opts.Dir, "memory", "slot-shell")); err != nil {
			return fail(fmt.Errorf("shell baseline: %w", err))
		}
	}
	startRSS, err := s.agentStartRSS(ctx)
	if err != nil {
		return fail(err)
	}
	idle, peak, took, err := s.agentUpdate(ctx, m)
	if err != nil {
		return fail(err)
	}
	s.log.Info("memory", "idle", idle, "peak", peak, "update", took, "shell", s.shellRSS, "start", startRSS)
	return []Result{
		{ID: "4a", Name: peakName, Unit: "MiB", Value: MiB(peak), Baseline: MiB(s.shellRSS), Target: peakTarget},
		{ID: "4b", Name: idleName, Unit: "MiB", Value: MiB(idle), Baseline: MiB(startRSS), Target: idleTarget},
	}
}

// agentStartRSS is the agent binary's peak RSS once loaded and initialized,
// before it does anything: it is started with a FIFO as its config file and
// read while it blocks opening it. (The rusage of a short command run from
// this process would not do: Linux counts the parent's peak into a child's
// at exec.)
func (s *Site) agentStartRSS(ctx context.Context) (int64, error) {
	fifo := filepath.Join(s.opts.Dir, "config.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		return 0, fmt.Errorf("mkfifo: %w", err)
	}
	defer os.Remove(fifo)
	cmd := exec.CommandContext(ctx, s.opts.Agent, "--config", fifo)
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start agent: %w", err)
	}
	defer cmd.Wait()
	var hwm int64
	err := waitFor(ctx, "the agent blocked on its config", 10*time.Second, func() error {
		if !openingFIFO(cmd.Process.Pid) {
			return errors.New("the agent is not waiting on the FIFO yet")
		}
		var err error
		_, hwm, err = procRSS(cmd.Process.Pid)
		return err
	})
	// Opening the other end lets the agent read an empty config and exit.
	if w, oerr := os.OpenFile(fifo, os.O_WRONLY, 0); oerr == nil {
		w.Close()
	} else {
		cmd.Process.Kill()
	}
	return hwm, err
}

// openingFIFO reports whether a thread of process pid waits for the other
// end of a FIFO (in open, kernel function wait_for_partner).
func openingFIFO(pid int) bool {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/wchan", pid))
	for _, t := range tasks {
		if b, err := os.ReadFile(t); err == nil && strings.Contains(string(b), "wait_for_partner") {
			return true
		}
	}
	return false
}

// agentUpdate runs the agent on a fresh A/B host, reads its idle RSS, applies
// the release over REST and waits for reboot_required.
func (s *Site) agentUpdate(ctx context.Context, m *manifest.Manifest) (idle, peak int64, took time.Duration, err error) {
	dir := filepath.Join(s.opts.Dir, "memory") // removed with the run's files
	root := filepath.Join(dir, "root")
	if err := hostRoot(root, imageInstalled); err != nil {
		return 0, 0, 0, err
	}
	slotA, slotB := filepath.Join(dir, "slot-a"), filepath.Join(dir, "slot-b")
	if err := writeFile(slotA, []byte("slot a: the running system\n"), 0o600); err != nil {
		return 0, 0, 0, err
	}
	if err := writeFile(slotB, nil, 0o600); err != nil {
		return 0, 0, 0, err
	}
	env := grubenv.New()
	env.Set("qx_slot", "a")
	grubEnv := filepath.Join(dir, "grubenv")
	if err := grubenv.Write(grubEnv, env); err != nil {
		return 0, 0, 0, err
	}
	cmdline := filepath.Join(dir, "cmdline")
	if err := writeFile(cmdline, []byte("qx.slot=a\n"), 0o644); err != nil {
		return 0, 0, 0, err
	}
	cfg := filepath.Join(dir, "agent.yaml")
	yaml := fmt.Sprintf(`nodeId: bench-memory
updates: { serverUrl: %q, channel: %s, publicKeys: [%q] }
paths: { root: %q }
http: { listen: "127.0.0.1:0" }
log: { format: json, level: info }
ab:
  slots: { a: %q, b: %q }
  grubEnv: %q
  cmdline: %q
  rebootCommand: ["true"]
`, s.in.http, imageChannel, manifest.EncodePublicKey(s.pub), root, slotA, slotB, grubEnv, cmdline)
	if err := writeFile(cfg, []byte(yaml), 0o644); err != nil {
		return 0, 0, 0, err
	}

	cmd := exec.Command(s.opts.Agent, "--config", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return 0, 0, 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, 0, 0, fmt.Errorf("start agent: %w", err)
	}
	var logTail tail
	addr := make(chan string, 1)
	go scanLog(stderr, addr, &logTail)
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if err != nil {
			err = fmt.Errorf("%w\nagent log:\n%s", err, logTail.String())
		}
	}()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case <-time.After(30 * time.Second):
		return 0, 0, 0, errors.New("agent did not log its HTTP address")
	}
	if err := waitFor(ctx, "the agent's /healthz", 30*time.Second, func() error {
		_, err := httpJSON(ctx, http.MethodGet, base+"/healthz", nil)
		return err
	}); err != nil {
		return 0, 0, 0, err
	}
	time.Sleep(idleSettle)
	idle, _, err = procRSS(cmd.Process.Pid)
	if err != nil {
		return 0, 0, 0, err
	}

	start := time.Now()
	if _, err := httpJSON(ctx, http.MethodPost, base+"/api/v1/updates/apply", []byte(`{"operationId":"bench-memory"}`)); err != nil {
		return 0, 0, 0, fmt.Errorf("apply: %w", err)
	}
	err = waitFor(ctx, "the update to reach reboot_required", 10*time.Minute, func() error {
		st, err := httpJSON(ctx, http.MethodGet, base+"/api/v1/updates/status", nil)
		if err != nil {
			return err
		}
		switch st["status"] {
		case "reboot_required":
			return nil
		case "error":
			return fmt.Errorf("%w: update failed: %v", errStopped, st["message"])
		}
		return fmt.Errorf("status %v", st["status"])
	})
	if err != nil {
		return 0, 0, 0, err
	}
	took = time.Since(start)
	_, peak, err = procRSS(cmd.Process.Pid)
	if err != nil {
		return 0, 0, 0, err
	}
	if sum, err := fileSHA256(slotB, m.Image.RawSize); err != nil || sum != m.Image.RawSHA256 {
		return 0, 0, 0, fmt.Errorf("slot b after the update: sha256 %s (%v), want %s", sum, err, m.Image.RawSHA256)
	}
	return idle, peak, took, nil
}

// procRSS reads a process's resident set now (VmRSS) and at its peak (VmHWM).
func procRSS(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			rss = n << 10
		case "VmHWM":
			hwm = n << 10
		}
	}
	if rss == 0 || hwm == 0 {
		return 0, 0, fmt.Errorf("no VmRSS or VmHWM in /proc/%d/status", pid)
	}
	return rss, hwm, nil
}

// httpJSON sends a request to the agent's facade and decodes a JSON object answer.
func httpJSON(ctx context.Context, method, url string, body []byte) (map[string]any, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		return nil, fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, b)
	}
	var v map[string]any
	if len(bytes.TrimSpace(b)) > 0 && json.Unmarshal(b, &v) != nil {
		v = map[string]any{"body": string(b)}
	}
	return v, nil
}

// scanLog reads the agent's JSON log: it sends the HTTP address once the
// agent logs it, and keeps the last lines for error messages.
func scanLog(r io.Reader, addr chan<- string, t *tail) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	sent := false
	for sc.Scan() {
		line := sc.Text()
		t.add(line)
		if sent {
			continue
		}
		var rec struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "http listening" && rec.Addr != "" {
			addr <- rec.Addr
			sent = true
		}
	}
}

// tail keeps the last lines written to it.
type tail struct {
	mu    sync.Mutex
	lines []string
}

func (t *tail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, line)
	if len(t.lines) > 30 {
		t.lines = t.lines[1:]
	}
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}
