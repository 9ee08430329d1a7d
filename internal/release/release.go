// Package release builds and signs releases into vdc-sim's release
// repository, the directory the Update Server (package updatesrv) serves:
//
//	{repo}/releases/{V}/{NAME}-{V}.tar.zst        one per component
//	{repo}/releases/{V}/quantix-os-{V}.img.zst    the full-system image, if any
//	{repo}/channels/{C}/manifest.json             the channel's current manifest
//	{repo}/channels/{C}/manifest.signed.json      the same bytes in a signed envelope
//
// Artifact paths in a manifest are "releases/{V}/{file}", relative to
// /api/v1/quantix-os/ on the server. manifest.json holds exactly the bytes the
// envelope signs.
//
// Keys: update.key holds the ed25519 private key as a PKCS#8 PEM block
// ("PRIVATE KEY", readable by `openssl pkey`), mode 0600; update.pub holds the
// public key as one line of standard base64 of its raw 32 bytes, the form the
// agent's updates.publicKeys takes.
package release

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"time"

	"github.com/quantix-os/update-agent/internal/archive"
	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/internal/semver"
)

// Sentinel errors; test them with errors.Is.
var (
	// ErrNoChannel: the channel has no release yet.
	ErrNoChannel = errors.New("no such channel")
	// ErrNotNewer: a release's version is not newer than the channel's current one.
	ErrNotNewer = errors.New("not newer than the channel's current release")
	// ErrArtifactExists: a different file already sits where an artifact goes.
	ErrArtifactExists = errors.New("already exists with other content")
)

// File names inside a key directory.
const (
	KeyFile    = "update.key"
	PubKeyFile = "update.pub"
)

// DefaultExpires is how long a release's manifest stays valid by default.
const DefaultExpires = 90 * 24 * time.Hour

const pemType = "PRIVATE KEY"

// GenerateKey creates a new ed25519 key pair in dir (made if missing) as
// update.key (PKCS#8 PEM, 0600) and update.pub (base64, one line). It refuses
// to overwrite either file: replacing a key silently would lock every agent
// that trusts the old one out of future releases.
func GenerateKey(dir string) (pubPath, keyPath string, err error) {
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		return "", "", fmt.Errorf("release: generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", "", fmt.Errorf("release: generate key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", fmt.Errorf("release: generate key: %w", err)
	}
	pubPath, keyPath = filepath.Join(dir, PubKeyFile), filepath.Join(dir, KeyFile)
	for _, p := range []string{keyPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return "", "", fmt.Errorf("release: generate key: %s already exists, refusing to overwrite it", p)
		}
	}
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der}), 0o600); err != nil {
		return "", "", fmt.Errorf("release: generate key: %w", err)
	}
	if err := writeNew(pubPath, []byte(manifest.EncodePublicKey(pub)+"\n"), 0o644); err != nil {
		os.Remove(keyPath)
		return "", "", fmt.Errorf("release: generate key: %w", err)
	}
	return pubPath, keyPath, nil
}

// writeNew creates path, which must not exist, with data, and syncs it.
func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// LoadPrivateKey reads an update.key written by GenerateKey: a PEM
// "PRIVATE KEY" block holding a PKCS#8 ed25519 key.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("release: load key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("release: load key %s: no PEM block", path)
	}
	if block.Type != pemType {
		return nil, fmt.Errorf("release: load key %s: PEM block is %q, want %q", path, block.Type, pemType)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("release: load key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("release: load key %s: a %T, want an ed25519 key", path, k)
	}
	return priv, nil
}

// Spec describes a release to create.
type Spec struct {
	Repo       string // the repository root
	Channel    string
	Version    string // semver, newer than the channel's current release
	Notes      string // releaseNotes
	MinVersion string // optional: oldest installed version that may update to this one
	// Expires is how long the manifest is valid; 0 means DefaultExpires.
	Expires time.Duration
	// Components maps each component name to the directory packed as its archive.
	Components map[string]string
	// Image is an optional raw disk image file, compressed into the release.
	Image string
	Key   ed25519.PrivateKey
	Now   time.Time // zero: time.Now()
}

