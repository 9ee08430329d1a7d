package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/quantix-os/update-agent/internal/abslot"
	"github.com/quantix-os/update-agent/internal/archive"
	"github.com/quantix-os/update-agent/internal/grubenv"
	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/subjects"
)

// GRUB environment variables of the A/B boot rule (deploy/grub).
const (
	EnvSlot     = "qx_slot"
	EnvTrySlot  = "qx_try_slot"
	EnvTries    = "qx_tries"
	defaultSlot = "a"
)

// AB configures full-system updates.
type AB struct {
	Slots              map[string]string // "a", "b" → block device (or file in tests)
	GrubEnv            string
	Cmdline            string
	RebootCommand      []string
	MaintenanceTimeout time.Duration
	HealthCommand      []string // run after a trial boot, before commit
}

// Maintainer asks vDC to drain the host before a reboot. Acquire returns
// once vDC says the host is ready; onEvent sees every state on the way.
type Maintainer interface {
	Acquire(ctx context.Context, req subjects.MaintenanceRequest, onEvent func(subjects.MaintenanceEvent)) (subjects.MaintenanceEvent, error)
	Release(ctx context.Context, rel subjects.MaintenanceRelease) error
}

// SetMaintainer attaches vDC's maintenance coordinator. Call before Start.
// Without one (a standalone host) full updates proceed without a drain.
func (e *Engine) SetMaintainer(m Maintainer) { e.maint = m }

// errAwaitReboot ends the operation's goroutine while the journal keeps the
// operation: the trial boot is armed and only a reboot moves it on.
var errAwaitReboot = errors.New("waiting for reboot")

// BootSlot is the slot the host booted from, or "" when A/B is off or unknown.
func (e *Engine) BootSlot() string {
	if e.opts.AB == nil {
		return ""
	}
	s, err := abslot.BootedSlot(e.opts.AB.Cmdline)
	if err != nil {
		return ""
	}
	return s
}

// runFull is the A/B flow: download and verify the image, drain the host,
// stream the image into the inactive slot, read it back, arm a one-shot trial
// boot, and reboot. What happens after the reboot is afterBoot's.
func (e *Engine) runFull(ctx context.Context, op *journal.Operation, m *manifest.Manifest) error {
	ab := e.opts.AB
	img := m.Image
	dl := filepath.Join(e.downloadDir(op.Version), path.Base(img.Artifact))
	if op.Phase == journal.PhaseDownloading {
		if err := e.checkSpace([]need{{filepath.Dir(dl), img.Size - partSize(dl)}}); err != nil {
			return err
		}
		e.emit(subjects.UpdateEvent{Type: subjects.EventStatus, OperationID: op.ID, Status: subjects.StatusDownloading, Version: op.Version,
			Message: "downloading system image " + op.Version})
		if err := os.MkdirAll(filepath.Dir(dl), 0o700); err != nil {
			return fmt.Errorf("download image: %w", err)
		}
		err := e.opts.Fetcher.Download(ctx, img.Artifact, dl, img.Size, img.SHA256, func(d, t int64) {
			e.progressEvent(op.ID, "image", subjects.StatusDownloading, d, t, false)
			e.opts.Failpoint("image-download-progress")
		})
		if err != nil {
			return e.stopped(ctx, fmt.Errorf("download image: %w", err))
		}
		e.progressEvent(op.ID, "image", subjects.StatusDownloading, img.Size, img.Size, true)
		if err := e.setPhase(journal.PhaseMaintenance); err != nil {
			return err
		}
		op.Phase = journal.PhaseMaintenance
		e.opts.Failpoint("image-downloaded")
	}

	// The download is verified before the VMs are drained, so they move only
	// for an update that can proceed, and stay away only for the write.
	e.opts.Failpoint("maintenance-acquiring")
	if err := e.acquireMaintenance(ctx, op); err != nil {
		return err
	}
	e.opts.Failpoint("maintenance-acquired")

	booted, err := abslot.BootedSlot(ab.Cmdline)
	if err != nil {
		return fmt.Errorf("booted slot: %w", err)
	}
	if op.TargetSlot != "" && booted == op.TargetSlot {
		// The host went down after the trial was armed but before the journal
		// said so, and booted the trial: the image is written and verified.
		// Decide the trial; writing "the other slot" now would overwrite the
		// committed fallback.
		return e.afterBoot(ctx, op)
	}
	target, err := abslot.Other(booted)
	if err != nil {
		return err
	}
	dev := ab.Slots[target]
	if err := e.store.Update(func(s *journal.State) error {
		s.Op.Phase, s.Op.FromSlot, s.Op.TargetSlot = journal.PhaseWriting, booted, target
		return nil
	}); err != nil {
		return err
	}
	op.FromSlot, op.TargetSlot = booted, target
	e.emit(subjects.UpdateEvent{Type: subjects.EventStatus, OperationID: op.ID, Status: subjects.StatusApplying, Version: op.Version,
		Component: "image", Message: fmt.Sprintf("writing system image %s to slot %s", op.Version, target)})
	e.opts.Failpoint("writing")
	f, err := os.Open(dl)
	if err != nil {
		return fmt.Errorf("open image: %w", err)
	}
	defer f.Close()
	zr, err := archive.NewReader(f, img.RawSize)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	defer zr.Close()
	err = abslot.Write(ctx, dev, zr, img.RawSize, img.RawSHA256, func(d, t int64) {
		e.progressEvent(op.ID, "image", subjects.StatusApplying, d, t, false)
		e.opts.Failpoint("image-progress")
	})
	if err != nil {
		return e.stopped(ctx, fmt.Errorf("write slot %s: %w", target, err))
	}
	e.opts.Failpoint("image-written")
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	err = grubenv.Update(ab.GrubEnv, func(env *grubenv.Env) error {
		if _, ok := env.Get(EnvSlot); !ok {
			env.Set(EnvSlot, booted)
		}
		env.Set(EnvTrySlot, target)
		env.Set(EnvTries, "1")
		return nil
	})
	if err != nil {
		return fmt.Errorf("arm trial boot: %w", err)
	}
	e.opts.Failpoint("grubenv-armed")
	if err := e.setPhase(journal.PhaseRebooting); err != nil {
		return err
	}
	e.opts.Failpoint("armed")
	e.emit(subjects.UpdateEvent{Type: subjects.EventStatus, OperationID: op.ID, Status: subjects.StatusRebootRequired, Version: op.Version,
		Message: fmt.Sprintf("system image %s is in slot %s: reboot to try it", op.Version, target)})
	if op.ForceReboot {
		e.reboot()
	}
	return errAwaitReboot
}

