package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"

	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/subjects"
)

var opIDRE = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// errCancelled is the cause a Cancel gives the operation's context.
type errCancelled struct{ reason string }

func (e errCancelled) Error() string { return "cancelled: " + e.reason }

// errRolledBack marks a failure after which the installed tree was put back.
type errRolledBack struct{ err error }

func (e errRolledBack) Error() string { return "rolled back: " + e.err.Error() }
func (e errRolledBack) Unwrap() error { return e.err }

// Apply starts installing the release on the configured channel. The same
// OperationID always gets the same Ack, and its work is done once. A refused
// command gets Accepted false, its reason, and an error wrapping ErrBusy,
// ErrNothingToApply, ErrInvalidRequest or the check's failure.
func (e *Engine) Apply(ctx context.Context, cmd subjects.ApplyCommand) (subjects.Ack, error) {
	select {
	case <-e.started:
	default:
		return subjects.Ack{OperationID: cmd.OperationID, Reason: "agent is starting"}, fmt.Errorf("agent is starting: %w", ErrBusy)
	}
	e.applyMu.Lock()
	defer e.applyMu.Unlock()
	if cmd.OperationID == "" {
		cmd.OperationID = newID()
	}
	if !opIDRE.MatchString(cmd.OperationID) {
		err := fmt.Errorf("operationId %q: must be 1-128 of A-Za-z0-9._:-: %w", cmd.OperationID, ErrInvalidRequest)
		return subjects.Ack{OperationID: cmd.OperationID, Reason: err.Error()}, err
	}
	var prior subjects.Ack
	var seen, pending bool
	e.store.View(func(s *journal.State) {
		prior, seen = s.FindAck(cmd.OperationID)
		pending = s.Op != nil
	})
	if seen {
		return prior, nil
	}
	refuse := func(err error) (subjects.Ack, error) {
		ack := subjects.Ack{OperationID: cmd.OperationID, Reason: err.Error()}
		if uerr := e.store.Update(func(s *journal.State) error { s.RememberAck(ack, e.now()); return nil }); uerr != nil {
			e.log.Error("journal ack", "err", uerr)
		}
		return ack, err
	}
	e.mu.Lock()
	r := e.running
	e.mu.Unlock()
	if r != nil {
		return refuse(fmt.Errorf("operation %s is in progress: %w", r.id, ErrBusy))
	}
	if pending {
		return refuse(fmt.Errorf("an update waits for a reboot: %w", ErrBusy))
	}
	for _, name := range cmd.Components {
		if _, ok := e.opts.Components[name]; !ok {
			return refuse(fmt.Errorf("component %q is not configured on this host: %w", name, ErrInvalidRequest))
		}
	}
	channel := e.Settings().Channel
	c, err := e.check(ctx, channel, nil, cmd.AllowDowngrade)
	if err != nil {
		e.recordRefusal(cmd, err)
		e.setIdleStatus(subjects.StatusError, err.Error())
		return refuse(err)
	}
	m := c.m
	if cmd.Version != "" && cmd.Version != m.Version {
		return refuse(fmt.Errorf("version %s is not offered on channel %s (it offers %s): %w", cmd.Version, channel, m.Version, ErrInvalidRequest))
	}
	cur := e.CurrentVersion()
	if m.Version == cur || (!cmd.AllowDowngrade && !newer(m.Version, cur)) {
		return refuse(fmt.Errorf("version %s is already installed: %w", m.Version, ErrNothingToApply))
	}
	op := &journal.Operation{
		ID: cmd.OperationID, Kind: subjects.UpdateTypeComponent, Version: m.Version, From: cur, Channel: channel,
		Phase: journal.PhaseDownloading, ForceReboot: cmd.ForceReboot, Manifest: c.raw, Started: e.now().UTC(),
	}
	if m.Image != nil && e.opts.AB != nil && len(cmd.Components) == 0 {
		op.Kind = subjects.UpdateTypeFull
	}
	installed := e.Versions().Components
	for _, mc := range m.Components {
		if op.Kind == subjects.UpdateTypeFull {
			break
		}
		comp, ok := e.opts.Components[mc.Name]
		if !ok || (len(cmd.Components) > 0 && !slices.Contains(cmd.Components, mc.Name)) {
			continue
		}
		if installed[mc.Name] == mc.Version && !cmd.AllowDowngrade {
			continue
		}
		staging, backup := sideDirs(comp.Dir)
		op.Components = append(op.Components, journal.Component{
			Name: mc.Name, Version: mc.Version, From: installed[mc.Name], Step: journal.StepPending, Dir: comp.Dir,
			Staging: staging, Backup: backup,
			// One directory per component: two artifacts may share a file
			// name in different directories, and one download must not
			// replace the other after its hash was checked.
			Download: filepath.Join(e.downloadDir(m.Version), mc.Name, path.Base(mc.Artifact)),
		})
	}
	for _, oc := range op.Components {
		// Leftovers of an operation the journal no longer knows are not state.
		os.RemoveAll(oc.Staging)
		os.RemoveAll(oc.Backup)
	}
	ack := subjects.Ack{Accepted: true, OperationID: cmd.OperationID}
	if err := e.store.Update(func(s *journal.State) error {
		s.Op = op
		op.Attempts = 1
		s.RememberAck(ack, e.now())
		return nil
	}); err != nil {
		return subjects.Ack{OperationID: cmd.OperationID, Reason: err.Error()}, fmt.Errorf("apply: %w", err)
	}
	e.log.Info("apply accepted", "op", op.ID, "version", op.Version, "components", len(op.Components))
	e.opts.Failpoint("accepted")
	e.startOp(op.ID)
	return ack, nil
}

