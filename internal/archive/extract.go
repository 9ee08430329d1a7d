package archive

import (
	"archive/tar"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// NewReader returns a reader of the zstd stream r that decompresses with a
// bounded window (MaxWindow) and memory, so a hostile frame header cannot make
// it allocate much. Reading more than maxRaw decompressed bytes fails with
// ErrTooLarge (the first maxRaw bytes are still delivered). Close releases the
// decoder; it does not close r.
func NewReader(r io.Reader, maxRaw int64) (io.ReadCloser, error) {
	if maxRaw < 0 {
		return nil, fmt.Errorf("archive: negative size cap %d", maxRaw)
	}
	dec, err := zstd.NewReader(r,
		zstd.WithDecoderMaxWindow(MaxWindow),
		zstd.WithDecoderMaxMemory(maxDecoderMemory),
		// A single goroutine: the consumer (disk) is the bottleneck, and the
		// memory stays one window plus one block.
		zstd.WithDecoderConcurrency(1),
		// Never decode a small in-memory input in one go: that path
		// allocates the whole output up front.
		zstd.WithDecodeBuffersBelow(0),
	)
	if err != nil {
		return nil, fmt.Errorf("archive: zstd reader: %w", err)
	}
	return &capReader{dec: dec, max: maxRaw}, nil
}

// capReader delivers at most max decompressed bytes, then ErrTooLarge.
type capReader struct {
	dec *zstd.Decoder
	n   int64
	max int64
	err error
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	// Ask for one byte past the cap so that a stream of exactly max bytes
	// ends cleanly and a longer one is caught.
	if rem := c.max - c.n + 1; int64(len(p)) > rem {
		p = p[:rem]
	}
	n, err := c.dec.Read(p)
	c.n += int64(n)
	if c.n > c.max {
		n -= int(c.n - c.max)
		c.n = c.max
		c.err = fmt.Errorf("decompressed stream %w of %d bytes", ErrTooLarge, c.max)
		return n, c.err
	}
	if err != nil && err != io.EOF {
		c.err = fmt.Errorf("%w: zstd: %w", ErrCorrupt, err)
		return n, c.err
	}
	return n, err
}

func (c *capReader) Close() error {
	c.dec.Close()
	return nil
}

// Stats counts what Extract wrote.
type Stats struct {
	Files, Dirs, Symlinks int
	Bytes                 int64 // bytes of regular file content
}

// Extract reads a zstd-compressed tar from r into dst, an existing empty
// directory, and returns what it wrote. All writes go through os.Root on dst.
//
// Refused, with an error naming the entry: names that are empty, absolute or
// contain ".." (ErrUnsafePath); entries under a previously extracted symlink
// or file (ErrUnsafePath); symlinks with an absolute target or one that could
// resolve outside dst (ErrLinkEscape; the target must be relative, with any
// ".." before every name and not climbing above dst); all hard links
// (ErrHardLink: Pack never makes them and component trees do not need them);
// device nodes, fifos, sockets, sparse files and unknown types
// (ErrSpecialFile); setuid, setgid and sticky bits (ErrSetuid); a path seen
// twice (ErrDuplicate, except a directory entry for a directory already made
// implicitly); more than MaxEntries entries (ErrTooManyEntries); a
// decompressed stream longer than maxRaw or an entry declaring more
// (ErrTooLarge); a malformed zstd or tar stream, including one cut off
// between entries or lacking the end-of-archive blocks (ErrCorrupt).
//
// A leading "./" and a "./" root entry are tolerated (GNU tar -C dir . makes
// them); PAX global headers are skipped. Files and directories get the entry's
// permission bits and mtime. Before returning successfully Extract syncs dst's
// filesystem, so the tree is durable before the caller swaps it into place.
// On error the caller removes dst. Decompression runs in a goroutine of its
// own, up to 1 MiB ahead of the writes (see readAhead), and two more create
// the small files (see writers).
func Extract(ctx context.Context, r io.Reader, dst string, maxRaw int64) (Stats, error) {
	return extract(ctx, r, dst, maxRaw, limits{maxEntries: MaxEntries})
}

// limits lets tests lower the entry cap and skip the sync (which flushes the
// whole filesystem and would dominate a fuzzing run).
type limits struct {
	maxEntries int
	noSync     bool
}

// kind is what Extract made at a path.
type kind uint8

const (
	kindImplicitDir kind = iota + 1 // parent made for a later entry
	kindDir
	kindFile
	kindSymlink
)

type dirMeta struct {
	name  string
	mode  os.FileMode
	mtime time.Time
}

type extractor struct {
	ctx   context.Context
	root  *os.Root
	tr    *tar.Reader
	max   int64
	seen  map[string]kind
	dirs  []dirMeta
	stats Stats
	buf   []byte
	w     *writers // small files, in the background
}

func extract(ctx context.Context, r io.Reader, dst string, maxRaw int64, lim limits) (Stats, error) {
	if err := ctx.Err(); err != nil {
		return Stats{}, fmt.Errorf("archive: extract: %w", err)
	}
	root, err := os.OpenRoot(dst)
	if err != nil {
		return Stats{}, fmt.Errorf("archive: extract: %w", err)
	}
	defer root.Close()
	// The bookkeeping below assumes Extract made everything in dst.
	d, err := root.Open(".")
	if err != nil {
		return Stats{}, fmt.Errorf("archive: extract: %w", err)
	}
	defer d.Close()
	if names, err := d.Readdirnames(1); len(names) > 0 {
		return Stats{}, fmt.Errorf("archive: extract: %s is not empty", dst)
	} else if err != nil && err != io.EOF {
		return Stats{}, fmt.Errorf("archive: extract: %w", err)
	}

	zr, err := NewReader(r, maxRaw)
	if err != nil {
		return Stats{}, err
	}
	defer zr.Close()
	// Decompress in a goroutine of its own, ahead of the files' writes.
	ahead := newReadAhead(zr)
	defer ahead.Close()
	x := &extractor{
		ctx:  ctx,
		root: root,
		tr:   tar.NewReader(ahead),
		max:  maxRaw,
		seen: make(map[string]kind),
		buf:  make([]byte, 256<<10),
	}
	x.w = startWriters(x)
	defer x.w.wait()
	last := ""
	for n := 0; ; n++ {
		if err := ctx.Err(); err != nil {
			return x.stats, fmt.Errorf("archive: extract: %w", err)
		}
		if err := x.w.failed(); err != nil {
			return x.stats, err
		}
		hdr, err := x.tr.Next()
		if err == io.EOF {
			// archive/tar also reports a clean EOF when the stream simply
			// stops between entries; only the two zero blocks that end an
			// archive mean nothing was cut off.
			if ahead.zeros < 2*512 {
				if n == 0 {
					return x.stats, fmt.Errorf("archive: %w: empty stream, no end-of-archive marker", ErrCorrupt)
				}
				return x.stats, fmt.Errorf("archive: after entry %q: %w: no end-of-archive marker (truncated?)", last, ErrCorrupt)
			}
			break
		}
		if err != nil {
			if n == 0 {
				return x.stats, fmt.Errorf("archive: read first header: %w", readErr(err))
			}
			return x.stats, fmt.Errorf("archive: read header after entry %q: %w", last, readErr(err))
		}
		if n >= lim.maxEntries {
			return x.stats, fmt.Errorf("archive: entry %q: %w (more than %d)", hdr.Name, ErrTooManyEntries, lim.maxEntries)
		}
		last = hdr.Name
		if err := x.entry(hdr); err != nil {
			return x.stats, fmt.Errorf("archive: entry %q: %w", hdr.Name, err)
		}
	}
	// Read to the end of the zstd stream: trailing data past the cap is
	// refused, and the frame checksum is only verified at the end.
	if _, err := io.CopyBuffer(io.Discard, ahead, x.buf); err != nil {
		return x.stats, fmt.Errorf("archive: after last entry %q: %w", last, readErr(err))
	}
	if err := x.w.wait(); err != nil {
		return x.stats, err
	}
	if err := ctx.Err(); err != nil {
		return x.stats, fmt.Errorf("archive: extract: %w", err)
	}
	if err := x.finishDirs(); err != nil {
		return x.stats, err
	}
	if lim.noSync {
		return x.stats, nil
	}
	// One syncfs rather than an fsync per file and directory: a component
	// has hundreds of files, and the caller renames the tree into place
	// right after, so all of it must be on disk first.
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return x.stats, fmt.Errorf("archive: extract: syncfs %s: %w", dst, err)
	}
	return x.stats, nil
}

