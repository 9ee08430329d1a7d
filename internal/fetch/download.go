package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Progress reports a download's progress: done bytes of total.
type Progress func(done, total int64)

// Progress is reported at most this often (or after this many bytes), and
// once at the end.
const (
	progressEvery = 100 * time.Millisecond
	progressBytes = 1 << 20
)

// Suffixes of the files kept beside dst while a download is incomplete.
const (
	partSuffix = ".part"
	metaSuffix = ".part.etag" // JSON partMeta: which URL and ETag the .part holds
)

// PartPath is where Download keeps the bytes of dst received so far.
func PartPath(dst string) string { return dst + partSuffix }

// partMeta records what the bytes in a .part are, so a resume (even by a new
// process) asks for the rest of the same thing. It names the artifact rather
// than the URL so a changed server address does not waste what is on disk:
// If-Range and the final hash check guard the content.
type partMeta struct {
	Artifact string `json:"artifact"`
	ETag     string `json:"etag,omitempty"` // a strong ETag; empty when the server gave none
}

// Download fetches artifact into the file dst, checking size and sha256
// (hex) while streaming. Bytes go to dst+".part", with the server's ETag kept
// in dst+".part.etag", so a broken connection, a retry or a new process after
// a crash resumes with "Range: bytes=N-" and "If-Range: etag" after
// re-hashing the bytes already on disk. A 200 answer to a ranged request
// (changed file, or no range support) starts again from 0.
//
// More than size bytes are never written: a longer or shorter artifact gives
// ErrSize, a wrong hash ErrChecksum, and both remove the .part so the next
// call starts clean; neither is retried here. On success the file is synced,
// renamed to dst and the directory synced. If dst already has the right size
// and hash, Download returns at once. Cancelling ctx stops promptly and
// leaves the .part for a later resume.
//
// progress, if not nil, is called at most every ~100ms or 1 MiB, and once
// at the end with (size, size).
func (c *Client) Download(ctx context.Context, artifact, dst string, size int64, sha256hex string, progress Progress) error {
	fail := func(err error) error { return fmt.Errorf("fetch %s: %w", artifact, err) }
	u, err := c.ArtifactURL(artifact)
	if err != nil {
		return fail(err)
	}
	if size < 0 {
		return fail(fmt.Errorf("negative size %d", size))
	}
	want, err := hex.DecodeString(sha256hex)
	if err != nil || len(want) != sha256.Size {
		return fail(fmt.Errorf("sha256 %q is not %d hex digits", sha256hex, 2*sha256.Size))
	}
	if dst == "" {
		return fail(errors.New("empty destination path"))
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}

	d := &download{
		c:        c,
		artifact: artifact,
		url:      u,
		dst:      dst,
		part:     PartPath(dst),
		metaPath: dst + metaSuffix,
		size:     size,
		want:     want,
		h:        sha256.New(),
		prog:     throttle{fn: progress},
	}
	ok, err := fileMatches(ctx, dst, size, want)
	if err != nil {
		return fail(err)
	}
	if ok {
		// A leftover .part from an earlier attempt is of no use now.
		_ = os.Remove(d.part)
		_ = os.Remove(d.metaPath)
		d.prog.final(size)
		return nil
	}
	return d.run(ctx)
}

type download struct {
	c        *Client
	artifact string
	url      string
	dst      string
	part     string
	metaPath string
	size     int64
	want     []byte

	f    *os.File
	h    hash.Hash // over .part[0:off]
	off  int64     // bytes in .part, all hashed
	high int64     // furthest off reached; passing it refills the retry budget
	etag string    // strong validator for If-Range; "" sends a plain Range
	prog throttle
	buf  []byte
}

func (d *download) fail(err error) error {
	return fmt.Errorf("fetch %s: %w", d.artifact, err)
}

func (d *download) run(ctx context.Context) error {
	f, err := os.OpenFile(d.part, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return d.fail(err)
	}
	d.f = f
	defer func() {
		if d.f != nil {
			// Keep what we have for a resume; syncing makes it likelier to
			// survive a crash (the re-hash and final check catch it if not).
			_ = d.f.Sync()
			_ = d.f.Close()
		}
	}()

	if err := d.resumePoint(ctx); err != nil {
		return d.fail(err)
	}
	d.prog.update(d.off, d.size)
	if d.off < d.size {
		d.buf = make([]byte, 256<<10)
		if err := d.c.retry(ctx, d.artifact, d.attempt); err != nil {
			if errors.Is(err, ErrSize) {
				d.discard()
			}
			return err
		}
	}
	return d.finish()
}