// recordRefusal puts an apply that failed its check into the history, so an
// operator sees why nothing happened.
func (e *Engine) recordRefusal(cmd subjects.ApplyCommand, err error) {
	now := e.now().UTC()
	e.store.Update(func(s *journal.State) error {
		s.AddHistory(journal.Entry{OperationID: cmd.OperationID, Kind: subjects.UpdateTypeComponent, Version: cmd.Version,
			FromVersion: s.CurrentVersion, Result: subjects.EventFailed, Error: err.Error(), StartedAt: now, FinishedAt: now})
		return nil
	})
}

// Cancel stops the operation in flight. Whatever it installed is rolled back.
func (e *Engine) Cancel(ctx context.Context, cmd subjects.CancelCommand) (subjects.Ack, error) {
	e.cancelMu.Lock()
	defer e.cancelMu.Unlock()
	e.mu.Lock()
	r := e.running
	e.mu.Unlock()
	if r == nil {
		if op := e.op(); op != nil && op.Phase == journal.PhaseRebooting && (cmd.OperationID == "" || cmd.OperationID == op.ID) {
			// Armed but not rebooted: disarm the trial, the committed slot stays.
			e.disarm()
			reason := cmd.Reason
			if reason == "" {
				reason = "cancelled by operator"
			}
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				e.finish(op, errCancelled{reason})
			}()
			return subjects.Ack{Accepted: true, OperationID: op.ID}, nil
		}
		err := fmt.Errorf("cancel: %w", ErrNoOperation)
		return subjects.Ack{OperationID: cmd.OperationID, Reason: err.Error()}, err
	}
	if cmd.OperationID != "" && cmd.OperationID != r.id {
		err := fmt.Errorf("cancel %s: operation %s is the one in progress: %w", cmd.OperationID, r.id, ErrNoOperation)
		return subjects.Ack{OperationID: cmd.OperationID, Reason: err.Error()}, err
	}
	reason := cmd.Reason
	if reason == "" {
		reason = "cancelled by operator"
	}
	if err := e.store.Update(func(s *journal.State) error {
		if s.Op != nil && s.Op.ID == r.id {
			s.Op.Cancelled = reason
		}
		return nil
	}); err != nil {
		return subjects.Ack{OperationID: r.id, Reason: err.Error()}, fmt.Errorf("cancel: %w", err)
	}
	r.cancel(errCancelled{reason})
	return subjects.Ack{Accepted: true, OperationID: r.id}, nil
}

func (e *Engine) startOp(id string) {
	ctx, cancel := context.WithCancelCause(e.ctx)
	r := &running{id: id, cancel: cancel, done: make(chan struct{})}
	phase := journal.PhaseDownloading
	if op := e.op(); op != nil {
		phase = op.Phase
	}
	e.mu.Lock()
	e.running = r
	e.status.OperationID = id
	e.status.Status = phaseStatus(phase)
	e.status.Message = ""
	e.mu.Unlock()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer close(r.done)
		defer cancel(nil)
		e.runOp(ctx)
	}()
}

// Done returns a channel closed when the operation running now ends (nil when none runs).
func (e *Engine) Done() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.running == nil {
		return nil
	}
	return e.running.done
}

func (e *Engine) op() *journal.Operation {
	var op *journal.Operation
	e.store.View(func(s *journal.State) {
		if s.Op != nil {
			c := *s.Op
			c.Components = slices.Clone(s.Op.Components)
			op = &c
		}
	})
	return op
}