// Create builds the release s describes: it packs each component and the
// image into {repo}/releases/{V}/, writes the channel's manifest with the
// next serial, and signs it. Both channel files are replaced atomically, one
// after the other; the signed one, which agents read, last.
//
// An artifact file that already exists (the same version released into
// another channel) is kept when its content is identical, and is an error
// wrapping ErrArtifactExists otherwise: published bytes never change under a
// manifest that names them.
//
// Create does not lock the repository: run one release per channel at a time.
func Create(ctx context.Context, s Spec) (*manifest.Manifest, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	now := s.Now
	if now.IsZero() {
		now = time.Now()
	}
	// Whole seconds keep the manifest readable; Round(0) drops the monotonic clock.
	now = now.UTC().Round(0).Truncate(time.Second)
	expires := s.Expires
	if expires == 0 {
		expires = DefaultExpires
	}

	serial := uint64(1)
	cur, err := Channel(s.Repo, s.Channel)
	switch {
	case errors.Is(err, ErrNoChannel):
	case err != nil:
		return nil, fmt.Errorf("release %s: %w", s.Version, err)
	default:
		if n, err := semver.Compare(s.Version, cur.Version); err != nil || n <= 0 {
			return nil, fmt.Errorf("release: version %s: %w: channel %s is at %s (serial %d)",
				s.Version, ErrNotNewer, s.Channel, cur.Version, cur.Serial)
		}
		serial = cur.Serial + 1
	}

	relDir := path.Join("releases", s.Version)
	if err := os.MkdirAll(filepath.Join(s.Repo, filepath.FromSlash(relDir)), 0o755); err != nil {
		return nil, fmt.Errorf("release %s: %w", s.Version, err)
	}
	m := &manifest.Manifest{
		Schema: manifest.Schema, Product: manifest.Product, Channel: s.Channel, Version: s.Version, Serial: serial,
		ReleasedAt: now, ExpiresAt: now.Add(expires), MinVersion: s.MinVersion, ReleaseNotes: s.Notes,
		Components: []manifest.Component{},
	}
	names := make([]string, 0, len(s.Components))
	for name := range s.Components {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("release %s: %w", s.Version, err)
		}
		art := path.Join(relDir, name+"-"+s.Version+".tar.zst")
		src := s.Components[name]
		out, err := writeArtifact(ctx, s.Repo, art, nil, func(w io.Writer) (int64, error) {
			return archive.Pack(w, src)
		})
		if err != nil {
			return nil, fmt.Errorf("release %s: component %s: %w", s.Version, name, err)
		}
		m.Components = append(m.Components, manifest.Component{
			Name: name, Version: s.Version, Artifact: art, SHA256: out.sum, Size: out.size, RawSize: out.rawSize,
		})
	}
	if s.Image != "" {
		art := path.Join(relDir, manifest.Product+"-"+s.Version+".img.zst")
		raw := sha256.New()
		out, err := writeArtifact(ctx, s.Repo, art, raw, func(w io.Writer) (int64, error) {
			f, err := os.Open(s.Image)
			if err != nil {
				return 0, err
			}
			defer f.Close()
			return archive.Compress(w, io.TeeReader(f, raw))
		})
		if err != nil {
			return nil, fmt.Errorf("release %s: image: %w", s.Version, err)
		}
		m.Image = &manifest.Image{Artifact: art, SHA256: out.sum, Size: out.size, RawSHA256: out.rawSum, RawSize: out.rawSize}
	}

	raw, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("release %s: %w", s.Version, err)
	}
	raw = append(raw, '\n')
	env, err := manifest.Sign(raw, s.Key)
	if err != nil {
		return nil, fmt.Errorf("release %s: %w", s.Version, err)
	}
	chDir := filepath.Join(s.Repo, "channels", s.Channel)
	if err := os.MkdirAll(chDir, 0o755); err != nil {
		return nil, fmt.Errorf("release %s: %w", s.Version, err)
	}
	if err := writeAtomic(filepath.Join(chDir, "manifest.json"), raw); err != nil {
		return nil, fmt.Errorf("release %s: %w", s.Version, err)
	}
	if err := writeAtomic(filepath.Join(chDir, "manifest.signed.json"), env); err != nil {
		return nil, fmt.Errorf("release %s: %w", s.Version, err)
	}
	return m, nil
}

