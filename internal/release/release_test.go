package release

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix-os/update-agent/internal/archive"
	"github.com/quantix-os/update-agent/internal/manifest"
)

func writeFile(t *testing.T, p, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestGenerateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	pubPath, keyPath, err := GenerateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if pubPath != filepath.Join(dir, "update.pub") || keyPath != filepath.Join(dir, "update.key") {
		t.Errorf("paths = %s, %s", pubPath, keyPath)
	}
	for p, want := range map[string]os.FileMode{keyPath: 0o600, pubPath: 0o644} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode = %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	pubText, _ := os.ReadFile(pubPath)
	if bytes.Count(pubText, []byte("\n")) != 1 || !bytes.HasSuffix(pubText, []byte("\n")) {
		t.Errorf("update.pub is not one line: %q", pubText)
	}
	pub, err := manifest.ParsePublicKey(string(pubText))
	if err != nil {
		t.Fatal(err)
	}
	priv, err := LoadPrivateKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if !priv.Public().(ed25519.PublicKey).Equal(pub) {
		t.Error("update.key and update.pub are not a pair")
	}
	keyText, _ := os.ReadFile(keyPath)
	if !bytes.HasPrefix(keyText, []byte("-----BEGIN PRIVATE KEY-----\n")) {
		t.Errorf("update.key is not a PKCS#8 PEM block: %q", keyText[:20])
	}

	// A second keygen must not replace the key agents trust.
	if _, _, err := GenerateKey(dir); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Errorf("second GenerateKey = %v, want a refusal", err)
	}
	if again, _ := os.ReadFile(keyPath); !bytes.Equal(again, keyText) {
		t.Error("second GenerateKey changed update.key")
	}
}

func TestLoadPrivateKeyRefuses(t *testing.T) {
	dir := t.TempDir()
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(ec)
	writeFile(t, filepath.Join(dir, "ecdsa"), string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	writeFile(t, filepath.Join(dir, "text"), "hello\n")
	writeFile(t, filepath.Join(dir, "type"), string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	writeFile(t, filepath.Join(dir, "junk"), string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("junk")})))
	tests := []struct{ file, want string }{
		{"missing", "no such file"},
		{"text", "no PEM block"},
		{"type", `PEM block is "PUBLIC KEY"`},
		{"junk", "load key"},
		{"ecdsa", "want an ed25519 key"},
	}
	for _, tt := range tests {
		_, err := LoadPrivateKey(filepath.Join(dir, tt.file))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("LoadPrivateKey(%s) = %v, want it to say %q", tt.file, err, tt.want)
		}
	}
}

type fixture struct {
	dir, repo string
	pub       ed25519.PublicKey
	key       ed25519.PrivateKey
	srcs      map[string]string
	image     string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir()}
	f.repo = filepath.Join(f.dir, "repo")
	var err error
	f.pub, f.key, err = ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	f.srcs = map[string]string{}
	for _, c := range []string{"qx-node", "qx-console"} {
		src := filepath.Join(f.dir, "src", c)
		writeFile(t, filepath.Join(src, "bin", c), "#!/bin/sh\necho "+c+"\n")
		writeFile(t, filepath.Join(src, "VERSION"), "0.0.6\n")
		f.srcs[c] = src
	}
	f.image = filepath.Join(f.dir, "os.img")
	writeFile(t, f.image, strings.Repeat("disk image block\n", 4096))
	return f
}

func (f *fixture) spec(version string) Spec {
	return Spec{Repo: f.repo, Channel: "dev", Version: version, Notes: "notes " + version, Key: f.key, Components: f.srcs}
}

func sum(t *testing.T, p string) (string, int64) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), int64(len(b))
}

