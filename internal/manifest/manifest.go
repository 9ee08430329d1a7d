// Package manifest is the release manifest of DESIGN.md section 4: its JSON
// shape, its strict decoding and validation, the signed envelope that carries
// it, ed25519 signing and verification, and the policy an agent applies before
// it trusts a release (channel, expiry, serial, downgrade, minimum version).
//
// Everything here reads bytes that come from the network, so decoding is
// deliberately stricter than encoding/json: unknown fields, duplicate keys,
// keys that differ only in case, trailing data and oversized input are all
// refused, so that no two JSON parsers can read one signed manifest two ways.
package manifest

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/quantix-os/update-agent/internal/semver"
)

// Product is the only product a manifest may name.
const Product = "quantix-os"

// Schema is the manifest schema version this package reads and writes.
const Schema = 1

// MaxSize caps a manifest's JSON; real ones are a few KiB.
const MaxSize = 1 << 20

// Sentinel errors; test them with errors.Is. Messages put the sentinel last,
// after what was wrong: "manifest: serial 11 is lower than 12 already seen
// for channel dev: serial rollback".
var (
	ErrMalformed        = errors.New("malformed")
	ErrDuplicateKey     = errors.New("duplicate key")
	ErrTooLarge         = errors.New("too large")
	ErrNoValidSignature = errors.New("no valid signature")
	ErrExpired          = errors.New("expired")
	ErrSerialRollback   = errors.New("serial rollback")
	ErrDowngrade        = errors.New("downgrade")
	ErrWrongChannel     = errors.New("wrong channel")
	ErrMinVersion       = errors.New("below minimum version")
	ErrBadArtifactPath  = errors.New("bad artifact path")
	ErrInvalid          = errors.New("invalid manifest")
)

// Manifest describes one release of one channel.
type Manifest struct {
	Schema       int         `json:"schema"`
	Product      string      `json:"product"`
	Channel      string      `json:"channel"`
	Version      string      `json:"version"`
	Serial       uint64      `json:"serial"`
	ReleasedAt   time.Time   `json:"releasedAt"`
	ExpiresAt    time.Time   `json:"expiresAt"`
	MinVersion   string      `json:"minVersion,omitempty"`
	ReleaseNotes string      `json:"releaseNotes,omitempty"`
	Components   []Component `json:"components"`
	Image        *Image      `json:"image,omitempty"`
}

// Component is one component archive (a tar.zst) of a release.
type Component struct {
	Name     string `json:"name"`
	Version  string `json:"version"`
	Artifact string `json:"artifact"`
	SHA256   string `json:"sha256"`  // of the compressed artifact
	Size     int64  `json:"size"`    // of the compressed artifact
	RawSize  int64  `json:"rawSize"` // of the uncompressed tar stream
}

// Image is the full-system disk image (zstd-compressed) of a release.
type Image struct {
	Artifact  string `json:"artifact"`
	SHA256    string `json:"sha256"` // of the compressed artifact
	Size      int64  `json:"size"`
	RawSHA256 string `json:"rawSha256"` // of the raw image, read back from the slot
	RawSize   int64  `json:"rawSize"`
}

var (
	channelRE = regexp.MustCompile(`^[a-z0-9._-]{1,32}$`)
	nameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
)

// ValidChannel reports why c is not a channel name ([a-z0-9._-]{1,32}), or nil.
func ValidChannel(c string) error {
	if !channelRE.MatchString(c) {
		return fmt.Errorf("manifest: channel %q: want 1 to 32 of a-z 0-9 . _ -: %w", clip(c), ErrInvalid)
	}
	return nil
}

// ValidComponentName reports why n is not a component name
// ([a-z0-9][a-z0-9._-]{0,63}), or nil.
func ValidComponentName(n string) error {
	if !nameRE.MatchString(n) {
		return fmt.Errorf("manifest: component name %q: want a-z or 0-9 then up to 63 of a-z 0-9 . _ -: %w", clip(n), ErrInvalid)
	}
	return nil
}

