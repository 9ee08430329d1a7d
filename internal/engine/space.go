package engine

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/quantix-os/update-agent/internal/fetch"
	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/internal/manifest"
)

// ErrNoSpace reports a file system without room for an update's downloads or
// its new trees. The update stops before it writes anything.
var ErrNoSpace = errors.New("not enough free space")

// FreeSpace reports the bytes an unprivileged writer may still use on the
// file system of path, and that file system's device number (two paths on
// one device share its space).
type FreeSpace func(path string) (free uint64, dev uint64, err error)

// statFS is the FreeSpace of the host.
func statFS(path string) (uint64, uint64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, 0, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return fs.Bavail * uint64(fs.Bsize), st.Dev, nil
}

// need is bytes an update is about to write below path.
type need struct {
	path  string
	bytes int64
}

// checkSpace fails with ErrNoSpace when a file system lacks room for what
// is needed on it plus Options.SpaceReserve. Needs on one device add up.
func (e *Engine) checkSpace(needs []need) error {
	type fsNeed struct {
		path       string
		need, free int64
	}
	byDev := map[uint64]*fsNeed{}
	for _, n := range needs {
		if n.bytes <= 0 {
			continue
		}
		p := existingAncestor(n.path)
		free, dev, err := e.opts.FreeSpace(p)
		if err != nil {
			return fmt.Errorf("free space: %w", err)
		}
		f := byDev[dev]
		if f == nil {
			f = &fsNeed{path: p, free: int64(min(free, uint64(1)<<62))}
			byDev[dev] = f
		}
		f.need += n.bytes
	}
	fss := make([]*fsNeed, 0, len(byDev))
	for _, f := range byDev {
		fss = append(fss, f)
	}
	slices.SortFunc(fss, func(a, b *fsNeed) int { return cmp.Compare(a.path, b.path) })
	reserve := max(e.opts.SpaceReserve, 0)
	for _, f := range fss {
		if f.need+reserve > f.free {
			return fmt.Errorf("disk space on %s: the update needs %s there and keeps %s free, but %s is free: %w",
				f.path, mib(f.need), mib(reserve), mib(f.free), ErrNoSpace)
		}
	}
	return nil
}

// componentNeeds are what the components not yet staged still need: their
// downloads in the state dir and their unpacked trees beside their install
// dirs (the old trees stay, as backups, until the update ends).
func componentNeeds(op *journal.Operation, m *manifest.Manifest) []need {
	var needs []need
	for _, c := range op.Components {
		mc, ok := findComponent(m, c.Name)
		if !ok {
			continue
		}
		switch c.Step {
		case journal.StepPending:
			needs = append(needs, need{filepath.Dir(c.Download), mc.Size - partSize(c.Download)})
			needs = append(needs, need{filepath.Dir(c.Dir), mc.RawSize})
		case journal.StepDownloaded:
			needs = append(needs, need{filepath.Dir(c.Dir), mc.RawSize})
		}
	}
	return needs
}

// partSize is how much of a download a previous run left in its .part file.
func partSize(download string) int64 {
	fi, err := os.Stat(fetch.PartPath(download))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// existingAncestor is p or its closest ancestor that exists: where a
// directory the update will create is to be.
func existingAncestor(p string) string {
	for {
		if _, err := os.Stat(p); err == nil {
			return p
		}
		parent := filepath.Dir(p)
		if parent == p {
			return p
		}
		p = parent
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