// opManifest re-reads the manifest the operation was accepted with. Its
// signature is checked again: the journal is a file like any other.
func (e *Engine) opManifest(op *journal.Operation) (*manifest.Manifest, error) {
	m, _, err := manifest.Verify(op.Manifest, e.opts.Keys)
	if err != nil {
		return nil, fmt.Errorf("journaled manifest: %w", err)
	}
	return m, nil
}

func (e *Engine) runOp(ctx context.Context) {
	// The first operation to end after Start is the trial boot's decision,
	// when there is one (see Booted); for any later one this does nothing.
	defer e.markBooted()
	op := e.op()
	if op == nil {
		e.clearRunning()
		return
	}
	m, err := e.opManifest(op)
	if err == nil {
		switch {
		case op.Kind == subjects.UpdateTypeFull && op.Phase == journal.PhaseRebooting:
			err = e.afterBoot(ctx, op)
		case op.Kind == subjects.UpdateTypeFull:
			err = e.runFull(ctx, op, m)
		default:
			err = e.runComponents(ctx, op, m)
		}
	}
	if errors.Is(err, errAwaitReboot) {
		e.cancelMu.Lock()
		e.clearRunning()
		cancelled := ""
		e.store.View(func(s *journal.State) {
			if s.Op != nil {
				cancelled = s.Op.Cancelled
			}
		})
		e.cancelMu.Unlock()
		if cancelled != "" {
			e.disarm()
			e.finish(op, errCancelled{cancelled})
		}
		return
	}
	if err != nil && ctx.Err() != nil && e.ctx.Err() != nil {
		// The agent is shutting down: leave the operation in the journal to resume.
		e.log.Info("operation interrupted by shutdown", "op", op.ID)
		e.clearRunning()
		return
	}
	e.finish(op, err)
}

func (e *Engine) clearRunning() {
	e.mu.Lock()
	e.running = nil
	e.mu.Unlock()
}

// finish ends the operation: journal first, then the terminal event.
func (e *Engine) finish(op *journal.Operation, err error) {
	var ce errCancelled
	var rb errRolledBack
	ev := subjects.UpdateEvent{OperationID: op.ID, Version: op.Version}
	switch {
	case err == nil:
		ev.Type, ev.Status, ev.Message = subjects.EventCompleted, subjects.StatusComplete, "version "+op.Version+" installed"
	case errors.As(err, &ce):
		ev.Type, ev.Status, ev.Message = subjects.EventCancelled, subjects.StatusIdle, ce.Error()
	case errors.As(err, &rb):
		ev.Type, ev.Status, ev.Message = subjects.EventRolledBack, subjects.StatusError, err.Error()
	default:
		ev.Type, ev.Status, ev.Message = subjects.EventFailed, subjects.StatusError, err.Error()
	}
	var names []string
	for _, c := range op.Components {
		names = append(names, c.Name)
	}
	entry := journal.Entry{OperationID: op.ID, Kind: op.Kind, Version: op.Version, FromVersion: op.From, Result: ev.Type,
		Components: names, StartedAt: op.Started, FinishedAt: e.now().UTC()}
	if err != nil {
		entry.Error = err.Error()
	}
	e.opts.Failpoint("finishing")
	end := func(s *journal.State) error {
		if op.Kind == subjects.UpdateTypeFull && op.MaintenanceID != "" && e.maint != nil {
			// The window is handed back after the terminal event (DESIGN
			// section 6); journaled with the end, so a crash cannot lose it.
			s.Releases = append(s.Releases, subjects.MaintenanceRelease{MaintenanceID: op.MaintenanceID, NodeID: e.opts.NodeID, Outcome: string(ev.Type)})
		}
		if err == nil {
			for _, c := range op.Components {
				s.Versions.Components[c.Name] = c.Version
			}
			if op.Kind == subjects.UpdateTypeFull {
				// The image carries every component of its release.
				if m, merr := e.opManifest(op); merr == nil {
					for _, c := range m.Components {
						s.Versions.Components[c.Name] = c.Version
					}
				}
				s.BootSlot = op.TargetSlot
			}
			s.Versions.OS = op.Version
			s.CurrentVersion = op.Version
		}
		s.AddHistory(entry)
		s.Op = nil
		return nil
	}
	uerr := e.store.Update(end)
	if uerr != nil {
		// A full state dir fails the download and then this update: give
		// back the downloads (a resumed operation fetches them again) and
		// try once more, or the operation would stay in the journal,
		// blocking every apply, with the disk still full.
		e.log.Warn("journal finish failed; freeing the downloads and retrying", "op", op.ID, "err", uerr)
		os.RemoveAll(e.downloadDir(op.Version))
		uerr = e.store.Update(end)
	}
	if uerr != nil {
		// Without the journal we cannot claim the outcome; the next start decides.
		e.log.Error("journal finish", "op", op.ID, "err", uerr)
		ev.Type, ev.Status, ev.Message = subjects.EventFailed, subjects.StatusError, "state dir: "+uerr.Error()
	} else {
		e.opts.Failpoint("finish-journaled")
		if err := e.writeVersions(); err != nil {
			e.log.Error("write versions file", "err", err)
		}
		e.opts.Failpoint("versions-written")
		e.cleanup(op)
		e.opts.Failpoint("cleaned-up")
	}
	e.clearRunning()
	e.log.Info("operation finished", "op", op.ID, "result", ev.Type, "msg", ev.Message)
	e.emit(ev)
	if uerr != nil && op.Kind == subjects.UpdateTypeFull {
		// Not journaled: hand the window back now rather than never.
		e.releaseMaintenance(op, string(ev.Type))
	}
	e.flushReleases()
}

