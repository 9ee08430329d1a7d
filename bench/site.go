package bench

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/internal/release"
)

// Options configure a run.
type Options struct {
	// Dir holds everything the run writes (releases, node state, slots,
	// extracted trees); the caller removes it.
	Dir string
	// Exe is the qx-bench binary, run as the infra child (InfraCommand).
	Exe string
	// Agent is the agent binary figure 4 runs.
	Agent string
	// Fleet sizes of figure 1; Rounds timed rounds per size (the median counts).
	Fleet  []int
	Rounds int
	// ComponentSize is the least compressed size of figure 2's archive.
	ComponentSize int64
	// ImageSize is the raw size of the image of figures 3 and 4.
	ImageSize int64
	// Reps is how many times figures 2 and 3 run each side (the median counts).
	Reps int
	// EventAgents, EventRate (events a second, all agents together) and
	// EventSeconds shape figure 5.
	EventAgents  int
	EventRate    int
	EventSeconds int
	// Sources are directories of real files that fill the component and the
	// image, in order of preference.
	Sources []string
	// InodeSettle is the longest figure 2 waits for file creation to be fast
	// (see settleInodes); 0 does not wait.
	InodeSettle time.Duration
	Logger      *slog.Logger
}

// Site is a run's shared state: the signing key, the release repository and
// the infra child serving it.
type Site struct {
	opts Options
	log  *slog.Logger
	key  ed25519.PrivateKey
	pub  ed25519.PublicKey
	repo string
	in   *infra

	imageManifest *manifest.Manifest // figures 3 and 4's release, once made
	shellRSS      int64              // peak RSS of zstd | dd in figure 3's baseline
}

// Open prepares a run: checks the tools the baselines need, makes a signing
// key and an empty repository, and starts the infra child.
func Open(opts Options) (*Site, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := CheckTools(); err != nil {
		return nil, err
	}
	if err := checkSpace(opts); err != nil {
		return nil, err
	}
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("bench: key: %w", err)
	}
	s := &Site{opts: opts, log: opts.Logger, key: key, pub: pub, repo: filepath.Join(opts.Dir, "repo")}
	if err := os.MkdirAll(s.repo, 0o755); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	in, err := startInfra(opts.Exe, filepath.Join(opts.Dir, "nats"), s.repo)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	s.in = in
	return s, nil
}

// Close stops the infra child.
func (s *Site) Close() {
	if s.in != nil {
		s.in.stop()
	}
}

// Tools are the commands the shell baselines run.
var Tools = []string{"curl", "zstd", "sha256sum", "dd", "tar", "sync", "sh"}

// CheckTools fails naming every missing baseline command.
func CheckTools() error {
	var missing []string
	for _, t := range Tools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("bench: missing commands the baselines need: %s", strings.Join(missing, ", "))
	}
	return nil
}

// checkSpace fails when the file system of opts.Dir cannot hold what the
// run keeps until it ends: per rep of figure 2 two extracted trees (about
// 3.3 times the archive each) and a download, per rep of figure 3 two slot
// files, the releases, and figure 4's host.
func checkSpace(opts Options) error {
	reps := int64(max(opts.Reps, 1) + opts.Reps%2 + 1) // even, and a warm-up
	need := reps*(7*opts.ComponentSize+opts.ComponentSize) + 3*opts.ComponentSize +
		reps*2*opts.ImageSize + 3*opts.ImageSize + 1<<30
	var st unix.Statfs_t
	if err := unix.Statfs(opts.Dir, &st); err != nil {
		return fmt.Errorf("bench: free space of %s: %w", opts.Dir, err)
	}
	if free := int64(st.Bavail) * st.Bsize; free < need {
		return fmt.Errorf("bench: %s has %.1f GB free, the run needs about %.1f GB (fewer --reps or a smaller --image-mib need less)",
			opts.Dir, float64(free)/1e9, float64(need)/1e9)
	}
	return nil
}

// publish creates a release on channel and returns its manifest.
func (s *Site) publish(ctx context.Context, channel, version string, comps map[string]string, image string) (*manifest.Manifest, error) {
	m, err := release.Create(ctx, release.Spec{
		Repo: s.repo, Channel: channel, Version: version, Notes: "bench release " + version,
		Components: comps, Image: image, Key: s.key,
	})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	return m, nil
}

// signed is the channel's signed envelope as the Update Server serves it.
func (s *Site) signed(channel string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(s.repo, "channels", channel, "manifest.signed.json"))
	if err != nil {
		return nil, fmt.Errorf("bench: signed manifest: %w", err)
	}
	return b, nil
}

// writeFile writes data to p, creating its directory.
func writeFile(p string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, data, perm)
}

// hostRoot makes a host root whose versions.json says version is installed,
// for the components named.
func hostRoot(dir, version string, comps ...string) error {
	var b strings.Builder
	fmt.Fprintf(&b, `{"os":%q,"components":{`, version)
	for i, c := range comps {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "%q:%q", c, version)
	}
	b.WriteString("}}")
	return writeFile(filepath.Join(dir, "etc/quantix/versions.json"), []byte(b.String()), 0o644)
}

