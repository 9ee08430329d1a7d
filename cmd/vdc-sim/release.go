package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/internal/release"
)

func init() {
	commands["release"] = command{
		synopsis: "--repo DIR --key FILE --channel C --version V --component NAME=SRC_DIR... [--image FILE] [--notes TEXT] [--expires 90d] [--min-version V]",
		summary:  "pack, sign and publish a release into a repository's channel",
		run:      runRelease,
	}
}

func runRelease(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "release")
	repo := fs.String("repo", "", "release repository directory (required; made if missing)")
	keyFile := fs.String("key", "", "signing key, an update.key from keygen (required)")
	channel := fs.String("channel", "", "channel to publish to, e.g. dev (required)")
	version := fs.String("version", "", "release version, semver, newer than the channel's current one (required)")
	notes := fs.String("notes", "", "release notes")
	minVersion := fs.String("min-version", "", "oldest installed version allowed to update to this release")
	expires := durationFlag(release.DefaultExpires)
	fs.Var(&expires, "expires", "how long the manifest stays valid: a Go `duration` (36h) or whole days (90d)")
	comps := componentsFlag{}
	fs.Var(comps, "component", "a component `NAME=SRC_DIR` to pack from a directory (repeatable)")
	image := fs.String("image", "", "raw full-system disk image `FILE` to compress into the release")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	for _, req := range []struct{ name, val string }{{"repo", *repo}, {"key", *keyFile}, {"channel", *channel}, {"version", *version}} {
		if req.val == "" {
			return usageError(fs, "--%s is required", req.name)
		}
	}
	if len(comps) == 0 && *image == "" {
		return usageError(fs, "give at least one --component or an --image")
	}
	key, err := release.LoadPrivateKey(*keyFile)
	if err != nil {
		return err
	}
	m, err := release.Create(ctx, release.Spec{
		Repo: *repo, Channel: *channel, Version: *version, Notes: *notes, MinVersion: *minVersion,
		Expires: time.Duration(expires), Components: comps, Image: *image, Key: key,
	})
	if err != nil {
		return err
	}
	printSummary(e, m, manifest.KeyID(key.Public().(ed25519.PublicKey)))
	return nil
}

func printSummary(e *env, m *manifest.Manifest, keyID string) {
	fmt.Fprintf(e.stdout, "released %s %s on channel %s, serial %d, signed by keyId %s\n", m.Product, m.Version, m.Channel, m.Serial, keyID)
	fmt.Fprintf(e.stdout, "  released at %s, expires at %s", m.ReleasedAt.Format(time.RFC3339), m.ExpiresAt.Format(time.RFC3339))
	if m.MinVersion != "" {
		fmt.Fprintf(e.stdout, ", needs at least %s installed", m.MinVersion)
	}
	fmt.Fprintln(e.stdout)
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  COMPONENT\tVERSION\tSIZE\tRAW SIZE\tARTIFACT")
	for _, c := range m.Components {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", c.Name, c.Version, humanSize(c.Size), humanSize(c.RawSize), c.Artifact)
	}
	if im := m.Image; im != nil {
		fmt.Fprintf(tw, "  (image)\t%s\t%s\t%s\t%s\n", m.Version, humanSize(im.Size), humanSize(im.RawSize), im.Artifact)
	}
	tw.Flush()
}

// humanSize writes n bytes as "123 B", "4.5 KiB", "1.2 MiB".
func humanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// componentsFlag collects repeated --component NAME=SRC_DIR flags.
type componentsFlag map[string]string

func (c componentsFlag) String() string {
	var parts []string
	for n, d := range c {
		parts = append(parts, n+"="+d)
	}
	return strings.Join(parts, ",")
}

func (c componentsFlag) Set(s string) error {
	name, dir, ok := strings.Cut(s, "=")
	switch {
	case !ok || name == "" || dir == "":
		return fmt.Errorf("want NAME=SRC_DIR, got %q", s)
	case c[name] != "":
		return fmt.Errorf("component %q given twice", name)
	}
	if err := manifest.ValidComponentName(name); err != nil {
		return err
	}
	c[name] = dir
	return nil
}

// durationFlag is a time.Duration that also takes whole days, "90d".
type durationFlag time.Duration

func (d *durationFlag) String() string {
	td := time.Duration(*d)
	if td%(24*time.Hour) == 0 && td != 0 {
		return strconv.FormatInt(int64(td/(24*time.Hour)), 10) + "d"
	}
	return td.String()
}

func (d *durationFlag) Set(s string) error {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("want a positive whole number of days, got %q", s)
		}
		*d = durationFlag(time.Duration(n) * 24 * time.Hour)
		return nil
	}
	td, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration like 90d or 36h, got %q", s)
	}
	if td <= 0 {
		return fmt.Errorf("duration %s is not positive", td)
	}
	*d = durationFlag(td)
	return nil
}
