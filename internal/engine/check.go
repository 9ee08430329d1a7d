package engine

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/internal/semver"
	"github.com/quantix-os/update-agent/subjects"
)

// checked is a manifest that passed verification and policy.
type checked struct {
	m   *manifest.Manifest
	raw []byte // the signed manifest bytes
}

// Check answers whether an update is available on the request's channel (the
// configured one by default). With req.SignedManifest it verifies that
// envelope instead of asking the Update Server, so a fleet check costs the
// server nothing. Failures are in the reply's Error as well as returned.
func (e *Engine) Check(ctx context.Context, req subjects.CheckRequest) (subjects.CheckReply, error) {
	set := e.Settings()
	channel := req.Channel
	if channel == "" {
		channel = set.Channel
	}
	reply := subjects.CheckReply{NodeID: e.opts.NodeID, Channel: channel, CurrentVersion: e.CurrentVersion(), Components: []subjects.ComponentUpdate{}}
	e.setIdleStatus(subjects.StatusChecking, "")
	c, err := e.check(ctx, channel, req.SignedManifest, false)
	e.recordCheck(len(req.SignedManifest) > 0)
	if err != nil {
		reply.Error = err.Error()
		e.setIdleStatus(subjects.StatusError, err.Error())
		return reply, err
	}
	e.fillReply(&reply, c.m)
	if reply.Available {
		e.setIdleStatus(subjects.StatusAvailable, "version "+reply.AvailableVersion+" available")
	} else {
		e.setIdleStatus(subjects.StatusUpToDate, "")
	}
	return reply, nil
}

// checkTimeDelay is how long the time of a fleet check waits before it is
// written, so that a burst of checks costs one journal write.
const checkTimeDelay = time.Second

// recordCheck records in the journal when a check ended. A check answered
// from a manifest vDC sent (a fleet check) does not wait for the write: vDC
// waits for the slowest of thousands of nodes, so no reply should wait on a
// node's disk, and the time is bookkeeping for the last-check metric, not
// state a crash must keep. checkTimeLoop writes it checkTimeDelay later, once
// for all the checks of a burst (vDC polling the fleet, a UI re-checking),
// which also keeps those from wearing the host's flash. A check that asked
// the Update Server has waited on the network anyway, and an engine not (or
// no longer) started has no loop: those write the time before answering.
func (e *Engine) recordCheck(fleet bool) {
	now := e.now().UTC()
	e.mu.Lock()
	running := e.ctx != nil && e.ctx.Err() == nil
	if fleet && running {
		e.checkAt = now
		e.mu.Unlock()
		select {
		case e.checkKick <- struct{}{}:
		default:
		}
		return
	}
	e.mu.Unlock()
	e.store.Update(func(s *journal.State) error { s.LastCheck = now; return nil })
}

// checkTimeLoop writes the check times recordCheck left, until ctx ends. A
// time still waiting then is dropped rather than written during shutdown.
func (e *Engine) checkTimeLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.checkKick:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(checkTimeDelay):
		}
		e.mu.Lock()
		t := e.checkAt
		e.checkAt = time.Time{}
		e.mu.Unlock()
		if t.IsZero() {
			continue
		}
		if err := e.store.Update(func(s *journal.State) error {
			if t.After(s.LastCheck) {
				s.LastCheck = t
			}
			return nil
		}); err != nil {
			e.log.Warn("journal check time", "err", err)
		}
	}
}

// check fetches (or takes) a signed manifest, verifies it against the keys
// and the policy, records its serial and caches it.
func (e *Engine) check(ctx context.Context, channel string, signed []byte, allowDowngrade bool) (*checked, error) {
	if err := ValidChannel(channel); err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	if len(signed) == 0 {
		var err error
		signed, err = e.opts.Fetcher.SignedManifest(ctx, channel)
		if err != nil {
			return nil, fmt.Errorf("check channel %s: %w", channel, err)
		}
		e.opts.Failpoint("manifest-fetched")
	}
	m, err := e.verify(channel, signed)
	if err != nil {
		return nil, fmt.Errorf("check channel %s: %w", channel, err)
	}
	var highest uint64
	var installed string
	e.store.View(func(s *journal.State) {
		highest = s.Serials[channel]
		installed = s.CurrentVersion
	})
	p := manifest.Policy{Channel: channel, Now: e.now(), HighestSerial: highest, Installed: installed, AllowDowngrade: allowDowngrade}
	if err := p.Check(m); err != nil {
		return nil, fmt.Errorf("check channel %s: %w", channel, err)
	}
	if m.Serial > highest {
		if err := e.store.Update(func(s *journal.State) error {
			if m.Serial > s.Serials[channel] {
				s.Serials[channel] = m.Serial
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("check: %w", err)
		}
		e.opts.Failpoint("serial-recorded")
	}
	c := &checked{m: m, raw: signed}
	e.mu.Lock()
	e.checked[channel] = c
	e.mu.Unlock()
	return c, nil
}

// verify returns the manifest in the signed envelope. An envelope byte for
// byte equal to the one last verified for the channel is not verified again:
// the keys are fixed for the engine's life, so the answer would be the same,
// and a fleet check sends every node the same envelope again and again (an
// ed25519 verification and a strict decode cost more than the rest of the
// check). The policy is still checked on every call, by the caller.
func (e *Engine) verify(channel string, signed []byte) (*manifest.Manifest, error) {
	e.mu.Lock()
	c := e.checked[channel]
	e.mu.Unlock()
	if c != nil && bytes.Equal(c.raw, signed) {
		return c.m, nil
	}
	m, _, err := manifest.Verify(signed, e.opts.Keys)
	return m, err
}

// newer reports whether release version v is newer than the installed one.
func newer(v, installed string) bool {
	if installed == "" {
		return true
	}
	n, err := semver.Compare(v, installed)
	return err == nil && n > 0
}

func (e *Engine) fillReply(r *subjects.CheckReply, m *manifest.Manifest) {
	cur := e.Versions()
	r.Available = newer(m.Version, r.CurrentVersion)
	r.ReleaseNotes = m.ReleaseNotes
	if !r.Available {
		return
	}
	r.AvailableVersion = m.Version
	for _, c := range m.Components {
		if _, ok := e.opts.Components[c.Name]; !ok {
			continue // this host does not run it
		}
		if cur.Components[c.Name] == c.Version {
			continue
		}
		r.Components = append(r.Components, subjects.ComponentUpdate{Name: c.Name, CurrentVersion: cur.Components[c.Name], NewVersion: c.Version, SizeBytes: c.Size})
		r.TotalDownloadSize += c.Size
	}
	if m.Image != nil {
		r.FullImageAvailable = true
		if e.opts.AB != nil {
			// A full update downloads the image alone: it carries every component.
			r.TotalDownloadSize = m.Image.Size
		}
	}
}

// setIdleStatus changes the status when no update runs; a check must not
// hide the progress of an update in flight.
func (e *Engine) setIdleStatus(s subjects.Status, msg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.running != nil || e.status.Status == subjects.StatusRebootRequired {
		return
	}
	e.status.Status = s
	e.status.Message = msg
	e.status.Progress = nil
	e.status.OperationID = ""
}
