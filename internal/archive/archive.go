// Package archive packs and extracts the zstd-compressed tar archives that carry
// component updates, and wraps the bounded zstd decoder used for disk images.
//
// Archives come from the network, so Extract treats every byte as hostile: it
// writes only through an os.Root opened on the staging directory, refuses any
// entry that could land outside it or harm the host, and caps the decompressed
// stream at the size the signed manifest declares.
package archive

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Sentinel errors; Extract and Pack wrap them with the offending entry's name.
var (
	// ErrUnsafePath: an entry name that is empty, absolute, contains "..",
	// or would be written through a symlink or a non-directory.
	ErrUnsafePath = errors.New("unsafe path")
	// ErrLinkEscape: a symlink whose target is absolute or resolves outside the tree.
	ErrLinkEscape = errors.New("symlink escapes the tree")
	// ErrHardLink: hard link entries are always refused.
	ErrHardLink = errors.New("hard links are not allowed")
	// ErrSpecialFile: device nodes, fifos, sockets, sparse files and unknown types.
	ErrSpecialFile = errors.New("special file not allowed")
	// ErrSetuid: setuid, setgid or sticky bit set.
	ErrSetuid = errors.New("setuid, setgid or sticky bit not allowed")
	// ErrTooLarge: the decompressed stream, or a declared entry size, exceeds the cap.
	ErrTooLarge = errors.New("exceeds size cap")
	// ErrTooManyEntries: more than MaxEntries entries.
	ErrTooManyEntries = errors.New("too many entries")
	// ErrDuplicate: the same path appears twice.
	ErrDuplicate = errors.New("duplicate entry")
	// ErrCorrupt: the zstd or tar stream is malformed.
	ErrCorrupt = errors.New("corrupt archive")
)

// MaxWindow is the largest zstd window accepted by NewReader, and the window
// Pack and Compress use, so that everything we produce we can read back.
// 8 MiB is also what the zstd CLI uses up to level 19 (without --long).
const MaxWindow = 8 << 20

// maxDecoderMemory bounds any single allocation the decoder makes.
const maxDecoderMemory = 64 << 20

// MaxEntries is the most entries Extract accepts in one archive.
const MaxEntries = 100_000

// setuidBits are the tar mode bits Extract refuses (ISUID, ISGID, ISVTX).
const setuidBits = 0o4000 | 0o2000 | 0o1000

func newEncoder(w io.Writer) (*zstd.Encoder, error) {
	return zstd.NewWriter(w,
		zstd.WithEncoderLevel(zstd.SpeedBetterCompression),
		zstd.WithWindowSize(MaxWindow),
	)
}

// countWriter counts the bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Pack writes srcDir as a zstd-compressed tar to w.
//
// Entries are paths relative to srcDir ("bin/qx-node"; directories carry the
// conventional trailing slash, "bin/"), in lexical order within each directory,
// each directory before its contents. Only regular files, directories and
// symlinks whose target stays inside srcDir (see Extract for the rule) are
// packed; anything else is an error naming the path. Permission bits and
// mtimes (to the second) are kept; uid and gid are 0, owner names empty.
// rawSize is the exact length of the uncompressed tar stream.
func Pack(w io.Writer, srcDir string) (rawSize int64, err error) {
	root, err := filepath.EvalSymlinks(srcDir)
	if err != nil {
		return 0, fmt.Errorf("archive: pack %s: %w", srcDir, err)
	}
	if fi, err := os.Stat(root); err != nil {
		return 0, fmt.Errorf("archive: pack %s: %w", srcDir, err)
	} else if !fi.IsDir() {
		return 0, fmt.Errorf("archive: pack %s: not a directory", srcDir)
	}
	enc, err := newEncoder(w)
	if err != nil {
		return 0, fmt.Errorf("archive: pack %s: %w", srcDir, err)
	}
	cw := &countWriter{w: enc}
	tw := tar.NewWriter(cw)
	walkErr := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		return packEntry(tw, p, filepath.ToSlash(rel), d)
	})
	if walkErr != nil {
		enc.Close()
		return 0, fmt.Errorf("archive: pack %s: %w", srcDir, walkErr)
	}
	if err := tw.Close(); err != nil {
		enc.Close()
		return 0, fmt.Errorf("archive: pack %s: %w", srcDir, err)
	}
	if err := enc.Close(); err != nil {
		return 0, fmt.Errorf("archive: pack %s: %w", srcDir, err)
	}
	return cw.n, nil
}

func packEntry(tw *tar.Writer, full, name string, d fs.DirEntry) error {
	info, err := d.Info()
	if err != nil {
		return err
	}
	hdr := &tar.Header{
		Name:    name,
		Mode:    int64(info.Mode().Perm()),
		ModTime: info.ModTime().Truncate(time.Second),
	}
	switch {
	case info.Mode().IsRegular():
		hdr.Typeflag = tar.TypeReg
		hdr.Size = info.Size()
	case info.IsDir():
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
	case info.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(full)
		if err != nil {
			return err
		}
		if err := checkLinkTarget(name, target); err != nil {
			return fmt.Errorf("entry %q: %w", name, err)
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
	default:
		return fmt.Errorf("entry %q: %w (%s)", name, ErrSpecialFile, info.Mode().Type())
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("entry %q: %w", name, err)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	f, err := os.Open(full)
	if err != nil {
		return err
	}
	defer f.Close()
	// CopyN: a file that grew while packing must not overflow its header,
	// and one that shrank is an error rather than a padded lie.
	if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
		return fmt.Errorf("entry %q: copy: %w", name, err)
	}
	return nil
}

// checkLinkTarget reports whether a symlink at name (slash-separated, relative
// to the tree root) pointing at target stays inside the tree. The rule is
// stricter than a lexical Clean: target must be relative, non-empty, and any
// ".." must come before every other component. A ".." after a name could
// climb out of whatever that name resolves to (a symlink to ".", say), which a
// lexical check cannot see; leading ".." climbs only the link's own real
// parent directories, and must not climb above the root.
func checkLinkTarget(name, target string) error {
	if target == "" {
		return fmt.Errorf("%w: empty target", ErrLinkEscape)
	}
	if strings.HasPrefix(target, "/") {
		return fmt.Errorf("%w: absolute target %q", ErrLinkEscape, target)
	}
	if strings.ContainsRune(target, 0) {
		return fmt.Errorf("%w: target %q contains NUL", ErrLinkEscape, target)
	}
	depth := strings.Count(path.Dir(name), "/") + 1
	if path.Dir(name) == "." {
		depth = 0
	}
	ups, named := 0, false
	for _, c := range strings.Split(target, "/") {
		switch c {
		case "", ".":
		case "..":
			if named {
				return fmt.Errorf("%w: target %q has \"..\" after a name", ErrLinkEscape, target)
			}
			ups++
			if ups > depth {
				return fmt.Errorf("%w: target %q climbs above the root", ErrLinkEscape, target)
			}
		default:
			named = true
		}
	}
	return nil
}

// Compress writes r zstd-compressed to w with the same settings as Pack, and
// returns the number of uncompressed bytes read from r (an image's rawSize).
func Compress(w io.Writer, r io.Reader) (rawSize int64, err error) {
	enc, err := newEncoder(w)
	if err != nil {
		return 0, fmt.Errorf("archive: compress: %w", err)
	}
	n, err := io.Copy(enc, r)
	if err != nil {
		enc.Close()
		return n, fmt.Errorf("archive: compress: %w", err)
	}
	if err := enc.Close(); err != nil {
		return n, fmt.Errorf("archive: compress: %w", err)
	}
	return n, nil
}