func TestCreate(t *testing.T) {
	f := newFixture(t)
	now := time.Date(2025, 11, 1, 12, 0, 0, 123, time.FixedZone("x", 3600))
	s := f.spec("0.0.6")
	s.MinVersion = "0.0.3"
	s.Image = f.image
	s.Now = now
	m, err := Create(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if m.Serial != 1 || m.Version != "0.0.6" || m.Channel != "dev" || m.MinVersion != "0.0.3" || m.ReleaseNotes != "notes 0.0.6" {
		t.Errorf("manifest = %+v", m)
	}
	if want := now.UTC().Truncate(time.Second); !m.ReleasedAt.Equal(want) || m.ReleasedAt.Location() != time.UTC {
		t.Errorf("releasedAt = %v, want %v in UTC", m.ReleasedAt, want)
	}
	if got := m.ExpiresAt.Sub(m.ReleasedAt); got != DefaultExpires {
		t.Errorf("expires after %v, want %v", got, DefaultExpires)
	}

	// Components sorted by name, each artifact matching what the manifest says.
	if len(m.Components) != 2 || m.Components[0].Name != "qx-console" || m.Components[1].Name != "qx-node" {
		t.Fatalf("components = %+v", m.Components)
	}
	for _, c := range m.Components {
		want := "releases/0.0.6/" + c.Name + "-0.0.6.tar.zst"
		if c.Artifact != want || c.Version != "0.0.6" {
			t.Errorf("component %+v, want artifact %s", c, want)
		}
		p := filepath.Join(f.repo, c.Artifact)
		gotSum, gotSize := sum(t, p)
		if gotSum != c.SHA256 || gotSize != c.Size {
			t.Errorf("%s: file has sha256 %s size %d, manifest %s %d", c.Name, gotSum, gotSize, c.SHA256, c.Size)
		}
		// rawSize is exact: the archive extracts under it, and not under one less.
		dst := filepath.Join(f.dir, "out", c.Name)
		for _, limit := range []int64{c.RawSize - 1, c.RawSize} {
			os.RemoveAll(dst)
			os.MkdirAll(dst, 0o755)
			af, _ := os.Open(p)
			_, err := archive.Extract(context.Background(), af, dst, limit)
			af.Close()
			if limit < c.RawSize && !errors.Is(err, archive.ErrTooLarge) {
				t.Errorf("%s: extract under rawSize-1 = %v, want ErrTooLarge", c.Name, err)
			}
			if limit == c.RawSize && err != nil {
				t.Errorf("%s: extract: %v", c.Name, err)
			}
		}
		if b, _ := os.ReadFile(filepath.Join(dst, "bin", c.Name)); string(b) != "#!/bin/sh\necho "+c.Name+"\n" {
			t.Errorf("%s: extracted bin = %q", c.Name, b)
		}
	}

	// The image: compressed artifact hash, raw hash and size of the source.
	im := m.Image
	if im == nil || im.Artifact != "releases/0.0.6/quantix-os-0.0.6.img.zst" {
		t.Fatalf("image = %+v", im)
	}
	rawSum, rawSize := sum(t, f.image)
	if im.RawSHA256 != rawSum || im.RawSize != rawSize {
		t.Errorf("image raw %s %d, want %s %d", im.RawSHA256, im.RawSize, rawSum, rawSize)
	}
	if gotSum, gotSize := sum(t, filepath.Join(f.repo, im.Artifact)); gotSum != im.SHA256 || gotSize != im.Size || im.Size >= rawSize {
		t.Errorf("image artifact %s %d, manifest %s %d (raw %d)", gotSum, gotSize, im.SHA256, im.Size, rawSize)
	}
	af, _ := os.Open(filepath.Join(f.repo, im.Artifact))
	defer af.Close()
	zr, err := archive.NewReader(af, im.RawSize)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(zr)
	zr.Close()
	want, _ := os.ReadFile(f.image)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("image does not decompress to the source (%v)", err)
	}

	// manifest.json holds exactly the signed bytes, and the envelope verifies.
	signed, _ := os.ReadFile(filepath.Join(f.repo, "channels/dev/manifest.signed.json"))
	vm, raw, err := manifest.Verify(signed, []ed25519.PublicKey{f.pub})
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := os.ReadFile(filepath.Join(f.repo, "channels/dev/manifest.json"))
	if !bytes.Equal(raw, plain) {
		t.Error("manifest.json differs from the signed bytes")
	}
	if vm.Serial != 1 || vm.Image == nil || vm.Image.RawSHA256 != rawSum {
		t.Errorf("signed manifest = %+v", vm)
	}
	cm, err := Channel(f.repo, "dev")
	if err != nil || cm.Version != "0.0.6" || cm.Serial != 1 {
		t.Errorf("Channel = %+v, %v", cm, err)
	}
	// No temp files are left behind.
	leftovers, _ := filepath.Glob(filepath.Join(f.repo, "*", "*", ".*"))
	if len(leftovers) != 0 {
		t.Errorf("temp files left: %v", leftovers)
	}
}