// resumePoint decides how much of an existing .part to keep and hashes it.
func (d *download) resumePoint(ctx context.Context) error {
	st, err := d.f.Stat()
	if err != nil {
		return err
	}
	n := st.Size()
	meta, metaOK := readMeta(d.metaPath)
	switch {
	case n == 0:
	case n > d.size:
		d.c.log.Info("fetch: partial file longer than the artifact; starting again", "artifact", d.artifact, "part", d.part, "have", n, "size", d.size)
		n = 0
	case !metaOK || meta.Artifact != d.artifact:
		d.c.log.Info("fetch: partial file of unknown origin; starting again", "artifact", d.artifact, "part", d.part)
		n = 0
	}
	if n == 0 {
		return d.f.Truncate(0)
	}
	if _, err := io.Copy(d.h, ctxReader{ctx, io.NewSectionReader(d.f, 0, n)}); err != nil {
		return fmt.Errorf("re-hash %s: %w", d.part, err)
	}
	d.off, d.high, d.etag = n, n, meta.ETag
	d.c.log.Info("fetch: resuming", "artifact", d.artifact, "offset", n, "size", d.size)
	return nil
}

func (d *download) attempt(ctx context.Context) (bool, error) {
	err := d.get(ctx)
	advanced := d.off > d.high
	d.high = max(d.high, d.off)
	return advanced, err
}

func (d *download) get(ctx context.Context) error {
	actx, w, done := d.c.attempt(ctx)
	defer done()

	req, err := http.NewRequestWithContext(actx, http.MethodGet, d.url, nil)
	if err != nil {
		return err
	}
	// Ranges and the hash are over the stored bytes; a transparent gzip
	// would change both.
	req.Header.Set("Accept-Encoding", "identity")
	ranged := d.off > 0
	if ranged {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(d.off, 10)+"-")
		if d.etag != "" {
			req.Header.Set("If-Range", d.etag)
		}
	}

	resp, err := d.c.send(req, w)
	if err != nil {
		return d.c.transportError(ctx, actx, err)
	}
	defer resp.Body.Close()

	switch {
	case resp.StatusCode == http.StatusPartialContent && ranged:
		start, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || start != d.off {
			// Something is off with this server's ranges: start again.
			if rerr := d.restart(""); rerr != nil {
				return rerr
			}
			return temporary{fmt.Errorf("asked for bytes from %d, got Content-Range %q", d.off, resp.Header.Get("Content-Range"))}
		}
		if total >= 0 && total != d.size {
			return fmt.Errorf("%w: server has %d bytes, want %d", ErrSize, total, d.size)
		}
	case resp.StatusCode == http.StatusOK:
		if resp.ContentLength >= 0 && resp.ContentLength != d.size {
			return fmt.Errorf("%w: server has %d bytes, want %d", ErrSize, resp.ContentLength, d.size)
		}
		if ranged {
			d.c.log.Info("fetch: server sent the whole artifact; starting again", "artifact", d.artifact, "had", d.off)
		}
		if err := d.restart(resp.Header.Get("ETag")); err != nil {
			return err
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && ranged:
		if err := d.restart(""); err != nil {
			return err
		}
		return temporary{fmt.Errorf("server refused range from byte %d; starting again", d.off)}
	default:
		return classify(resp)
	}
	return d.copy(ctx, actx, w, resp)
}

// restart empties the .part and records what it will now hold.
func (d *download) restart(etag string) error {
	if err := d.f.Truncate(0); err != nil {
		return err
	}
	d.h.Reset()
	d.off = 0
	d.etag = strongETag(etag)
	return writeMeta(d.metaPath, partMeta{Artifact: d.artifact, ETag: d.etag})
}