// flushReleases hands back to vDC every maintenance window the journal holds,
// removing each once vDC acked it.
func (e *Engine) flushReleases() {
	var pending []subjects.MaintenanceRelease
	e.store.View(func(s *journal.State) { pending = append(pending, s.Releases...) })
	for _, rel := range pending {
		if !e.releaseMaintenance(&journal.Operation{MaintenanceID: rel.MaintenanceID}, rel.Outcome) {
			continue // kept: the next start tries again
		}
		if err := e.store.Update(func(s *journal.State) error {
			s.Releases = slices.DeleteFunc(s.Releases, func(r subjects.MaintenanceRelease) bool { return r.MaintenanceID == rel.MaintenanceID })
			return nil
		}); err != nil {
			e.log.Error("journal release", "err", err)
		}
	}
}

// removeLeftovers removes what a crash between an operation's end in the
// journal and its cleanup left behind: staging and backup trees beside the
// install dirs (the backup is the old release, whole) and downloads. With no
// operation in flight none of it is state.
func (e *Engine) removeLeftovers() {
	for _, c := range e.opts.Components {
		staging, backup := sideDirs(c.Dir)
		os.RemoveAll(staging)
		os.RemoveAll(backup)
	}
	os.RemoveAll(e.downloadDir(""))
}

// sideDirs are where a component installed at dir is staged and backed up:
// beside it, on its file system, so each swap is a rename.
func sideDirs(dir string) (staging, backup string) {
	parent, base := filepath.Split(filepath.Clean(dir))
	return filepath.Join(parent, "."+base+".qx-staging"), filepath.Join(parent, "."+base+".qx-backup")
}

// downloadDir is where the artifacts of version are downloaded; with ""
// the directory of every version's.
func (e *Engine) downloadDir(version string) string {
	return filepath.Join(e.opts.StateDir, "downloads", version)
}

// cleanup removes what an ended operation left: backups, staging, downloads.
func (e *Engine) cleanup(op *journal.Operation) {
	for _, c := range op.Components {
		os.RemoveAll(c.Staging)
		os.RemoveAll(c.Backup)
	}
	if op.Version != "" {
		os.RemoveAll(e.downloadDir(op.Version))
	}
}

// resume continues the operation a crash or shutdown interrupted. New has
// already put the installed tree back in a whole state.
func (e *Engine) resume() {
	op := e.op()
	if op == nil {
		return
	}
	if op.Cancelled != "" {
		e.finish(op, errCancelled{op.Cancelled})
		return
	}
	if op.Kind == subjects.UpdateTypeFull {
		e.resumeFull(op)
		return
	}
	if op.Attempts >= e.opts.MaxAttempts {
		e.finish(op, fmt.Errorf("operation interrupted %d times; giving up", op.Attempts))
		return
	}
	if err := e.store.Update(func(s *journal.State) error { s.Op.Attempts++; return nil }); err != nil {
		e.log.Error("journal resume", "err", err)
		return
	}
	e.log.Info("resuming interrupted operation", "op", op.ID, "attempt", op.Attempts+1)
	e.startOp(op.ID)
}

// setComponent persists a change to component i of the operation.
func (e *Engine) setComponent(i int, fn func(c *journal.Component)) error {
	return e.store.Update(func(s *journal.State) error {
		if s.Op == nil || i >= len(s.Op.Components) {
			return errors.New("journal: no such operation component")
		}
		fn(&s.Op.Components[i])
		return nil
	})
}

func (e *Engine) setPhase(p journal.Phase) error {
	return e.store.Update(func(s *journal.State) error {
		if s.Op != nil {
			s.Op.Phase = p
		}
		return nil
	})
}