// acquireMaintenance asks vDC for maintenance and waits until the host is
// drained. A maintenance that is cancelled, fails or times out aborts the
// update before anything is written.
func (e *Engine) acquireMaintenance(ctx context.Context, op *journal.Operation) error {
	if e.maint == nil {
		e.log.Warn("no maintenance coordinator (standalone): not draining VMs before the reboot")
		return nil
	}
	timeout := e.opts.AB.MaintenanceTimeout
	if timeout <= 0 {
		timeout = 30 * time.Minute
	}
	mctx, cancel := context.WithTimeoutCause(ctx, timeout, fmt.Errorf("maintenance not ready after %s", timeout))
	defer cancel()
	req := subjects.MaintenanceRequest{NodeID: e.opts.NodeID, MaintenanceID: op.MaintenanceID, TargetVersion: op.Version,
		UpdateType: subjects.UpdateTypeFull, RequiresReboot: true, OperationID: op.ID}
	onEvent := func(ev subjects.MaintenanceEvent) {
		if ev.MaintenanceID != "" && ev.MaintenanceID != op.MaintenanceID {
			op.MaintenanceID = ev.MaintenanceID
			e.store.Update(func(s *journal.State) error {
				if s.Op != nil {
					s.Op.MaintenanceID = ev.MaintenanceID
				}
				return nil
			})
		}
		msg := "maintenance " + string(ev.State)
		if ev.VMsRemaining != nil {
			msg += fmt.Sprintf(" (%d VMs remaining)", *ev.VMsRemaining)
		}
		if ev.Reason != "" {
			msg += ": " + ev.Reason
		}
		// The image is downloaded and verified by now: waiting for the
		// drain is the first step of applying it.
		e.emit(subjects.UpdateEvent{Type: subjects.EventStatus, OperationID: op.ID, Status: subjects.StatusApplying, Version: op.Version, Message: msg})
	}
	ev, err := e.maint.Acquire(mctx, req, onEvent)
	if err == nil {
		onEvent(ev)
		return nil
	}
	if cause := context.Cause(mctx); mctx.Err() != nil && ctx.Err() == nil {
		err = cause
	}
	if !strings.HasPrefix(err.Error(), "maintenance") {
		// The message leads with what failed (metrics count by it).
		err = fmt.Errorf("maintenance: %w", err)
	}
	err = e.stopped(ctx, err)
	outcome := string(subjects.EventFailed)
	var ce errCancelled
	if errors.As(err, &ce) {
		outcome = string(subjects.EventCancelled)
	}
	e.releaseMaintenance(op, outcome)
	op.MaintenanceID = "" // released: finish must not release it again
	return err
}