func (d *download) copy(ctx, actx context.Context, w *watchdog, resp *http.Response) error {
	r := stallReader{resp.Body, w}
	for {
		n, rerr := r.Read(d.buf)
		if n > 0 {
			p := d.buf[:n]
			over := d.off+int64(n) > d.size
			if over {
				p = p[:d.size-d.off]
			}
			if len(p) > 0 {
				if _, err := d.f.WriteAt(p, d.off); err != nil {
					return err
				}
				d.h.Write(p)
				d.off += int64(len(p))
				d.prog.update(d.off, d.size)
			}
			if over {
				return fmt.Errorf("%w: server sent more than %d bytes", ErrSize, d.size)
			}
		}
		switch {
		case rerr == io.EOF && d.off == d.size:
			return nil
		case rerr == io.EOF && resp.StatusCode == http.StatusPartialContent:
			// A server may send less than the rest; ask again from here.
			return temporary{fmt.Errorf("range ended at byte %d of %d", d.off, d.size)}
		case rerr == io.EOF:
			return fmt.Errorf("%w: server sent %d bytes, want %d", ErrSize, d.off, d.size)
		case rerr != nil:
			return d.c.transportError(ctx, actx, rerr)
		}
	}
}

func (d *download) finish() error {
	if got := d.h.Sum(nil); d.off != d.size || !bytes.Equal(got, d.want) {
		d.discard()
		return d.fail(fmt.Errorf("sha256 mismatch: got %x, want %x: %w", got, d.want, ErrChecksum))
	}
	f := d.f
	d.f = nil
	if err := f.Sync(); err != nil {
		f.Close()
		return d.fail(err)
	}
	if err := f.Close(); err != nil {
		return d.fail(err)
	}
	if err := os.Rename(d.part, d.dst); err != nil {
		return d.fail(err)
	}
	_ = os.Remove(d.metaPath)
	if err := syncDir(filepath.Dir(d.dst)); err != nil {
		return d.fail(err)
	}
	d.prog.final(d.size)
	return nil
}

// discard drops the .part and its metadata so the next try starts clean.
func (d *download) discard() {
	if d.f != nil {
		d.f.Close()
		d.f = nil
	}
	_ = os.Remove(d.part)
	_ = os.Remove(d.metaPath)
}

// fileMatches reports whether path is a regular file of the given size and
// sha256. A missing file is no error.
func fileMatches(ctx context.Context, path string, size int64, want []byte) (bool, error) {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !st.Mode().IsRegular() || st.Size() != size {
		return false, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, f}); err != nil {
		return false, fmt.Errorf("hash %s: %w", path, err)
	}
	return bytes.Equal(h.Sum(nil), want), nil
}

func readMeta(path string) (partMeta, bool) {
	var m partMeta
	b, err := os.ReadFile(path)
	if err != nil || len(b) > 8<<10 || json.Unmarshal(b, &m) != nil || m.Artifact == "" {
		return partMeta{}, false
	}
	m.ETag = strongETag(m.ETag)
	return m, true
}

func writeMeta(path string, m partMeta) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// strongETag returns etag when it can serve as an If-Range validator: a
// quoted, printable, strong entity tag. Weak or odd ones give "", and the
// resume then relies on the final hash check alone.
func strongETag(etag string) string {
	if len(etag) < 2 || len(etag) > 1024 || etag[0] != '"' || etag[len(etag)-1] != '"' {
		return ""
	}
	for i := 1; i < len(etag)-1; i++ {
		if c := etag[i]; c <= 0x20 || c == '"' || c == 0x7f {
			return ""
		}
	}
	return etag
}

// parseContentRange parses "bytes START-END/TOTAL" (TOTAL may be "*",
// returned as -1).
func parseContentRange(s string) (start, total int64, err error) {
	bad := fmt.Errorf("bad Content-Range %q", s)
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, 0, bad
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, bad
	}
	first, last, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, bad
	}
	start, err1 := strconv.ParseInt(first, 10, 64)
	end, err2 := strconv.ParseInt(last, 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start {
		return 0, 0, bad
	}
	if tot == "*" {
		return start, -1, nil
	}
	total, err = strconv.ParseInt(tot, 10, 64)
	if err != nil || total <= end {
		return 0, 0, bad
	}
	return start, total, nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// ctxReader stops a long local read (re-hashing a large .part) when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// throttle rate-limits Progress calls.
type throttle struct {
	fn       Progress
	last     time.Time
	lastDone int64
}

func (t *throttle) update(done, total int64) {
	// The end is reported by final, exactly once.
	if t.fn == nil || done == total {
		return
	}
	now := time.Now()
	if now.Sub(t.last) >= progressEvery || done-t.lastDone >= progressBytes {
		t.fn(done, total)
		t.last, t.lastDone = now, done
	}
}

func (t *throttle) final(total int64) {
	if t.fn != nil {
		t.fn(total, total)
	}
}
