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

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// installOne swaps component c into place, restarts its service and checks its
// health. Each step is journaled before it touches the tree, so recovery
// knows what may have changed.
func (e *Engine) installOne(i int, c *journal.Component) error {
	hadOld := exists(c.Dir)
	if err := e.setComponent(i, func(jc *journal.Component) { jc.Step = journal.StepSwapping; jc.HadOld = hadOld }); err != nil {
		return err
	}
	c.Step, c.HadOld = journal.StepSwapping, hadOld
	e.opts.Failpoint("swapping")
	parent := filepath.Dir(c.Dir)
	if hadOld {
		if err := os.Rename(c.Dir, c.Backup); err != nil {
			return fmt.Errorf("install %s: back up: %w", c.Name, err)
		}
		e.opts.Failpoint("backed-up")
	} else if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("install %s: %w", c.Name, err)
	}
	if err := os.Rename(c.Staging, c.Dir); err != nil {
		return fmt.Errorf("install %s: swap in: %w", c.Name, err)
	}
	e.opts.Failpoint("moved-in")
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
		if exists(c.Backup) {
			if err := os.RemoveAll(c.Dir); err != nil {
				return fmt.Errorf("restore %s: %w", c.Name, err)
			}
			if err := os.Rename(c.Backup, c.Dir); err != nil {
				return fmt.Errorf("restore %s: %w", c.Name, err)
			}
		}
		// No backup: the old tree was never moved, so it is still in place.
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
