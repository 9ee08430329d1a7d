package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/quantix-os/update-agent/internal/abslot"
	"github.com/quantix-os/update-agent/internal/archive"
	"github.com/quantix-os/update-agent/internal/manifest"
)

// Figures 3 and 4's release.
const (
	imageChannel   = "image"
	imageInstalled = "3.0.0"
	imageVersion   = "3.0.1"
)

// imageRelease publishes (once) a release whose image is ImageSize bytes of
// real files and free space, and returns its manifest.
func (s *Site) imageRelease(ctx context.Context) (*manifest.Manifest, error) {
	if s.imageManifest != nil {
		return s.imageManifest, nil
	}
	raw := filepath.Join(s.opts.Dir, "src", "image.raw")
	if err := os.MkdirAll(filepath.Dir(raw), 0o755); err != nil {
		return nil, err
	}
	if err := writeImage(raw, s.opts.Sources, s.opts.ImageSize); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	defer os.Remove(raw) // the release holds it compressed
	m, err := s.publish(ctx, imageChannel, imageVersion, nil, raw)
	if err != nil {
		return nil, err
	}
	s.log.Info("image release", "raw", m.Image.RawSize, "size", m.Image.Size)
	s.imageManifest = m
	return m, nil
}

// artifactPath is where the repository keeps a release file.
func (s *Site) artifactPath(artifact string) string {
	return filepath.Join(s.repo, filepath.FromSlash(artifact))
}

// Image measures figure 3: the agent's slot writer (the decompressing reader
// and abslot.Write: stream, fsync, drop the cache, read back and hash) on the
// downloaded image, against zstd -dc | dd of=SLOT bs=4M conv=fsync followed
// by sha256sum SLOT. The sides alternate, Reps times each, after a sync.
func (s *Site) Image(ctx context.Context) []Result {
	name := fmt.Sprintf("image write, %d MiB into a slot file, vs zstd|dd+sha256sum", s.opts.ImageSize>>20)
	target := Target{Kind: MaxRatio, Limit: 1.1}
	m, err := s.imageRelease(ctx)
	if err != nil {
		return []Result{failed("3", name, "s", target, err)}
	}
	img := m.Image
	// Every rep writes a new slot file and none is removed until the run
	// ends: freeing a GiB (the file system discards it) would slow the
	// next rep's writes.
	slot := func(side, rep string) string { return filepath.Join(s.opts.Dir, "image", "slot-"+side+"-"+rep) }
	agent, shell, err := s.alternate(ctx, "image write",
		func(rep string) (time.Duration, error) { return s.imageAgent(ctx, img, slot("agent", rep)) },
		func(rep string) (time.Duration, error) { return s.imageShell(ctx, img, slot("shell", rep)) })
	if err != nil {
		return []Result{failed("3", name, "s", target, err)}
	}
	return []Result{{ID: "3", Name: name, Unit: "s", Value: sec(agent), Baseline: sec(shell), Target: target}}
}

// imageAgent writes the image into a new slot file as the engine does after
// the download, and returns how long it took.
func (s *Site) imageAgent(ctx context.Context, img *manifest.Image, slot string) (time.Duration, error) {
	if err := writeFile(slot, nil, 0o600); err != nil {
		return 0, err
	}
	if err := syncAll(); err != nil {
		return 0, err
	}
	start := time.Now()
	f, err := os.Open(s.artifactPath(img.Artifact))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	zr, err := archive.NewReader(f, img.RawSize)
	if err != nil {
		return 0, err
	}
	defer zr.Close()
	if err := abslot.Write(ctx, slot, zr, img.RawSize, img.RawSHA256, nil); err != nil {
		return 0, err
	}
	return time.Since(start), evict(slot)
}

// imageShell runs the shell baseline into a new slot file. It records the
// pipeline's peak memory (zstd's and dd's, which run at once) for figure 4.
func (s *Site) imageShell(ctx context.Context, img *manifest.Image, slot string) (time.Duration, error) {
	if err := os.MkdirAll(filepath.Dir(slot), 0o755); err != nil {
		return 0, err
	}
	if err := syncAll(); err != nil {
		return 0, err
	}
	start := time.Now()
	zstd := exec.CommandContext(ctx, "zstd", "-dcq", s.artifactPath(img.Artifact))
	dd := exec.CommandContext(ctx, "dd", "of="+slot, "bs=4M", "conv=fsync", "status=none")
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	var zerr, derr strings.Builder
	zstd.Stdout, zstd.Stderr = w, &zerr
	dd.Stdin, dd.Stderr = r, &derr
	if err := zstd.Start(); err != nil {
		r.Close()
		w.Close()
		return 0, err
	}
	err = dd.Start()
	r.Close()
	w.Close()
	if err != nil {
		zstd.Wait()
		return 0, err
	}
	// Peak memory: sampled from /proc while they run. (The rusage of a
	// child of this big process is no good: Linux counts the parent's peak
	// into it at exec.)
	stopWatch := make(chan struct{})
	peak := make(chan int64, 1)
	go func() { peak <- watchHWM(stopWatch, zstd.Process.Pid, dd.Process.Pid) }()
	zres, dres := zstd.Wait(), dd.Wait()
	close(stopWatch)
	rss := <-peak
	if zres != nil || dres != nil {
		return 0, fmt.Errorf("zstd: %v %s; dd: %v %s", zres, zerr.String(), dres, derr.String())
	}
	out, err := exec.CommandContext(ctx, "sha256sum", slot).Output()
	if err != nil {
		return 0, fmt.Errorf("sha256sum: %w", err)
	}
	d := time.Since(start)
	if got, _, _ := strings.Cut(string(out), " "); got != img.RawSHA256 {
		return 0, fmt.Errorf("slot sha256 %s, want %s", got, img.RawSHA256)
	}
	s.shellRSS = max(s.shellRSS, rss)
	return d, evict(slot)
}

// watchHWM samples the peak resident memory (VmHWM) of running processes
// every 10ms until stop closes, and returns the sum of the last samples.
func watchHWM(stop <-chan struct{}, pids ...int) int64 {
	last := make([]int64, len(pids))
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		for i, pid := range pids {
			if _, hwm, err := procRSS(pid); err == nil {
				last[i] = hwm
			}
		}
		select {
		case <-stop:
			var sum int64
			for _, v := range last {
				sum += v
			}
			return sum
		case <-t.C:
		}
	}
}

// fileSHA256 hashes the first n bytes of path.
func fileSHA256(path string, n int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, n); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
