package manifest

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var (
	t0    = time.Date(2025, 11, 1, 12, 0, 0, 0, time.UTC)
	sumA  = strings.Repeat("a", 64)
	sumB  = strings.Repeat("0123456789abcdef", 4)
	sumUp = strings.Repeat("A", 64)
)

// sample returns a valid manifest with two components and an image.
func sample() *Manifest {
	return &Manifest{
		Schema: Schema, Product: Product, Channel: "dev", Version: "0.0.6", Serial: 12,
		ReleasedAt: t0, ExpiresAt: t0.Add(90 * 24 * time.Hour), MinVersion: "0.0.3", ReleaseNotes: "notes",
		Components: []Component{
			{Name: "qx-node", Version: "0.0.6", Artifact: "releases/0.0.6/qx-node-0.0.6.tar.zst", SHA256: sumA, Size: 123, RawSize: 456},
			{Name: "qx-console", Version: "0.0.6", Artifact: "releases/0.0.6/qx-console-0.0.6.tar.zst", SHA256: sumB, Size: 1, RawSize: 1},
		},
		Image: &Image{Artifact: "releases/0.0.6/quantix-os-0.0.6.img.zst", SHA256: sumA, Size: 456, RawSHA256: sumB, RawSize: 789},
	}
}

func TestValidate(t *testing.T) {
	if err := sample().Validate(); err != nil {
		t.Fatalf("sample: %v", err)
	}
	tests := []struct {
		name string
		mod  func(m *Manifest)
		want string // in the message
		is   error  // besides ErrInvalid
	}{
		{"schema", func(m *Manifest) { m.Schema = 2 }, "schema 2 is not 1", nil},
		{"product", func(m *Manifest) { m.Product = "other" }, `product "other"`, nil},
		{"empty channel", func(m *Manifest) { m.Channel = "" }, `channel ""`, nil},
		{"channel upper", func(m *Manifest) { m.Channel = "Dev" }, `channel "Dev"`, nil},
		{"channel long", func(m *Manifest) { m.Channel = strings.Repeat("c", 33) }, "channel", nil},
		{"channel slash", func(m *Manifest) { m.Channel = "a/b" }, `channel "a/b"`, nil},
		{"version", func(m *Manifest) { m.Version = "v0.0.6" }, "version", nil},
		{"minVersion", func(m *Manifest) { m.MinVersion = "1.0" }, "minVersion", nil},
		{"serial", func(m *Manifest) { m.Serial = 0 }, "serial must be at least 1", nil},
		{"releasedAt", func(m *Manifest) { m.ReleasedAt = time.Time{} }, "releasedAt is missing", nil},
		{"expiresAt", func(m *Manifest) { m.ExpiresAt = time.Time{} }, "expiresAt is missing", nil},
		{"expires before", func(m *Manifest) { m.ExpiresAt = m.ReleasedAt }, "is not after releasedAt", nil},
		{"nothing", func(m *Manifest) { m.Components = nil; m.Image = nil }, "no components and no image", nil},
		{"name", func(m *Manifest) { m.Components[0].Name = "-x" }, `name "-x"`, nil},
		{"name upper", func(m *Manifest) { m.Components[0].Name = "Qx" }, `name "Qx"`, nil},
		{"name long", func(m *Manifest) { m.Components[0].Name = strings.Repeat("n", 65) }, "name", nil},
		{"twice", func(m *Manifest) { m.Components[1].Name = "qx-node" }, `component "qx-node" listed twice`, nil},
		{"component version", func(m *Manifest) { m.Components[0].Version = "6" }, `component "qx-node": version`, nil},
		{"component sha", func(m *Manifest) { m.Components[0].SHA256 = sumUp }, "is not 64 lowercase hex", nil},
		{"component sha short", func(m *Manifest) { m.Components[0].SHA256 = "abc" }, `sha256 "abc"`, nil},
		{"component size", func(m *Manifest) { m.Components[0].Size = 0 }, "size 0 is not positive", nil},
		{"component rawSize", func(m *Manifest) { m.Components[0].RawSize = -1 }, "rawSize -1 is not positive", nil},
		{"component artifact", func(m *Manifest) { m.Components[0].Artifact = "../x" }, `".." segment`, ErrBadArtifactPath},
		{"image artifact", func(m *Manifest) { m.Image.Artifact = "http://evil/x" }, "scheme", ErrBadArtifactPath},
		{"image sha", func(m *Manifest) { m.Image.SHA256 = "" }, "image: sha256", nil},
		{"image rawSha", func(m *Manifest) { m.Image.RawSHA256 = sumUp }, "image: rawSha256", nil},
		{"image size", func(m *Manifest) { m.Image.Size = 0 }, "image: size 0", nil},
		{"image rawSize", func(m *Manifest) { m.Image.RawSize = 0 }, "image: rawSize 0", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := sample()
			tt.mod(m)
			err := m.Validate()
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate = %v, want ErrInvalid", err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("Validate = %v, want it to wrap %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate = %q, want it to say %q", err, tt.want)
			}
		})
	}
}