// readErr classifies an error from reading the decompressed tar stream.
func readErr(err error) error {
	if errors.Is(err, ErrTooLarge) || errors.Is(err, ErrCorrupt) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrCorrupt, err)
}

// cleanName validates a tar entry name and returns its slash-separated
// relative form, or "" for the root directory itself.
func cleanName(name string, isDir bool) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%w: empty name", ErrUnsafePath)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: absolute name", ErrUnsafePath)
	}
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: NUL in name", ErrUnsafePath)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("%w: \"..\" in name", ErrUnsafePath)
		}
	}
	clean := path.Clean(name)
	if clean == "." {
		if !isDir {
			return "", fmt.Errorf("%w: empty name", ErrUnsafePath)
		}
		return "", nil
	}
	return clean, nil
}

func (x *extractor) entry(hdr *tar.Header) error {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink:
	case tar.TypeLink:
		return ErrHardLink
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return fmt.Errorf("%w (type %q)", ErrSpecialFile, hdr.Typeflag)
	default:
		// Includes GNU sparse ('S') and contiguous files ('7').
		return fmt.Errorf("%w (type %q)", ErrSpecialFile, hdr.Typeflag)
	}
	// PAX sparse files arrive as TypeReg with GNU.sparse.* records; their
	// holes would expand past the raw stream, so refuse them too.
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return fmt.Errorf("%w (sparse file)", ErrSpecialFile)
		}
	}
	name, err := cleanName(hdr.Name, hdr.Typeflag == tar.TypeDir)
	if err != nil {
		return err
	}
	if hdr.Mode&setuidBits != 0 {
		return fmt.Errorf("%w (mode %#o)", ErrSetuid, hdr.Mode)
	}
	if name == "" { // "./": dst itself, which the caller owns
		return nil
	}
	if err := x.parents(name); err != nil {
		return err
	}
	perm := os.FileMode(hdr.Mode & 0o777)
	if k, ok := x.seen[name]; ok {
		if k == kindImplicitDir && hdr.Typeflag == tar.TypeDir {
			x.seen[name] = kindDir
			x.dirs = append(x.dirs, dirMeta{name, perm, hdr.ModTime})
			x.stats.Dirs++
			return nil
		}
		return ErrDuplicate
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		// Owner-writable until finishDirs applies the real mode, so that
		// a read-only directory can still be filled.
		if err := x.root.Mkdir(name, 0o700); err != nil {
			return err
		}
		x.seen[name] = kindDir
		x.dirs = append(x.dirs, dirMeta{name, perm, hdr.ModTime})
		x.stats.Dirs++
	case tar.TypeSymlink:
		if err := checkLinkTarget(name, hdr.Linkname); err != nil {
			return err
		}
		if err := x.root.Symlink(hdr.Linkname, name); err != nil {
			return err
		}
		x.seen[name] = kindSymlink
		x.stats.Symlinks++
	case tar.TypeReg:
		return x.file(name, hdr, perm)
	}
	return nil
}