// releaseMaintenance tells vDC the host is done, retrying a while: VMs wait on it.
// It reports whether vDC acked; it gives up after a minute or at shutdown.
func (e *Engine) releaseMaintenance(op *journal.Operation, outcome string) bool {
	if e.maint == nil || op.MaintenanceID == "" {
		return true
	}
	root := e.ctx
	if root == nil {
		root = context.Background()
	}
	rel := subjects.MaintenanceRelease{MaintenanceID: op.MaintenanceID, NodeID: e.opts.NodeID, Outcome: outcome}
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(root, 5*time.Second)
		err := e.maint.Release(ctx, rel)
		cancel()
		if err == nil {
			e.log.Info("maintenance released", "maintenance", op.MaintenanceID, "outcome", outcome)
			return true
		}
		if time.Now().After(deadline) || root.Err() != nil {
			e.log.Error("release maintenance", "maintenance", op.MaintenanceID, "err", err)
			return false
		}
		select {
		case <-root.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (e *Engine) reboot() {
	cmd := e.opts.AB.RebootCommand
	if len(cmd) == 0 {
		cmd = []string{"reboot"}
	}
	e.log.Info("rebooting into the trial slot", "command", strings.Join(cmd, " "))
	c := exec.Command(cmd[0], cmd[1:]...)
	if out, err := c.CombinedOutput(); err != nil {
		e.log.Error("reboot command failed", "err", err, "output", strings.TrimSpace(string(out)))
	}
}

// afterBoot decides an armed trial after a (re)start: booted into the target
// slot → health check and commit; the trial still armed → keep waiting for the
// reboot; otherwise the bootloader fell back → rolled back.
func (e *Engine) afterBoot(ctx context.Context, op *journal.Operation) error {
	ab := e.opts.AB
	env, err := grubenv.Read(ab.GrubEnv)
	if err != nil {
		return fmt.Errorf("read grub env: %w", err)
	}
	booted, err := abslot.BootedSlot(ab.Cmdline)
	if err != nil {
		return fmt.Errorf("booted slot: %w", err)
	}
	try, _ := env.Get(EnvTrySlot)
	tries, _ := env.Get(EnvTries)
	n, _ := strconv.Atoi(tries)
	switch {
	case booted == op.TargetSlot:
		e.opts.Failpoint("trial-booted")
		if len(ab.HealthCommand) > 0 {
			if err := e.health("system", Component{Health: ab.HealthCommand}); err != nil {
				e.disarm()
				e.reboot() // back to the committed slot
				return errRolledBack{fmt.Errorf("slot %s booted but is unhealthy: %w", booted, err)}
			}
		}
		e.opts.Failpoint("trial-healthy")
		err := grubenv.Update(ab.GrubEnv, func(env *grubenv.Env) error {
			env.Set(EnvSlot, booted)
			env.Unset(EnvTrySlot)
			env.Unset(EnvTries)
			return nil
		})
		if err != nil {
			return fmt.Errorf("commit slot %s: %w", booted, err)
		}
		e.opts.Failpoint("committed")
		return nil
	case try == op.TargetSlot && n > 0:
		e.mu.Lock()
		e.status.Status, e.status.OperationID = subjects.StatusRebootRequired, op.ID
		e.status.Message = fmt.Sprintf("system image %s is in slot %s: reboot to try it", op.Version, op.TargetSlot)
		e.mu.Unlock()
		return errAwaitReboot
	default:
		e.disarm()
		return errRolledBack{fmt.Errorf("trial boot of slot %s failed: the host came back in slot %s, still committed", op.TargetSlot, booted)}
	}
}

// disarm clears the trial so the committed slot boots.
func (e *Engine) disarm() {
	err := grubenv.Update(e.opts.AB.GrubEnv, func(env *grubenv.Env) error {
		env.Unset(EnvTrySlot)
		env.Unset(EnvTries)
		return nil
	})
	if err != nil {
		e.log.Error("disarm trial boot", "err", err)
	}
}

// resumeFull continues a full-system operation after a start.
func (e *Engine) resumeFull(op *journal.Operation) {
	if e.opts.AB == nil {
		e.finish(op, errors.New("full-system update in the journal but A/B is not configured"))
		return
	}
	if op.Phase != journal.PhaseRebooting {
		if op.Attempts >= e.opts.MaxAttempts {
			e.finish(op, fmt.Errorf("operation interrupted %d times; giving up", op.Attempts))
			return
		}
		if err := e.store.Update(func(s *journal.State) error { s.Op.Attempts++; return nil }); err != nil {
			e.log.Error("journal resume", "err", err)
			return
		}
	}
	e.startOp(op.ID)
}