func TestValidateOnlyComponentsOrOnlyImage(t *testing.T) {
	m := sample()
	m.Image = nil
	if err := m.Validate(); err != nil {
		t.Errorf("components only: %v", err)
	}
	m = sample()
	m.Components = nil
	m.MinVersion = ""
	if err := m.Validate(); err != nil {
		t.Errorf("image only: %v", err)
	}
}

func TestValidArtifactPath(t *testing.T) {
	good := []string{
		"releases/0.0.6/qx-node-0.0.6.tar.zst",
		"a",
		"releases/1.0.0-rc.1+b.2/x~y@z=w,v.img.zst",
	}
	for _, p := range good {
		if err := ValidArtifactPath(p); err != nil {
			t.Errorf("ValidArtifactPath(%q) = %v", p, err)
		}
	}
	bad := []struct{ p, why string }{
		{"", "empty"},
		{"/releases/x", "absolute"},
		{"//evil.example/x", "host"},
		{"http://evil.example/x", "scheme"},
		{"file:x", "scheme"},
		{`releases\x`, "backslash"},
		{"releases/../../etc/passwd", `".." segment`},
		{"..", `".." segment`},
		{"releases/./x", `"." segment`},
		{"releases//x", "empty segment"},
		{"releases/x/", "empty segment"},
		{"releases/x?y=1", "not allowed"},
		{"releases/x#f", "not allowed"},
		{"releases/%2e%2e/x", "not allowed"},
		{"releases/a b", "not allowed"},
		{"releases/\x00", "not allowed"},
		{"releases/é", "not allowed"},
		{strings.Repeat("a/", 600), "longer than"},
	}
	for _, tt := range bad {
		err := ValidArtifactPath(tt.p)
		if !errors.Is(err, ErrBadArtifactPath) {
			t.Errorf("ValidArtifactPath(%q) = %v, want ErrBadArtifactPath", tt.p, err)
			continue
		}
		if !strings.Contains(err.Error(), tt.why) {
			t.Errorf("ValidArtifactPath(%q) = %q, want it to say %q", tt.p, err, tt.why)
		}
	}
}

func TestValidChannelAndName(t *testing.T) {
	for _, c := range []string{"dev", "stable", "a", "release-1.x_2", strings.Repeat("c", 32)} {
		if err := ValidChannel(c); err != nil {
			t.Errorf("ValidChannel(%q) = %v", c, err)
		}
	}
	for _, c := range []string{"", "Dev", "a/b", "..x/", strings.Repeat("c", 33), "dev\n"} {
		if err := ValidChannel(c); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidChannel(%q) = %v, want ErrInvalid", c, err)
		}
	}
	for _, n := range []string{"qx-node", "0", "a.b_c-d", strings.Repeat("n", 64)} {
		if err := ValidComponentName(n); err != nil {
			t.Errorf("ValidComponentName(%q) = %v", n, err)
		}
	}
	for _, n := range []string{"", ".x", "_x", "-x", "X", strings.Repeat("n", 65), "a/b"} {
		if err := ValidComponentName(n); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidComponentName(%q) = %v, want ErrInvalid", n, err)
		}
	}
}

