package engine

import (
	"errors"
	"fmt"
	"regexp"
	"time"
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
