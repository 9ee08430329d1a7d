package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quantix-os/update-agent/internal/archive"
	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/subjects"
)

func findComponent(m *manifest.Manifest, name string) (manifest.Component, bool) {
	for _, c := range m.Components {
		if c.Name == name {
			return c, true
		}
	}
	return manifest.Component{}, false
}

// runComponents downloads every component, stages all of them, and only then
// swaps them into place one by one; a failure after the first swap rolls all
// of them back, so the host never runs half a release.
func (e *Engine) runComponents(ctx context.Context, op *journal.Operation, m *manifest.Manifest) error {
	var total, done int64
	for _, c := range op.Components {
		mc, ok := findComponent(m, c.Name)
		if !ok {
			return fmt.Errorf("component %s is not in the manifest of %s", c.Name, m.Version)
		}
		total += mc.Size
		if c.Step != journal.StepPending {
			done += mc.Size
		}
	}
	// Nothing is written before the disks are known to have room.
	if err := e.checkSpace(componentNeeds(op, m)); err != nil {
		return err
	}
	e.emit(subjects.UpdateEvent{Type: subjects.EventStatus, OperationID: op.ID, Status: subjects.StatusDownloading, Version: op.Version,
		Message: fmt.Sprintf("downloading version %s (%d components)", op.Version, len(op.Components))})

	for i, c := range op.Components {
		if c.Step != journal.StepPending {
			continue
		}
		mc, _ := findComponent(m, c.Name)
		if err := os.MkdirAll(filepath.Dir(c.Download), 0o700); err != nil {
			return fmt.Errorf("download %s: %w", c.Name, err)
		}
		base := done
		err := e.opts.Fetcher.Download(ctx, mc.Artifact, c.Download, mc.Size, mc.SHA256, func(d, _ int64) {
			e.progressEvent(op.ID, c.Name, subjects.StatusDownloading, base+d, total, false)
			e.opts.Failpoint("download-progress")
		})
		if err != nil {
			return e.stopped(ctx, fmt.Errorf("download %s: %w", c.Name, err))
		}
		done += mc.Size
		e.progressEvent(op.ID, c.Name, subjects.StatusDownloading, done, total, true)
		if err := e.setComponent(i, func(jc *journal.Component) { jc.Step = journal.StepDownloaded }); err != nil {
			return err
		}
		op.Components[i].Step = journal.StepDownloaded
		e.opts.Failpoint("downloaded")
	}

	if err := e.setPhase(journal.PhaseStaging); err != nil {
		return err
	}
	e.emit(subjects.UpdateEvent{Type: subjects.EventStatus, OperationID: op.ID, Status: subjects.StatusApplying, Version: op.Version,
		Message: "verifying and staging components"})
	for i, c := range op.Components {
		if c.Step != journal.StepDownloaded {
			continue
		}
		mc, _ := findComponent(m, c.Name)
		e.opts.Failpoint("staging")
		if err := stage(ctx, c, mc); err != nil {
			return e.stopped(ctx, err)
		}
		e.opts.Failpoint("extracted")
		if err := e.setComponent(i, func(jc *journal.Component) { jc.Step = journal.StepStaged }); err != nil {
			return err
		}
		op.Components[i].Step = journal.StepStaged
		e.opts.Failpoint("staged")
	}

	if err := context.Cause(ctx); ctx.Err() != nil {
		e.removeStaging(op)
		return err
	}
	if err := e.setPhase(journal.PhaseInstalling); err != nil {
		return err
	}
	for i, c := range op.Components {
		if c.Step == journal.StepDone {
			continue
		}
		e.emit(subjects.UpdateEvent{Type: subjects.EventStatus, OperationID: op.ID, Status: subjects.StatusApplying, Version: op.Version,
			Component: c.Name, Message: "installing " + c.Name + " " + c.Version})
		err := e.installOne(i, &op.Components[i])
		if err == nil && ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		if err != nil {
			e.rollback(op)
			var ce errCancelled
			if errors.As(err, &ce) {
				return err
			}
			return errRolledBack{err}
		}
	}
	return nil
}