// check refuses a Spec that cannot make a valid release, before any work.
func (s Spec) check() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("release %s: %s", s.Version, fmt.Sprintf(format, args...))
	}
	if s.Repo == "" {
		return bad("no repository directory")
	}
	if err := manifest.ValidChannel(s.Channel); err != nil {
		return bad("%v", err)
	}
	if err := semver.Valid(s.Version); err != nil {
		return fmt.Errorf("release: version: %w", err)
	}
	if s.MinVersion != "" {
		n, err := semver.Compare(s.MinVersion, s.Version)
		if err != nil {
			return bad("min version: %v", err)
		}
		if n > 0 {
			return bad("min version %s is newer than the release itself", s.MinVersion)
		}
	}
	if s.Expires < 0 {
		return bad("expiry %s is negative", s.Expires)
	}
	if len(s.Key) != ed25519.PrivateKeySize {
		return bad("no signing key (or a key of %d bytes)", len(s.Key))
	}
	if len(s.Components) == 0 && s.Image == "" {
		return bad("no components and no image")
	}
	for name, src := range s.Components {
		if err := manifest.ValidComponentName(name); err != nil {
			return bad("%v", err)
		}
		fi, err := os.Stat(src)
		if err != nil {
			return bad("component %s: source: %v", name, err)
		}
		if !fi.IsDir() {
			return bad("component %s: source %s is not a directory", name, src)
		}
	}
	if s.Image != "" {
		fi, err := os.Stat(s.Image)
		if err != nil {
			return bad("image: %v", err)
		}
		if !fi.Mode().IsRegular() {
			return bad("image %s is not a regular file", s.Image)
		}
		if fi.Size() == 0 {
			return bad("image %s is empty", s.Image)
		}
	}
	return nil
}

type written struct {
	sum, rawSum   string
	size, rawSize int64
}

// writeArtifact writes an artifact through fill into a temp file beside its
// final place, hashing it on the way, and renames it into place; rawHash, if
// set, is the hash fill computes over its input. An existing file at the
// final place is kept if identical, else ErrArtifactExists.
func writeArtifact(ctx context.Context, repo, art string, rawHash hash.Hash, fill func(io.Writer) (int64, error)) (written, error) {
	dst := filepath.Join(repo, filepath.FromSlash(art))
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*.tmp")
	if err != nil {
		return written{}, err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename this is a no-op
	h := sha256.New()
	cw := &countWriter{ctx: ctx, w: io.MultiWriter(f, h)}
	rawSize, err := fill(cw)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return written{}, err
	}
	out := written{sum: hex.EncodeToString(h.Sum(nil)), size: cw.n, rawSize: rawSize}
	if rawHash != nil {
		out.rawSum = hex.EncodeToString(rawHash.Sum(nil))
	}
	if rawSize <= 0 {
		return written{}, errors.New("empty input")
	}
	switch same, err := sameContent(dst, out.sum, out.size); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return written{}, err
	case same:
		return out, nil
	default:
		return written{}, fmt.Errorf("%s: %w (version %s was released before from other sources? remove the file or pick a new version)",
			art, ErrArtifactExists, path.Base(path.Dir(art)))
	}
	if err := os.Rename(tmp, dst); err != nil {
		return written{}, err
	}
	return out, syncDir(filepath.Dir(dst))
}

// sameContent reports whether the file at p has the given sha256 and size.
func sameContent(p, sum string, size int64) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() || fi.Size() != size {
		return false, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, err
	}
	return hex.EncodeToString(h.Sum(nil)) == sum, nil
}

// countWriter counts bytes and stops a long pack when ctx ends.
type countWriter struct {
	ctx context.Context
	w   io.Writer
	n   int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// writeAtomic replaces path with data: temp file, fsync, rename, fsync dir.
func writeAtomic(p string, data []byte) error {
	dir := filepath.Dir(p)
	f, err := os.CreateTemp(dir, "."+filepath.Base(p)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Channel returns the current manifest of a channel, read from its signed
// envelope (the file agents get) without checking the signature. A channel
// with no release gives an error wrapping ErrNoChannel.
func Channel(repo, channel string) (*manifest.Manifest, error) {
	if err := manifest.ValidChannel(channel); err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	p := filepath.Join(repo, "channels", channel, "manifest.signed.json")
	b, err := readCapped(p, 2*manifest.MaxSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("release: channel %q has no release: %w", channel, ErrNoChannel)
	}
	if err != nil {
		return nil, fmt.Errorf("release: channel %s: %w", channel, err)
	}
	env, err := manifest.DecodeSigned(b)
	if err != nil {
		return nil, fmt.Errorf("release: channel %s: %s: %w", channel, p, err)
	}
	m, err := manifest.Decode(env.Signed)
	if err != nil {
		return nil, fmt.Errorf("release: channel %s: %s: %w", channel, p, err)
	}
	return m, nil
}

// readCapped reads a file of at most limit bytes (one more is read so that
// the manifest decoders see, and name, an oversized file).
func readCapped(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit+1))
}
