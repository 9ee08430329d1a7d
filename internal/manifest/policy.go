package manifest

import (
	"fmt"
	"time"

	"github.com/quantix-os/update-agent/internal/semver"
)

// Policy is what an agent requires of a verified manifest before it trusts it.
type Policy struct {
	Channel string    // the channel the agent follows
	Now     time.Time // zero: time.Now()
	// HighestSerial is the highest serial already seen for Channel; a lower one
	// is a replayed old manifest.
	HighestSerial uint64
	// Installed is the installed version; empty skips the downgrade and
	// minVersion checks (nothing installed yet).
	Installed string
	// AllowDowngrade accepts a version older than Installed.
	AllowDowngrade bool
}

// Check returns why m must not be trusted under p, or nil. Errors wrap
// ErrWrongChannel, ErrExpired, ErrSerialRollback, ErrDowngrade or
// ErrMinVersion, checked in that order.
func (p Policy) Check(m *Manifest) error {
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	if m.Channel != p.Channel {
		return fmt.Errorf("manifest: channel %q is not the configured channel %q: %w", m.Channel, p.Channel, ErrWrongChannel)
	}
	if now.After(m.ExpiresAt) {
		return fmt.Errorf("manifest: version %s of channel %s expired at %s: %w", m.Version, m.Channel, m.ExpiresAt.UTC().Format(time.RFC3339), ErrExpired)
	}
	if m.Serial < p.HighestSerial {
		return fmt.Errorf("manifest: serial %d is lower than %d already seen for channel %s: %w", m.Serial, p.HighestSerial, m.Channel, ErrSerialRollback)
	}
	if p.Installed == "" {
		return nil
	}
	installed, err := semver.Parse(p.Installed)
	if err != nil {
		return fmt.Errorf("manifest: installed version: %w", err)
	}
	v, err := semver.Parse(m.Version)
	if err != nil {
		return fmt.Errorf("manifest: version: %w", err)
	}
	if v.Compare(installed) < 0 && !p.AllowDowngrade {
		return fmt.Errorf("manifest: version %s is older than installed %s: %w", m.Version, p.Installed, ErrDowngrade)
	}
	if m.MinVersion != "" {
		minV, err := semver.Parse(m.MinVersion)
		if err != nil {
			return fmt.Errorf("manifest: minVersion: %w", err)
		}
		if installed.Compare(minV) < 0 {
			return fmt.Errorf("manifest: installed version %s is older than minVersion %s of version %s: %w", p.Installed, m.MinVersion, m.Version, ErrMinVersion)
		}
	}
	return nil
}