// stopped prefers the cancel reason over the error it caused.
func (e *Engine) stopped(ctx context.Context, err error) error {
	var ce errCancelled
	if cause := context.Cause(ctx); errors.As(cause, &ce) {
		return ce
	}
	return err
}

// stage extracts a verified download into the component's staging dir, next
// to its install dir so the swap is a rename on one filesystem.
func stage(ctx context.Context, c journal.Component, mc manifest.Component) error {
	if err := os.RemoveAll(c.Staging); err != nil {
		return fmt.Errorf("stage %s: %w", c.Name, err)
	}
	if err := os.MkdirAll(c.Staging, 0o755); err != nil {
		return fmt.Errorf("stage %s: %w", c.Name, err)
	}
	f, err := os.Open(c.Download)
	if err != nil {
		os.RemoveAll(c.Staging)
		return fmt.Errorf("stage %s: %w", c.Name, err)
	}
	defer f.Close()
	if _, err := archive.Extract(ctx, f, c.Staging, mc.RawSize); err != nil {
		os.RemoveAll(c.Staging)
		return fmt.Errorf("stage %s: %w", c.Name, err)
	}
	return nil
}

func (e *Engine) removeStaging(op *journal.Operation) {
	for _, c := range op.Components {
		os.RemoveAll(c.Staging)
	}
}

// putBack moves the old tree at old to dir. When dir holds something else
// (replace), the two are exchanged, so dir is never absent, and the other
// tree, now at old, is removed by the caller; without the exchange dir is
// removed first.
func putBack(old, dir string, replace bool) error {
	if !exists(dir) {
		return os.Rename(old, dir)
	}
	if !replace {
		// Neither tree: something else made it. Keep the old tree where
		// it is for the operator rather than guess.
		return fmt.Errorf("%s holds neither the old nor the new tree; the old one is at %s", dir, old)
	}
	err := exchange(old, dir)
	if err == nil || !errors.Is(err, errNoExchange) {
		return err
	}
	return replaceDir(old, dir)
}

// replaceDir removes dir and moves the tree at src there.
func replaceDir(src, dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(src, dir)
}

// sameInode reports whether p is the file with inode ino.
func sameInode(p string, ino uint64) bool {
	n, err := inode(p)
	return err == nil && n == ino
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// installOne swaps component c into place, restarts its service and checks its
// health. Each step is journaled before it touches the tree, so recovery
// knows what may have changed.
func (e *Engine) installOne(i int, c *journal.Component) error {
	hadOld := exists(c.Dir)
	ino, err := inode(c.Staging)
	if err != nil {
		return fmt.Errorf("install %s: staging: %w", c.Name, err)
	}
	if err := e.setComponent(i, func(jc *journal.Component) {
		jc.Step, jc.HadOld, jc.StagingIno = journal.StepSwapping, hadOld, ino
	}); err != nil {
		return err
	}
	c.Step, c.HadOld, c.StagingIno = journal.StepSwapping, hadOld, ino
	e.opts.Failpoint("swapping")
	parent := filepath.Dir(c.Dir)
	switch {
	case hadOld:
		if err := e.swapIn(c); err != nil {
			return fmt.Errorf("install %s: %w", c.Name, err)
		}
	default:
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return fmt.Errorf("install %s: %w", c.Name, err)
		}
		if err := os.Rename(c.Staging, c.Dir); err != nil {
			return fmt.Errorf("install %s: move in: %w", c.Name, err)
		}
		e.opts.Failpoint("moved-in")
	}
	if err := journal.SyncDir(parent); err != nil {
		return fmt.Errorf("install %s: %w", c.Name, err)
	}
	if err := e.setComponent(i, func(jc *journal.Component) { jc.Step = journal.StepSwapped }); err != nil {
		return err
	}
	c.Step = journal.StepSwapped
	e.opts.Failpoint("swapped")
	comp := e.opts.Components[c.Name]
	if comp.Service != "" {
		if err := e.restart(comp.Service); err != nil {
			return fmt.Errorf("install %s: %w", c.Name, err)
		}
		e.opts.Failpoint("restarted")
	}
	if len(comp.Health) > 0 {
		if err := e.health(c.Name, comp); err != nil {
			return fmt.Errorf("install %s: %w", c.Name, err)
		}
	}
	e.opts.Failpoint("healthy")
	if err := e.setComponent(i, func(jc *journal.Component) { jc.Step = journal.StepDone }); err != nil {
		return err
	}
	c.Step = journal.StepDone
	e.opts.Failpoint("component-done")
	return nil
}