func TestPolicy(t *testing.T) {
	base := Policy{Channel: "dev", Now: t0.Add(time.Hour), HighestSerial: 12, Installed: "0.0.5"}
	tests := []struct {
		name string
		mod  func(p *Policy, m *Manifest)
		is   error
		want string
	}{
		{"ok", func(p *Policy, m *Manifest) {}, nil, ""},
		{"same version again", func(p *Policy, m *Manifest) { p.Installed = "0.0.6" }, nil, ""},
		{"higher serial", func(p *Policy, m *Manifest) { p.HighestSerial = 3 }, nil, ""},
		{"nothing installed", func(p *Policy, m *Manifest) { p.Installed = "" }, nil, ""},
		{"installed exactly minVersion", func(p *Policy, m *Manifest) { p.Installed = "0.0.3" }, nil, ""},
		{"no minVersion", func(p *Policy, m *Manifest) { p.Installed = "0.0.1"; m.MinVersion = "" }, nil, ""},
		{"zero Now is now", func(p *Policy, m *Manifest) { p.Now = time.Time{}; m.ExpiresAt = time.Now().Add(time.Hour) }, nil, ""},
		{"at expiry instant", func(p *Policy, m *Manifest) { p.Now = m.ExpiresAt }, nil, ""},
		{"wrong channel", func(p *Policy, m *Manifest) { p.Channel = "stable" }, ErrWrongChannel,
			`manifest: channel "dev" is not the configured channel "stable": wrong channel`},
		{"expired", func(p *Policy, m *Manifest) { p.Now = m.ExpiresAt.Add(time.Second) }, ErrExpired,
			"version 0.0.6 of channel dev expired at 2026-01-30T12:00:00Z"},
		{"zero Now expired", func(p *Policy, m *Manifest) { p.Now = time.Time{} }, ErrExpired, "expired"},
		{"serial rollback", func(p *Policy, m *Manifest) { m.Serial = 11 }, ErrSerialRollback,
			"manifest: serial 11 is lower than 12 already seen for channel dev: serial rollback"},
		{"downgrade", func(p *Policy, m *Manifest) { p.Installed = "0.0.7" }, ErrDowngrade,
			"version 0.0.6 is older than installed 0.0.7"},
		{"pre-release is older", func(p *Policy, m *Manifest) { m.Version = "0.0.6-rc.1"; p.Installed = "0.0.6" }, ErrDowngrade, "older"},
		{"downgrade allowed", func(p *Policy, m *Manifest) { p.Installed = "0.0.7"; p.AllowDowngrade = true; m.MinVersion = "" }, nil, ""},
		{"below minVersion", func(p *Policy, m *Manifest) { p.Installed = "0.0.2" }, ErrMinVersion,
			"installed version 0.0.2 is older than minVersion 0.0.3 of version 0.0.6"},
		{"bad installed", func(p *Policy, m *Manifest) { p.Installed = "five" }, nil, "installed version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, m := base, sample()
			tt.mod(&p, m)
			err := p.Check(m)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Check = %v, want nil", err)
			case tt.want == "":
				return
			case err == nil:
				t.Fatalf("Check = nil, want %q", tt.want)
			case tt.is != nil && !errors.Is(err, tt.is):
				t.Errorf("Check = %v, want %v", err, tt.is)
			case !strings.Contains(err.Error(), tt.want):
				t.Errorf("Check = %q, want it to say %q", err, tt.want)
			}
		})
	}
}
