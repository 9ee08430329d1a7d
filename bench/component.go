package bench

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/quantix-os/update-agent/internal/engine"
	"github.com/quantix-os/update-agent/internal/fetch"
	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/subjects"
)

// Figure 2's release.
const (
	compChannel   = "component"
	compName      = "toolchain"
	compInstalled = "2.0.0"
)

// Component measures figure 2: the agent's download, verification and
// install of a component archive of at least ComponentSize compressed bytes
// of real files, fsync included, against curl -o, sha256sum -c,
// zstd -dc | tar -x and sync on the same file from the same server. The
// sides alternate, Reps times each, after a sync; the medians count.
func (s *Site) Component(ctx context.Context) []Result {
	name := fmt.Sprintf("component pipeline, %d MB tar.zst, vs curl+sha256sum+zstd|tar+sync", s.opts.ComponentSize/1e6)
	target := Target{Kind: MaxRatio, Limit: 1.0}
	m, err := s.componentRelease(ctx)
	if err != nil {
		return []Result{failed("2", name, "s", target, err)}
	}
	mc := m.Components[0]
	name = fmt.Sprintf("component pipeline, %d MB tar.zst (%d MB raw), vs shell", mc.Size/1e6, mc.RawSize/1e6)
	files, err := countFiles(filepath.Join(s.opts.Dir, "src", compChannel))
	if err != nil {
		return []Result{failed("2", name, "s", target, err)}
	}
	// The trees stay until the run ends: ext4 allocates inodes slowly for a
	// few minutes after many were freed, and a rep (or a later figure's
	// journal writes) must not pay for the last rep's clean-up.
	s.log.Info("component", "files", files, "size", mc.Size, "raw", mc.RawSize)
	s.settleInodes(ctx, filepath.Join(s.opts.Dir, "component"))
	agent, shell, err := s.alternate(ctx, "component pipeline",
		func(rep string) (time.Duration, error) { return s.componentAgent(ctx, rep, m, files) },
		func(rep string) (time.Duration, error) { return s.componentShell(ctx, rep, mc, files) })
	if err != nil {
		return []Result{failed("2", name, "s", target, err)}
	}
	return []Result{{ID: "2", Name: name, Unit: "s", Value: sec(agent), Baseline: sec(shell), Target: target}}
}

// componentRelease publishes a component of real files whose archive is at
// least ComponentSize bytes. It guesses the raw size from a compression ratio
// of 3.3 and adds files (in a newer release) until the archive is big enough.
func (s *Site) componentRelease(ctx context.Context) (*manifest.Manifest, error) {
	src := filepath.Join(s.opts.Dir, "src", compChannel, compName)
	var raw int64
	want := 33 * s.opts.ComponentSize / 10
	for try := 1; try <= 3; try++ {
		n, err := fillTree(src, s.opts.Sources, want)
		if err != nil {
			return nil, fmt.Errorf("component source: %w", err)
		}
		raw += n
		m, err := s.publish(ctx, compChannel, fmt.Sprintf("2.0.%d", try), map[string]string{compName: src}, "")
		if err != nil {
			return nil, err
		}
		size := m.Components[0].Size
		s.log.Info("component release", "version", m.Version, "raw", raw, "size", size)
		if size >= s.opts.ComponentSize {
			return m, nil
		}
		want = (s.opts.ComponentSize-size)*raw/size*12/10 + 1
	}
	return nil, fmt.Errorf("component archive still under %d bytes after three tries", s.opts.ComponentSize)
}

// componentAgent runs one update through the agent's engine on a fresh host
// and returns the time from Apply to the operation's end.
func (s *Site) componentAgent(ctx context.Context, rep string, m *manifest.Manifest, files int) (time.Duration, error) {
	dir := filepath.Join(s.opts.Dir, "component", "agent-"+rep)
	root := filepath.Join(dir, "root")
	if err := hostRoot(root, compInstalled, compName); err != nil {
		return 0, err
	}
	fc, err := fetch.New(s.in.http, fetch.Options{})
	if err != nil {
		return 0, err
	}
	install := filepath.Join(root, "opt/quantix", compName)
	eng, err := engine.New(engine.Options{
		NodeID: "bench-component", Root: root, StateDir: filepath.Join(dir, "state"),
		Components: map[string]engine.Component{compName: {Dir: install}},
		Keys:       []ed25519.PublicKey{s.pub}, Fetcher: fc, ServerURL: s.in.http, Channel: compChannel,
	})
	if err != nil {
		return 0, err
	}
	ectx, stop := context.WithCancel(ctx)
	defer func() { stop(); eng.Wait() }()
	eng.Start(ectx)
	if err := syncAll(); err != nil {
		return 0, err
	}

	start := time.Now()
	ack, err := eng.Apply(ctx, subjects.ApplyCommand{OperationID: "bench-" + rep, Version: m.Version})
	if err != nil || !ack.Accepted {
		return 0, fmt.Errorf("apply: %+v: %w", ack, err)
	}
	if done := eng.Done(); done != nil {
		select {
		case <-done:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	d := time.Since(start)

	h := eng.History()
	if len(h) == 0 || h[len(h)-1].Result != subjects.EventCompleted {
		return 0, fmt.Errorf("update did not complete: %+v", h)
	}
	if n, err := countFiles(install); err != nil || n != files {
		return 0, fmt.Errorf("installed %d files (%v), want %d", n, err, files)
	}
	return d, evict(dir)
}

// componentShell runs the shell baseline on a fresh directory.
func (s *Site) componentShell(ctx context.Context, rep string, mc manifest.Component, files int) (time.Duration, error) {
	dir := filepath.Join(s.opts.Dir, "component", "shell-"+rep)
	out := filepath.Join(dir, "tree")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return 0, err
	}
	dl := filepath.Join(dir, "download.tar.zst")
	script := strings.Join([]string{
		"set -e",
		fmt.Sprintf("curl -sSf -o %s %s/api/v1/quantix-os/%s", dl, s.in.http, mc.Artifact),
		fmt.Sprintf("echo '%s  %s' | sha256sum -c --quiet -", mc.SHA256, dl),
		fmt.Sprintf("zstd -dcq %s | tar -x -C %s", dl, out),
		"sync",
	}, "\n")
	if err := syncAll(); err != nil {
		return 0, err
	}
	start := time.Now()
	if b, err := exec.CommandContext(ctx, "sh", "-c", script).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("%w: %s", err, b)
	}
	d := time.Since(start)
	if n, err := countFiles(out); err != nil || n != files {
		return 0, fmt.Errorf("extracted %d files (%v), want %d", n, err, files)
	}
	return d, evict(dir)
}

// countFiles counts the regular files under dir.
func countFiles(dir string) (int, error) {
	n := 0
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			n++
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	return n, err
}