// swapIn replaces the install dir of c, which exists, with its staging tree
// and keeps the old tree as the backup. It exchanges the two trees in one
// rename (RENAME_EXCHANGE), so the install dir is never absent, not even for
// a service that starts in between; then the old tree, now at the staging
// path, becomes the backup. A file system without the exchange gets two
// renames, with an instant between them when the dir is absent (recovery
// handles both: see restoreOne).
func (e *Engine) swapIn(c *journal.Component) error {
	err := exchange(c.Staging, c.Dir)
	switch {
	case err == nil:
		e.opts.Failpoint("moved-in")
		if err := os.Rename(c.Staging, c.Backup); err != nil {
			return fmt.Errorf("back up: %w", err)
		}
		e.opts.Failpoint("backed-up")
		return nil
	case errors.Is(err, errNoExchange):
		e.log.Debug("swapping with two renames", "dir", c.Dir, "err", err)
	default:
		return fmt.Errorf("swap in: %w", err)
	}
	if err := os.Rename(c.Dir, c.Backup); err != nil {
		return fmt.Errorf("back up: %w", err)
	}
	e.opts.Failpoint("backed-up")
	if err := os.Rename(c.Staging, c.Dir); err != nil {
		return fmt.Errorf("swap in: %w", err)
	}
	e.opts.Failpoint("moved-in")
	return nil
}

// errNoExchange is exchange's error on a file system that cannot do it.
var errNoExchange = errors.New("rename exchange not supported")

// exchange swaps the trees at paths a and b atomically.
func exchange(a, b string) error {
	err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("exchange %s and %s: %w (%w)", a, b, errNoExchange, err)
	default:
		return &os.LinkError{Op: "exchange", Old: a, New: b, Err: err}
	}
}

// inode is the inode number of p, which identifies a tree across renames.
func inode(p string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return 0, &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	return st.Ino, nil
}

// restoreOne puts component c back as it was before the operation, whatever
// point of the swap it reached. It is idempotent, so a crash during recovery
// is recovered by running it again.
func restoreOne(c journal.Component) error {
	switch c.Step {
	case journal.StepSwapping, journal.StepSwapped, journal.StepDone:
	default:
		return os.RemoveAll(c.Staging)
	}
	if c.HadOld {
		// Where the old tree is: in the backup, at the staging path (swapped
		// by exchange, not yet backed up), or still in place. The new tree
		// is known by its inode wherever it is.
		isNew := func(p string) bool { return c.StagingIno != 0 && sameInode(p, c.StagingIno) }
		old := ""
		switch {
		case exists(c.Backup) && !isNew(c.Backup):
			old = c.Backup
		case exists(c.Staging) && isNew(c.Dir):
			old = c.Staging
		}
		var err error
		switch {
		case old != "" && c.StagingIno == 0:
			// A journal from before the inode was kept: replace the dir
			// outright, which is safe to repeat.
			err = replaceDir(old, c.Dir)
		case old != "":
			err = putBack(old, c.Dir, isNew(c.Dir))
		}
		if err != nil {
			return fmt.Errorf("restore %s: %w", c.Name, err)
		}
		// What is left at the backup path is the new tree, exchanged out.
		if err := os.RemoveAll(c.Backup); err != nil {
			return fmt.Errorf("restore %s: %w", c.Name, err)
		}
	} else if !exists(c.Staging) {
		// The staging tree was moved into place: the install dir is the new one.
		if err := os.RemoveAll(c.Dir); err != nil {
			return fmt.Errorf("restore %s: %w", c.Name, err)
		}
	}
	if err := os.RemoveAll(c.Staging); err != nil {
		return fmt.Errorf("restore %s: %w", c.Name, err)
	}
	return journal.SyncDir(filepath.Dir(c.Dir))
}