// Validate checks every field against DESIGN.md section 4 and returns the
// first problem, wrapping ErrInvalid (and ErrBadArtifactPath for a path).
func (m *Manifest) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("manifest: %s: %w", fmt.Sprintf(format, args...), ErrInvalid)
	}
	switch {
	case m.Schema != Schema:
		return bad("schema %d is not %d", m.Schema, Schema)
	case m.Product != Product:
		return bad("product %q is not %q", clip(m.Product), Product)
	case !channelRE.MatchString(m.Channel):
		return bad("channel %q: want 1 to 32 of a-z 0-9 . _ -", clip(m.Channel))
	}
	if err := semver.Valid(m.Version); err != nil {
		return bad("version: %v", err)
	}
	if m.MinVersion != "" {
		if err := semver.Valid(m.MinVersion); err != nil {
			return bad("minVersion: %v", err)
		}
	}
	switch {
	case m.Serial == 0:
		return bad("serial must be at least 1")
	case m.ReleasedAt.IsZero():
		return bad("releasedAt is missing")
	case m.ExpiresAt.IsZero():
		return bad("expiresAt is missing")
	case !m.ExpiresAt.After(m.ReleasedAt):
		return bad("expiresAt %s is not after releasedAt %s", m.ExpiresAt.Format(time.RFC3339), m.ReleasedAt.Format(time.RFC3339))
	case len(m.Components) == 0 && m.Image == nil:
		return bad("no components and no image")
	}
	seen := make(map[string]bool, len(m.Components))
	for i, c := range m.Components {
		if !nameRE.MatchString(c.Name) {
			return bad("component %d: name %q: want a-z or 0-9 then up to 63 of a-z 0-9 . _ -", i, clip(c.Name))
		}
		if seen[c.Name] {
			return bad("component %q listed twice", c.Name)
		}
		seen[c.Name] = true
		if err := semver.Valid(c.Version); err != nil {
			return bad("component %q: version: %v", c.Name, err)
		}
		if err := checkFile(c.Artifact, c.SHA256, c.Size, c.RawSize); err != nil {
			return fmt.Errorf("manifest: component %q: %w: %w", c.Name, err, ErrInvalid)
		}
	}
	if im := m.Image; im != nil {
		if err := checkFile(im.Artifact, im.SHA256, im.Size, im.RawSize); err != nil {
			return fmt.Errorf("manifest: image: %w: %w", err, ErrInvalid)
		}
		if !isSHA256(im.RawSHA256) {
			return bad("image: rawSha256 %q is not 64 lowercase hex digits", clip(im.RawSHA256))
		}
	}
	return nil
}

func checkFile(artifact, sum string, size, rawSize int64) error {
	if err := ValidArtifactPath(artifact); err != nil {
		return err
	}
	switch {
	case !isSHA256(sum):
		return fmt.Errorf("sha256 %q is not 64 lowercase hex digits", clip(sum))
	case size <= 0:
		return fmt.Errorf("size %d is not positive", size)
	case rawSize <= 0:
		return fmt.Errorf("rawSize %d is not positive", rawSize)
	}
	return nil
}

func isSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !('0' <= s[i] && s[i] <= '9' || 'a' <= s[i] && s[i] <= 'f') {
			return false
		}
	}
	return true
}

// maxArtifactPath bounds an artifact path; real ones are a few dozen bytes.
const maxArtifactPath = 1024

// ValidArtifactPath reports why p is not a usable artifact path, or nil. A
// path is relative to /api/v1/quantix-os/ on the Update Server, so it must be
// clean, relative and plain: slash-separated segments of A-Z a-z 0-9 and
// . _ - ~ + @ = , with no empty, "." or ".." segment. That refuses absolute
// paths, schemes, hosts, backslashes, queries, fragments and percent-escapes
// alike; it is the same whitelist the agent's fetcher applies. Errors wrap
// ErrBadArtifactPath.
func ValidArtifactPath(p string) error {
	bad := func(why string) error {
		return fmt.Errorf("artifact path %q: %s: %w", clip(p), why, ErrBadArtifactPath)
	}
	switch {
	case p == "":
		return bad("empty")
	case len(p) > maxArtifactPath:
		return bad(fmt.Sprintf("longer than %d bytes", maxArtifactPath))
	case strings.HasPrefix(p, "//"):
		return bad("has a host")
	case strings.HasPrefix(p, "/"):
		return bad("absolute")
	case strings.Contains(p, `\`):
		return bad("has a backslash")
	case strings.Contains(strings.SplitN(p, "/", 2)[0], ":"):
		return bad("has a scheme")
	}
	for seg := range strings.SplitSeq(p, "/") {
		switch seg {
		case "":
			return bad("not clean: empty segment")
		case ".", "..":
			return bad(fmt.Sprintf("has a %q segment", seg))
		}
		for i := 0; i < len(seg); i++ {
			if !pathByte(seg[i]) {
				return bad(fmt.Sprintf("character %q not allowed", seg[i]))
			}
		}
	}
	return nil
}

func pathByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("._-~+@=,", b) >= 0
}

// clip shortens untrusted strings for error messages.
func clip(s string) string {
	const maxLen = 80
	if len(s) > maxLen {
		return s[:maxLen] + "..."
	}
	return s
}