// syncAll flushes every filesystem so that one measurement's writeback does
// not land in the next one's time.
func syncAll() error {
	out, err := exec.Command("sync").CombinedOutput()
	if err != nil {
		return fmt.Errorf("sync: %w: %s", err, out)
	}
	return nil
}

// copyFile copies src to dst (used when a hard link cannot be made).
func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

var errStopped = errors.New("stopped")

// alternate runs agent and shell Reps times each (rounded up to even), after
// one untimed warm-up of each, and returns the medians. Which side goes
// first swaps from rep to rep, each as often as the other: on this machine
// the second run of a pair can be slower (or faster) than the first, and a
// disk that gets faster or slower during the figure must favour neither.
// Each run gets its rep's name ("warm-up", "0", "1", ...) for its files, and
// evicts them from the page cache when done (see evict).
func (s *Site) alternate(ctx context.Context, what string, agent, shell func(rep string) (time.Duration, error)) (time.Duration, time.Duration, error) {
	var as, ss []time.Duration
	reps := s.opts.Reps + s.opts.Reps%2
	for i := -1; i < reps; i++ {
		rep := "warm-up"
		if i >= 0 {
			rep = strconv.Itoa(i)
		}
		var a, sh time.Duration
		runAgent := func() (err error) {
			if a, err = agent(rep); err != nil {
				return fmt.Errorf("agent: %w", err)
			}
			return nil
		}
		runShell := func() (err error) {
			if sh, err = shell(rep); err != nil {
				return fmt.Errorf("shell: %w", err)
			}
			return nil
		}
		first, second := runAgent, runShell
		if i%2 != 0 {
			first, second = runShell, runAgent
		}
		if err := first(); err != nil {
			return 0, 0, err
		}
		if err := second(); err != nil {
			return 0, 0, err
		}
		s.log.Info(what, "rep", rep, "agent", a, "shell", sh)
		if i >= 0 {
			as, ss = append(as, a), append(ss, sh)
		}
		if err := ctx.Err(); err != nil {
			return 0, 0, err
		}
	}
	return median(as), median(ss), nil
}

// Creating a file should cost well under inodeSlow; see settleInodes.
const (
	inodeProbeFiles = 500
	inodeSlow       = 100 * time.Microsecond
)

// settleInodes waits, up to Options.InodeSettle, until creating a file in
// dir is fast. ext4 without a journal (as on this kind of machine) passes
// over inodes freed in the last minute (six, while their inode table block
// is dirty) when it allocates one. After a mass deletion (the previous
// run's clean-up, another test suite's) that scan costs every new file up to
// a millisecond of CPU for about five minutes, and figure 2, which creates
// 15,000 files per run, would measure how that state decays more than the
// pipelines. A machine that other work keeps churning does not settle, and
// the figure is measured anyway. It returns the last probe.
func (s *Site) settleInodes(ctx context.Context, dir string) time.Duration {
	deadline := time.Now().Add(s.opts.InodeSettle)
	for {
		per, err := probeInodes(filepath.Join(dir, "inode-probe"))
		if err != nil {
			s.log.Warn("inode probe failed", "err", err)
			return 0
		}
		if per < inodeSlow || time.Now().After(deadline) || ctx.Err() != nil {
			if per >= inodeSlow {
				s.log.Warn("file creation still slow; measuring anyway", "per file", per)
			}
			return per
		}
		s.log.Info("file creation slow after a mass deletion; waiting", "per file", per)
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
	}
}

// Conditions describes the machine's state for the run's header: the load
// average and what creating a file in dir costs.
func Conditions(dir string) string {
	load := "unknown"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			load = strings.Join(f[:3], " ")
		}
	}
	create := "unknown"
	if per, err := probeInodes(filepath.Join(dir, "inode-probe")); err == nil {
		create = per.Round(time.Microsecond).String()
	}
	return fmt.Sprintf("load average %s, creating a file %s", load, create)
}

// probes numbers probeInodes' directories.
var probes atomic.Int64

// probeInodes times creating inodeProbeFiles empty files in a new directory
// below dir, per file. It leaves them: removing them would feed the very
// slowness it measures (they go with the run's files).
func probeInodes(dir string) (time.Duration, error) {
	dir = filepath.Join(dir, strconv.FormatInt(probes.Add(1), 10))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	start := time.Now()
	for i := range inodeProbeFiles {
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(i)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return 0, err
		}
		f.Close()
	}
	return time.Since(start) / inodeProbeFiles, nil
}

// evict drops the (synced) files under path from the page cache. On this
// kind of machine (a microVM) a page the guest has never used costs a trip
// to the host the first time: a run that filled the cache with new pages
// would leave the next run to pay for fresh ones, about 2.5 s a GiB. Evicted
// pages are free and warm, and each run finds the same.
func evict(path string) error {
	return filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	})
}

// publishSmall releases version on channel with one small component, the
// shape of a fleet check's release.
func (s *Site) publishSmall(ctx context.Context, channel, version, component string) (*manifest.Manifest, error) {
	src := filepath.Join(s.opts.Dir, "src", channel, version, component)
	if err := writeFile(filepath.Join(src, "bin", component), []byte(component+" "+version+"\n"), 0o755); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	if err := writeFile(filepath.Join(src, "VERSION"), []byte(version+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	return s.publish(ctx, channel, version, map[string]string{component: src}, "")
}