// rollback restores every component the operation touched, newest first,
// restarting the services that ran new code, and journals each.
func (e *Engine) rollback(op *journal.Operation) {
	e.setPhase(journal.PhaseRollingBack)
	e.opts.Failpoint("rolling-back")
	for i := len(op.Components) - 1; i >= 0; i-- {
		c := op.Components[i]
		if err := restoreOne(c); err != nil {
			e.log.Error("rollback", "component", c.Name, "err", err)
			continue
		}
		e.opts.Failpoint("restored")
		ranNew := c.Step == journal.StepSwapped || c.Step == journal.StepDone
		if c.Step == journal.StepPending || c.Step == journal.StepDownloaded {
			continue
		}
		// Staged or installed: its verified download stays, the staging is gone.
		if err := e.setComponent(i, func(jc *journal.Component) { jc.Step = journal.StepDownloaded }); err != nil {
			e.log.Error("journal rollback", "component", c.Name, "err", err)
		}
		op.Components[i].Step = journal.StepDownloaded
		if svc := e.opts.Components[c.Name].Service; ranNew && svc != "" {
			if err := e.restart(svc); err != nil {
				e.log.Error("restart after rollback", "service", svc, "err", err)
			}
		}
		e.log.Info("rolled back", "component", c.Name, "to", c.From)
	}
}

// recover runs at start-up, before anything else: an operation whose install
// was interrupted is rolled back to the old tree (the resume then installs
// again from the verified downloads); one that finished every component is
// left to be finished forward.
func (e *Engine) recover() error {
	op := e.op()
	if op == nil {
		e.removeLeftovers()
		return e.writeVersions()
	}
	if op.Kind != subjects.UpdateTypeComponent {
		return e.writeVersions()
	}
	allDone := len(op.Components) > 0
	for _, c := range op.Components {
		allDone = allDone && c.Step == journal.StepDone
	}
	if allDone && op.Cancelled == "" {
		return e.writeVersions()
	}
	e.log.Warn("recovering interrupted operation", "op", op.ID, "phase", op.Phase)
	e.rollback(op)
	return e.writeVersions()
}

func (e *Engine) restart(service string) error {
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.RestartTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, e.opts.RCService, service, "restart").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s restart: %w: %s", e.opts.RCService, service, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// health runs the component's health command until it passes or its timeout
// ends: a restarted service may need a moment before it answers.
func (e *Engine) health(name string, comp Component) error {
	timeout := comp.HealthTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		out, err := exec.CommandContext(ctx, comp.Health[0], comp.Health[1:]...).CombinedOutput()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().Add(time.Second).After(deadline) {
			return fmt.Errorf("health check %s failed: %w: %s", name, err, strings.TrimSpace(string(out)))
		}
		time.Sleep(time.Second)
	}
}

func readVersions(p string) (subjects.Versions, error) {
	var v subjects.Versions
	b, err := os.ReadFile(p)
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("read %s: %w", p, err)
	}
	return v, nil
}

// writeVersions publishes the journal's versions in {root}/etc/quantix/versions.json.
func (e *Engine) writeVersions() error {
	v := e.Versions()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	p := filepath.Join(e.opts.Root, VersionsFile)
	if old, err := os.ReadFile(p); err == nil && string(old) == string(b) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return journal.WriteFileAtomic(p, b, 0o644)
}
