package engine

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/subjects"
)

// Settings are the update settings the host UI shows and edits
// (GET/PUT /api/v1/updates/config, the seed's shape).
type Settings struct {
	Enabled         bool   `json:"enabled"`
	ServerURL       string `json:"serverUrl"`
	Channel         string `json:"channel"`
	AutoCheck       bool   `json:"autoCheck"`
	AutoApply       bool   `json:"autoApply"`
	CheckInterval   string `json:"checkInterval"` // Go duration, e.g. "1h0m0s"
	StorageLocation string `json:"storageLocation"`
}

// SettingsUpdate is a partial change of Settings; nil fields stay as they are.
type SettingsUpdate struct {
	Channel       *string `json:"channel,omitempty"`
	AutoCheck     *bool   `json:"autoCheck,omitempty"`
	AutoApply     *bool   `json:"autoApply,omitempty"`
	CheckInterval *string `json:"checkInterval,omitempty"`
}

// ErrInvalidSettings reports a SettingsUpdate that cannot be applied.
var ErrInvalidSettings = errors.New("invalid settings")

// MinCheckInterval bounds how often a host may poll the Update Server.
const MinCheckInterval = 10 * time.Second

var channelRE = regexp.MustCompile(`^[a-z0-9._-]{1,32}$`)

// ValidChannel reports whether c is a valid channel name.
func ValidChannel(c string) error {
	if !channelRE.MatchString(c) {
		return fmt.Errorf("channel %q: must be 1-32 of a-z0-9._-: %w", c, ErrInvalidSettings)
	}
	return nil
}

// parseInterval validates a checkInterval value.
func parseInterval(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("checkInterval %q: %w: %w", s, ErrInvalidSettings, err)
	}
	if d < MinCheckInterval {
		return 0, fmt.Errorf("checkInterval %s: must be at least %s: %w", d, MinCheckInterval, ErrInvalidSettings)
	}
	return d, nil
}

// Settings are the effective update settings: the config file's values with
// the runtime changes kept in the journal on top.
func (e *Engine) Settings() Settings {
	s := Settings{Enabled: true, ServerURL: e.opts.ServerURL, Channel: e.opts.Channel, AutoCheck: e.opts.AutoCheck,
		AutoApply: e.opts.AutoApply, CheckInterval: e.opts.CheckInterval.String(), StorageLocation: "local"}
	e.store.View(func(st *journal.State) {
		o := st.Settings
		if o.Channel != nil {
			s.Channel = *o.Channel
		}
		if o.AutoCheck != nil {
			s.AutoCheck = *o.AutoCheck
		}
		if o.AutoApply != nil {
			s.AutoApply = *o.AutoApply
		}
		if o.CheckInterval != nil {
			s.CheckInterval = o.CheckInterval.String()
		}
	})
	return s
}

func (e *Engine) checkInterval() time.Duration {
	d, err := time.ParseDuration(e.Settings().CheckInterval)
	if err != nil {
		return e.opts.CheckInterval
	}
	return d
}

// UpdateSettings validates u, persists it in the journal and applies it.
func (e *Engine) UpdateSettings(u SettingsUpdate) (Settings, error) {
	var interval *time.Duration
	if u.Channel != nil {
		if err := ValidChannel(*u.Channel); err != nil {
			return Settings{}, err
		}
	}
	if u.CheckInterval != nil {
		d, err := parseInterval(*u.CheckInterval)
		if err != nil {
			return Settings{}, err
		}
		interval = &d
	}
	cur := e.Settings()
	autoCheck, autoApply := cur.AutoCheck, cur.AutoApply
	if u.AutoCheck != nil {
		autoCheck = *u.AutoCheck
	}
	if u.AutoApply != nil {
		autoApply = *u.AutoApply
	}
	if autoApply && !autoCheck {
		return Settings{}, fmt.Errorf("autoApply needs autoCheck: %w", ErrInvalidSettings)
	}
	err := e.store.Update(func(st *journal.State) error {
		if u.Channel != nil {
			st.Settings.Channel = u.Channel
		}
		if u.AutoCheck != nil {
			st.Settings.AutoCheck = u.AutoCheck
		}
		if u.AutoApply != nil {
			st.Settings.AutoApply = u.AutoApply
		}
		if interval != nil {
			st.Settings.CheckInterval = interval
		}
		return nil
	})
	if err != nil {
		return Settings{}, fmt.Errorf("save settings: %w", err)
	}
	select {
	case e.settings <- struct{}{}:
	default:
	}
	return e.Settings(), nil
}

// autoCheckLoop checks every checkInterval while autoCheck is on, and applies
// what it finds when autoApply is on. A settings change restarts the timer.
func (e *Engine) autoCheckLoop(ctx context.Context) {
	for {
		s := e.Settings()
		var tick <-chan time.Time
		var t *time.Timer
		if s.AutoCheck {
			t = time.NewTimer(e.checkInterval())
			tick = t.C
		}
		stop := func() {
			if t != nil {
				t.Stop()
			}
		}
		select {
		case <-ctx.Done():
			stop()
			return
		case <-e.settings:
			stop()
			continue
		case <-tick:
		}
		s = e.Settings()
		if !s.AutoCheck {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		reply, err := e.Check(cctx, subjects.CheckRequest{})
		cancel()
		if err != nil {
			e.log.Warn("auto check failed", "err", err)
			continue
		}
		if reply.Available && s.AutoApply {
			ack, err := e.Apply(ctx, subjects.ApplyCommand{OperationID: "auto-" + newID(), Version: reply.AvailableVersion})
			e.log.Info("auto apply", "version", reply.AvailableVersion, "accepted", ack.Accepted, "err", err)
		}
	}
}