// parents checks that every ancestor of name is a directory Extract made (so
// never a symlink: os.Root would follow one that stays inside dst, and a later
// entry must not write through it), creating missing ones.
func (x *extractor) parents(name string) error {
	dir := path.Dir(name)
	if dir == "." {
		return nil
	}
	var missing []string
	for p := dir; p != "."; p = path.Dir(p) {
		switch x.seen[p] {
		case kindSymlink:
			return fmt.Errorf("%w: parent %q is a symlink", ErrUnsafePath, p)
		case kindFile:
			return fmt.Errorf("%w: parent %q is a file", ErrUnsafePath, p)
		case 0:
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if err := x.root.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, p := range missing {
		x.seen[p] = kindImplicitDir
	}
	return nil
}

func (x *extractor) file(name string, hdr *tar.Header, perm os.FileMode) error {
	if hdr.Size < 0 {
		return fmt.Errorf("%w: negative size", ErrCorrupt)
	}
	// File data is part of the raw stream, so the files together cannot
	// exceed the cap either; checking before creating writes nothing.
	if hdr.Size > x.max-x.stats.Bytes {
		return fmt.Errorf("declared size %d with %d bytes already written: %w of %d bytes",
			hdr.Size, x.stats.Bytes, ErrTooLarge, x.max)
	}
	if hdr.Size <= smallFile {
		data := x.w.buffer(hdr.Size)
		if _, err := io.ReadFull(x.tr, data); err != nil {
			x.w.pool <- data[:0]
			return readErr(err)
		}
		x.seen[name] = kindFile
		x.stats.Files++
		x.stats.Bytes += hdr.Size
		x.w.put(fileJob{name: name, perm: perm, mtime: hdr.ModTime, data: data})
		return nil
	}
	x.seen[name] = kindFile
	x.stats.Files++
	return x.create(name, perm, hdr.ModTime, func(f *os.File) error { return x.copy(f, hdr.Size) })
}

// copy moves size bytes of the current entry to f, checking ctx between
// chunks so a cancel stops even a large file promptly.
func (x *extractor) copy(f *os.File, size int64) error {
	for size > 0 {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		b := x.buf
		if int64(len(b)) > size {
			b = b[:size]
		}
		n, err := io.ReadFull(x.tr, b)
		if n > 0 {
			if _, werr := f.Write(b[:n]); werr != nil {
				return werr
			}
			size -= int64(n)
			x.stats.Bytes += int64(n)
		}
		if err != nil {
			return readErr(err)
		}
	}
	return nil
}

// finishDirs applies directory modes and mtimes, deepest first: writing into a
// directory changes its mtime, and a mode without owner write or search must
// come after everything beneath it.
func (x *extractor) finishDirs() error {
	slices.SortStableFunc(x.dirs, func(a, b dirMeta) int {
		return cmp.Compare(strings.Count(b.name, "/"), strings.Count(a.name, "/"))
	})
	for _, d := range x.dirs {
		if err := x.ctx.Err(); err != nil {
			return fmt.Errorf("archive: extract: %w", err)
		}
		if err := x.root.Chtimes(d.name, d.mtime, d.mtime); err != nil {
			return fmt.Errorf("archive: entry %q: %w", d.name, err)
		}
		if err := x.root.Chmod(d.name, d.mode); err != nil {
			return fmt.Errorf("archive: entry %q: %w", d.name, err)
		}
	}
	return nil
}