func TestCreateSequence(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := Create(ctx, f.spec("0.0.6")); err != nil {
		t.Fatal(err)
	}
	s := f.spec("0.0.7")
	s.Expires = time.Hour
	m, err := Create(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if m.Serial != 2 || m.ExpiresAt.Sub(m.ReleasedAt) != time.Hour {
		t.Errorf("second release: serial %d, expires after %v", m.Serial, m.ExpiresAt.Sub(m.ReleasedAt))
	}
	before, _ := os.ReadFile(filepath.Join(f.repo, "channels/dev/manifest.signed.json"))

	for _, v := range []string{"0.0.5", "0.0.7", "0.0.7+build.2", "0.0.7-rc.1"} {
		_, err := Create(ctx, f.spec(v))
		if !errors.Is(err, ErrNotNewer) {
			t.Fatalf("release %s after 0.0.7: %v, want ErrNotNewer", v, err)
		}
		if want := "channel dev is at 0.0.7 (serial 2)"; !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(f.repo, "releases/0.0.5")); !os.IsNotExist(err) {
		t.Error("a refused release left files behind")
	}
	after, _ := os.ReadFile(filepath.Join(f.repo, "channels/dev/manifest.signed.json"))
	if !bytes.Equal(before, after) {
		t.Error("a refused release changed the channel")
	}

	// The same version promoted to another channel reuses identical artifacts...
	s = f.spec("0.0.7")
	s.Channel = "stable"
	m, err = Create(ctx, s)
	if err != nil {
		t.Fatalf("promote 0.0.7 to stable: %v", err)
	}
	if m.Serial != 1 {
		t.Errorf("stable serial = %d, want 1", m.Serial)
	}
	// ...but never rewrites a published artifact with other bytes.
	writeFile(t, filepath.Join(f.srcs["qx-node"], "VERSION"), "changed\n")
	s.Channel = "beta"
	_, err = Create(ctx, s)
	if !errors.Is(err, ErrArtifactExists) || !strings.Contains(err.Error(), "releases/0.0.7/qx-node-0.0.7.tar.zst") {
		t.Errorf("re-release with other content: %v, want ErrArtifactExists naming the file", err)
	}
	if _, err := Channel(f.repo, "beta"); !errors.Is(err, ErrNoChannel) {
		t.Errorf("failed release created channel beta: %v", err)
	}
	if _, _, err := manifest.Verify(after, []ed25519.PublicKey{f.pub}); err != nil {
		t.Error(err)
	}
}

func TestCreateRefuses(t *testing.T) {
	f := newFixture(t)
	empty := filepath.Join(f.dir, "empty.img")
	writeFile(t, empty, "")
	tests := []struct {
		name string
		mod  func(s *Spec)
		want string
	}{
		{"bad version", func(s *Spec) { s.Version = "v1" }, `"v1"`},
		{"bad channel", func(s *Spec) { s.Channel = "../x" }, `channel "../x"`},
		{"no repo", func(s *Spec) { s.Repo = "" }, "no repository"},
		{"no key", func(s *Spec) { s.Key = nil }, "no signing key"},
		{"nothing", func(s *Spec) { s.Components = nil }, "no components and no image"},
		{"bad name", func(s *Spec) { s.Components = map[string]string{"Bad/Name": f.srcs["qx-node"]} }, `"Bad/Name"`},
		{"missing source", func(s *Spec) { s.Components = map[string]string{"x": filepath.Join(f.dir, "nope")} }, "component x: source"},
		{"source is a file", func(s *Spec) { s.Components = map[string]string{"x": f.image} }, "is not a directory"},
		{"missing image", func(s *Spec) { s.Image = filepath.Join(f.dir, "nope.img") }, "image:"},
		{"image is a dir", func(s *Spec) { s.Image = f.dir }, "not a regular file"},
		{"empty image", func(s *Spec) { s.Image = empty }, "is empty"},
		{"min version newer", func(s *Spec) { s.MinVersion = "0.1.0" }, "min version 0.1.0 is newer"},
		{"bad min version", func(s *Spec) { s.MinVersion = "x" }, "min version"},
		{"negative expiry", func(s *Spec) { s.Expires = -time.Hour }, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := f.spec("0.0.6")
			tt.mod(&s)
			_, err := Create(context.Background(), s)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Create = %v, want an error saying %q", err, tt.want)
			}
			if _, err := os.Stat(f.repo); !os.IsNotExist(err) {
				t.Error("refused spec touched the repository")
			}
		})
	}
}

func TestCreateCancelled(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Create(ctx, f.spec("0.0.6")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Create = %v, want context.Canceled", err)
	}
	if _, err := Channel(f.repo, "dev"); !errors.Is(err, ErrNoChannel) {
		t.Errorf("cancelled release published a manifest: %v", err)
	}
}

func TestChannel(t *testing.T) {
	repo := t.TempDir()
	if _, err := Channel(repo, "dev"); !errors.Is(err, ErrNoChannel) || !strings.Contains(err.Error(), `channel "dev" has no release`) {
		t.Errorf("empty repo: %v", err)
	}
	if _, err := Channel(repo, "../etc"); !errors.Is(err, manifest.ErrInvalid) {
		t.Errorf("bad channel: %v, want manifest.ErrInvalid", err)
	}
	writeFile(t, filepath.Join(repo, "channels/dev/manifest.signed.json"), `{"signed":"e30="}`)
	if _, err := Channel(repo, "dev"); !errors.Is(err, manifest.ErrInvalid) {
		t.Errorf("corrupt channel: %v, want manifest.ErrInvalid", err)
	}
}
