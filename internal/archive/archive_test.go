package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// entry is one tar entry a test writes by hand.
type entry struct {
	hdr  tar.Header
	body string
}

func file(name, body string, mode int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))}, body: body}
}

func dir(name string, mode int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
}

func symlink(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func other(typ byte, name, link string) entry {
	return entry{hdr: tar.Header{Typeflag: typ, Name: name, Linkname: link, Mode: 0o644}}
}

func zstdBytes(t testing.TB, raw []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	if _, err := Compress(&out, bytes.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// tarBytes writes entries with archive/tar; it does not Close the writer when
// a body is shorter than its header says (to forge huge declared sizes).
func tarBytes(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	complete := true
	for _, e := range entries {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("write header %q: %v", h.Name, err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatalf("write body %q: %v", h.Name, err)
		}
		if int64(len(e.body)) != h.Size && h.Typeflag == tar.TypeReg {
			complete = false
		}
	}
	if complete {
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func archive(t testing.TB, entries ...entry) []byte {
	t.Helper()
	return zstdBytes(t, tarBytes(t, entries...))
}

// rawHeader builds a ustar header block by hand, for type flags and PAX
// records archive/tar refuses to write.
func rawHeader(name string, typ byte, size int64) []byte {
	b := make([]byte, 512)
	copy(b[0:100], name)
	copy(b[100:108], "0000644\x00")
	copy(b[108:116], "0000000\x00")
	copy(b[116:124], "0000000\x00")
	copy(b[124:136], fmt.Sprintf("%011o\x00", size))
	copy(b[136:148], "00000000000\x00")
	b[156] = typ
	copy(b[257:265], "ustar\x0000")
	copy(b[148:156], "        ")
	var sum int64
	for _, c := range b {
		sum += int64(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

func pad(b []byte) []byte {
	if n := len(b) % 512; n != 0 {
		b = append(b, make([]byte, 512-n)...)
	}
	return b
}

// paxSparse is a PAX 0.1 sparse file whose expanded size is 1 GiB but whose
// data is 10 bytes.
func paxSparse() []byte {
	recs := ""
	for _, kv := range [][2]string{
		{"GNU.sparse.size", "1073741824"},
		{"GNU.sparse.numblocks", "1"},
		{"GNU.sparse.map", "0,10"},
	} {
		rec := " " + kv[0] + "=" + kv[1] + "\n"
		n := len(rec) + 2
		if len(fmt.Sprint(n))+len(rec) != n {
			n++
		}
		recs += fmt.Sprint(n) + rec
	}
	var raw []byte
	raw = append(raw, rawHeader("PaxHeaders/sparse", 'x', int64(len(recs)))...)
	raw = append(raw, pad([]byte(recs))...)
	raw = append(raw, rawHeader("sparse", '0', 10)...)
	raw = append(raw, pad([]byte("0123456789"))...)
	return append(raw, make([]byte, 1024)...)
}

// gnuSparse is an old GNU sparse ('S') entry.
func gnuSparse() []byte {
	h := rawHeader("sparse", 'S', 10)
	copy(h[257:265], "ustar  \x00") // GNU magic
	// realsize at 483:495, one sparse entry at 386: offset 0, numbytes 10.
	copy(h[386:398], fmt.Sprintf("%011o\x00", 0))
	copy(h[398:410], fmt.Sprintf("%011o\x00", 10))
	copy(h[483:495], fmt.Sprintf("%011o\x00", int64(1)<<30))
	copy(h[148:156], "        ")
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	raw := append(h, pad([]byte("0123456789"))...)
	return append(raw, make([]byte, 1024)...)
}

// sandbox makes parent/{dst,sibling} and returns a check that nothing but
// those two exists in parent and that sibling is still empty.
func sandbox(t testing.TB) (dst string, check func()) {
	t.Helper()
	parent := t.TempDir()
	dst = filepath.Join(parent, "dst")
	sibling := filepath.Join(parent, "sibling")
	for _, d := range []string{dst, sibling} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dst, func() {
		t.Helper()
		names := readNames(t, parent)
		if !slices.Equal(names, []string{"dst", "sibling"}) {
			t.Errorf("parent of dst holds %v, want [dst sibling]", names)
		}
		if names := readNames(t, sibling); len(names) != 0 {
			t.Errorf("sibling of dst holds %v, want nothing", names)
		}
		checkTree(t, dst)
	}
}

func readNames(t testing.TB, d string) []string {
	t.Helper()
	des, err := os.ReadDir(d)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

// checkTree asserts the invariants of anything Extract leaves in dst, even
// after an error: only files, dirs and contained symlinks; no setuid bits.
func checkTree(t testing.TB, dst string) {
	t.Helper()
	err := filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dst, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
			t.Errorf("%s: mode %v has setuid/setgid/sticky", rel, fi.Mode())
		}
		switch {
		case fi.Mode().IsRegular(), fi.IsDir():
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := checkLinkTarget(filepath.ToSlash(rel), target); err != nil {
				t.Errorf("%s: symlink to %q left in dst: %v", rel, target, err)
			}
		default:
			t.Errorf("%s: special file %v left in dst", rel, fi.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestPackExtractRoundTrip(t *testing.T) {
	src := t.TempDir()
	mtime := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	mk := func(rel string, body string, mode os.FileMode) {
		p := filepath.Join(src, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	mk("bin/qx-node", "#!/bin/sh\necho node\n", 0o755)
	mk("etc/qx.conf", "key: value\n", 0o640)
	mk("lib/v1/libqx.so", strings.Repeat("lib", 100000), 0o644)
	mk("empty", "", 0o600)
	mk("ro/inner/file", "read only", 0o444)
	if err := os.Mkdir(filepath.Join(src, "lib/a-dir"), 0o750); err != nil {
		t.Fatal(err)
	}
	for _, l := range [][2]string{
		{"lib/current", "v1"},
		{"bin/lib", "../lib/current/libqx.so"},
		{"self", "."},
	} {
		if err := os.Symlink(l[1], filepath.Join(src, l[0])); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(src, "ro/inner"), 0o555); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "ro"), 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // let TempDir's cleanup remove it
		os.Chmod(filepath.Join(src, "ro"), 0o755)
		os.Chmod(filepath.Join(src, "ro/inner"), 0o755)
	})

	var zbuf bytes.Buffer
	rawSize, err := Pack(&zbuf, src)
	if err != nil {
		t.Fatal(err)
	}

	// rawSize is exactly the tar stream, and the names are as documented.
	zr, err := NewReader(bytes.NewReader(zbuf.Bytes()), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	zr.Close()
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(raw)) != rawSize {
		t.Errorf("rawSize = %d, decompressed %d bytes", rawSize, len(raw))
	}
	var names []string
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: owner %d:%d %q:%q, want 0:0", h.Name, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		names = append(names, h.Name)
	}
	want := []string{"bin/", "bin/lib", "bin/qx-node", "empty", "etc/", "etc/qx.conf",
		"lib/", "lib/a-dir/", "lib/current", "lib/v1/", "lib/v1/libqx.so",
		"ro/", "ro/inner/", "ro/inner/file", "self"}
	if !slices.Equal(names, want) {
		t.Errorf("entries:\n got %q\nwant %q", names, want)
	}

	// Exactly rawSize is within the cap.
	dst, check := sandbox(t)
	st, err := Extract(context.Background(), bytes.NewReader(zbuf.Bytes()), dst, rawSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Chmod(filepath.Join(dst, "ro"), 0o755)
		os.Chmod(filepath.Join(dst, "ro/inner"), 0o755)
	})
	check()
	wantStats := Stats{Files: 5, Dirs: 7, Symlinks: 3, Bytes: int64(len("#!/bin/sh\necho node\n") + len("key: value\n") + 300000 + len("read only"))}
	if st != wantStats {
		t.Errorf("stats = %+v, want %+v", st, wantStats)
	}
	// The two trees match: type, permission bits, content, link target, file mtime.
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		q := filepath.Join(dst, rel)
		a, err := os.Lstat(p)
		if err != nil {
			return err
		}
		b, err := os.Lstat(q)
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		if rel != "." && a.Mode() != b.Mode() {
			t.Errorf("%s: mode %v, want %v", rel, b.Mode(), a.Mode())
		}
		switch {
		case a.Mode().IsRegular():
			x, _ := os.ReadFile(p)
			y, _ := os.ReadFile(q)
			if !bytes.Equal(x, y) {
				t.Errorf("%s: content differs", rel)
			}
			if !b.ModTime().Equal(mtime) {
				t.Errorf("%s: mtime %v, want %v", rel, b.ModTime(), mtime)
			}
		case a.Mode()&fs.ModeSymlink != 0:
			x, _ := os.Readlink(p)
			y, _ := os.Readlink(q)
			if x != y {
				t.Errorf("%s: link %q, want %q", rel, y, x)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestPackRefuses(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, src string)
		want  error
		path  string
	}{
		{"absolute symlink", func(t *testing.T, src string) {
			must(t, os.Symlink("/etc/passwd", filepath.Join(src, "pw")))
		}, ErrLinkEscape, "pw"},
		{"escaping symlink", func(t *testing.T, src string) {
			must(t, os.Mkdir(filepath.Join(src, "d"), 0o755))
			must(t, os.Symlink("../../x", filepath.Join(src, "d/up")))
		}, ErrLinkEscape, "d/up"},
		{"dotdot after name", func(t *testing.T, src string) {
			must(t, os.Symlink("a/../b", filepath.Join(src, "l")))
		}, ErrLinkEscape, "l"},
		{"fifo", func(t *testing.T, src string) {
			must(t, syscall.Mkfifo(filepath.Join(src, "fifo"), 0o644))
		}, ErrSpecialFile, "fifo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := t.TempDir()
			tt.setup(t, src)
			_, err := Pack(io.Discard, src)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.path)) {
				t.Errorf("err %q does not name %q", err, tt.path)
			}
		})
	}
}

func TestPackNotADir(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	must(t, os.WriteFile(p, nil, 0o644))
	if _, err := Pack(io.Discard, p); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("err = %v, want not a directory", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestExtractHostile(t *testing.T) {
	big := tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: 5 << 30}
	tests := []struct {
		name   string
		zst    func(t *testing.T, sibling string) []byte
		maxRaw int64
		want   error
		entry  string // the name the error must mention
	}{
		{"dotdot", func(t *testing.T, s string) []byte {
			return archive(t, file("../sibling/pwned", "x", 0o644))
		}, 1 << 20, ErrUnsafePath, "../sibling/pwned"},
		{"dotdot inside", func(t *testing.T, s string) []byte {
			return archive(t, dir("a/", 0o755), file("a/../../sibling/pwned", "x", 0o644))
		}, 1 << 20, ErrUnsafePath, "a/../../sibling/pwned"},
		{"absolute", func(t *testing.T, s string) []byte {
			return archive(t, file(filepath.Join(s, "pwned"), "x", 0o644))
		}, 1 << 20, ErrUnsafePath, "pwned"},
		{"empty name", func(t *testing.T, s string) []byte {
			return zstdBytes(t, append(rawHeader("", '0', 0), make([]byte, 1024)...))
		}, 1 << 20, ErrUnsafePath, ""},
		{"dot as file", func(t *testing.T, s string) []byte {
			return archive(t, file(".", "", 0o644))
		}, 1 << 20, ErrUnsafePath, "."},
		{"symlink absolute", func(t *testing.T, s string) []byte {
			return archive(t, symlink("evil", s))
		}, 1 << 20, ErrLinkEscape, "evil"},
		{"symlink up", func(t *testing.T, s string) []byte {
			return archive(t, symlink("evil", "../sibling"))
		}, 1 << 20, ErrLinkEscape, "evil"},
		{"symlink up from subdir", func(t *testing.T, s string) []byte {
			return archive(t, dir("a/", 0o755), symlink("a/evil", "../../sibling"))
		}, 1 << 20, ErrLinkEscape, "a/evil"},
		{"symlink dotdot after name", func(t *testing.T, s string) []byte {
			// self -> "." is fine, but self/.. is dst's parent.
			return archive(t, symlink("self", "."), symlink("evil", "self/../sibling"))
		}, 1 << 20, ErrLinkEscape, "evil"},
		{"symlink empty target", func(t *testing.T, s string) []byte {
			return archive(t, symlink("evil", ""))
		}, 1 << 20, ErrLinkEscape, "evil"},
		{"write through symlink inside", func(t *testing.T, s string) []byte {
			return archive(t, dir("x/", 0o755), symlink("a", "x"), file("a/passwd", "root", 0o644))
		}, 1 << 20, ErrUnsafePath, "a/passwd"},
		{"write through symlink deep", func(t *testing.T, s string) []byte {
			return archive(t, symlink("a", "."), file("a/b/c", "x", 0o644))
		}, 1 << 20, ErrUnsafePath, "a/b/c"},
		{"dir through symlink", func(t *testing.T, s string) []byte {
			return archive(t, symlink("a", "."), dir("a/d/", 0o755))
		}, 1 << 20, ErrUnsafePath, "a/d/"},
		{"write under file", func(t *testing.T, s string) []byte {
			return archive(t, file("f", "x", 0o644), file("f/g", "y", 0o644))
		}, 1 << 20, ErrUnsafePath, "f/g"},
		{"hard link outside", func(t *testing.T, s string) []byte {
			return archive(t, other(tar.TypeLink, "h", "/etc/passwd"))
		}, 1 << 20, ErrHardLink, "h"},
		{"hard link inside", func(t *testing.T, s string) []byte {
			return archive(t, file("f", "x", 0o644), other(tar.TypeLink, "h", "f"))
		}, 1 << 20, ErrHardLink, "h"},
		{"char device", func(t *testing.T, s string) []byte {
			return archive(t, other(tar.TypeChar, "null", ""))
		}, 1 << 20, ErrSpecialFile, "null"},
		{"block device", func(t *testing.T, s string) []byte {
			return archive(t, other(tar.TypeBlock, "sda", ""))
		}, 1 << 20, ErrSpecialFile, "sda"},
		{"fifo", func(t *testing.T, s string) []byte {
			return archive(t, other(tar.TypeFifo, "fifo", ""))
		}, 1 << 20, ErrSpecialFile, "fifo"},
		{"unknown type", func(t *testing.T, s string) []byte {
			return zstdBytes(t, append(rawHeader("weird", 'Z', 0), make([]byte, 1024)...))
		}, 1 << 20, ErrSpecialFile, "weird"},
		{"gnu sparse", func(t *testing.T, s string) []byte {
			return zstdBytes(t, gnuSparse())
		}, 1 << 20, ErrSpecialFile, "sparse"},
		{"pax sparse", func(t *testing.T, s string) []byte {
			return zstdBytes(t, paxSparse())
		}, 1 << 20, ErrSpecialFile, "sparse"},
		{"setuid file", func(t *testing.T, s string) []byte {
			return archive(t, file("su", "x", 0o4755))
		}, 1 << 20, ErrSetuid, "su"},
		{"setgid dir", func(t *testing.T, s string) []byte {
			return archive(t, dir("sg/", 0o2755))
		}, 1 << 20, ErrSetuid, "sg/"},
		{"sticky dir", func(t *testing.T, s string) []byte {
			return archive(t, dir("tmp/", 0o1777))
		}, 1 << 20, ErrSetuid, "tmp/"},
		{"duplicate file", func(t *testing.T, s string) []byte {
			return archive(t, file("f", "1", 0o644), file("f", "2", 0o644))
		}, 1 << 20, ErrDuplicate, "f"},
		{"duplicate cleaned", func(t *testing.T, s string) []byte {
			return archive(t, file("d/f", "1", 0o644), file("d//./f", "2", 0o644))
		}, 1 << 20, ErrDuplicate, "d//./f"},
		{"file over dir", func(t *testing.T, s string) []byte {
			return archive(t, dir("d/", 0o755), file("d", "2", 0o644))
		}, 1 << 20, ErrDuplicate, "d"},
		{"symlink over implicit dir", func(t *testing.T, s string) []byte {
			return archive(t, file("d/f", "1", 0o644), symlink("d", "."))
		}, 1 << 20, ErrDuplicate, "d"},
		{"duplicate dir", func(t *testing.T, s string) []byte {
			return archive(t, dir("d/", 0o755), dir("d/", 0o700))
		}, 1 << 20, ErrDuplicate, "d/"},
		{"stream over cap", func(t *testing.T, s string) []byte {
			return archive(t, file("f", strings.Repeat("a", 4096), 0o644))
		}, 4096, ErrTooLarge, "f"},
		{"declared size over cap", func(t *testing.T, s string) []byte {
			return zstdBytes(t, tarBytes(t, entry{hdr: big, body: "tiny"}))
		}, 1 << 20, ErrTooLarge, "big"},
		{"second file over cap", func(t *testing.T, s string) []byte {
			return archive(t, file("a", strings.Repeat("a", 3000), 0o644), file("b", strings.Repeat("b", 3000), 0o644))
		}, 5000, ErrTooLarge, "b"},
		{"trailing data over cap", func(t *testing.T, s string) []byte {
			raw := tarBytes(t, file("a", "x", 0o644))
			return zstdBytes(t, append(raw, make([]byte, 64<<10)...))
		}, 32 << 10, ErrTooLarge, "a"},
		{"zstd bomb", func(t *testing.T, s string) []byte {
			// ~64 MiB of zeros in one file entry, a few KiB compressed.
			var buf bytes.Buffer
			enc, err := zstd.NewWriter(&buf, zstd.WithWindowSize(MaxWindow))
			must(t, err)
			tw := tar.NewWriter(enc)
			must(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bomb", Mode: 0o644, Size: 64 << 20}))
			_, err = tw.Write(make([]byte, 64<<20))
			must(t, err)
			must(t, tw.Close())
			must(t, enc.Close())
			if buf.Len() > 64<<10 {
				t.Fatalf("bomb is %d bytes compressed", buf.Len())
			}
			return buf.Bytes()
		}, 1 << 20, ErrTooLarge, "bomb"},
		{"rle bomb after small file", func(t *testing.T, s string) []byte {
			head := tarBytes(t, entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "z", Mode: 0o644, Size: 512 << 10}})
			return append(zstdBytes(t, head), rleBomb(1<<30, 0)...)
		}, 1 << 20, ErrTooLarge, "z"},
		{"single segment huge content size", func(t *testing.T, s string) []byte {
			// Single_Segment frames have no window descriptor: the window
			// is the declared content size, here 1 GiB.
			fr := []byte{0x28, 0xb5, 0x2f, 0xfd, 0xe0, 0, 0, 0, 0x40, 0, 0, 0, 0}
			h := uint32(128<<10)<<3 | 1<<1 | 1
			return append(fr, byte(h), byte(h>>8), byte(h>>16), 0)
		}, 1 << 40, ErrCorrupt, ""},
		{"not zstd", func(t *testing.T, s string) []byte {
			return []byte("this is not a zstd stream at all, just text")
		}, 1 << 20, ErrCorrupt, ""},
		{"zstd of not tar", func(t *testing.T, s string) []byte {
			return zstdBytes(t, bytes.Repeat([]byte("garbage!"), 200))
		}, 1 << 20, ErrCorrupt, ""},
		{"truncated zstd", func(t *testing.T, s string) []byte {
			z := archive(t, file("f", strings.Repeat("abc", 10000), 0o644))
			return z[:len(z)/2]
		}, 1 << 20, ErrCorrupt, ""},
		{"truncated tar", func(t *testing.T, s string) []byte {
			raw := tarBytes(t, file("f", strings.Repeat("abc", 1000), 0o644))
			return zstdBytes(t, raw[:1024])
		}, 1 << 20, ErrCorrupt, "f"},
		{"cut between entries", func(t *testing.T, s string) []byte {
			raw := tarBytes(t, file("a", "x", 0o644), file("b", "y", 0o644))
			return zstdBytes(t, raw[:1024]) // header and data of "a" only
		}, 1 << 20, ErrCorrupt, "a"},
		{"empty stream", func(t *testing.T, s string) []byte {
			return zstdBytes(t, nil)
		}, 1 << 20, ErrCorrupt, ""},
		{"one zero block", func(t *testing.T, s string) []byte {
			raw := tarBytes(t, file("a", "x", 0o644))
			return zstdBytes(t, raw[:len(raw)-512])
		}, 1 << 20, ErrCorrupt, "a"},
		{"window too large", func(t *testing.T, s string) []byte {
			var buf bytes.Buffer
			enc, err := zstd.NewWriter(&buf, zstd.WithWindowSize(64<<20), zstd.WithEncoderConcurrency(1))
			must(t, err)
			_, err = enc.Write(tarBytes(t, file("f", strings.Repeat("x", 1<<20), 0o644)))
			must(t, err)
			must(t, enc.Close())
			return buf.Bytes()
		}, 1 << 30, ErrCorrupt, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst, check := sandbox(t)
			sibling := filepath.Join(filepath.Dir(dst), "sibling")
			zst := tt.zst(t, sibling)
			_, err := Extract(context.Background(), bytes.NewReader(zst), dst, tt.maxRaw)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			t.Log(err)
			if tt.entry != "" && !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.entry)) &&
				!strings.Contains(err.Error(), tt.entry) {
				t.Errorf("err %q does not name entry %q", err, tt.entry)
			}
			check()
		})
	}
}

func TestExtractDeclaredSizeWritesNothing(t *testing.T) {
	dst, check := sandbox(t)
	big := entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: 5 << 30}, body: "tiny"}
	_, err := Extract(context.Background(), bytes.NewReader(zstdBytes(t, tarBytes(t, big))), dst, 1<<20)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	if names := readNames(t, dst); len(names) != 0 {
		t.Errorf("dst holds %v, want nothing written before the size check", names)
	}
	check()
}

func TestExtractTooManyEntries(t *testing.T) {
	entries := []entry{dir("d/", 0o755)}
	for i := range 4 {
		entries = append(entries, file(fmt.Sprintf("d/f%d", i), "x", 0o644))
	}
	zst := archive(t, entries...)
	for _, tt := range []struct {
		max  int
		want error
	}{{5, nil}, {4, ErrTooManyEntries}} {
		dst, check := sandbox(t)
		_, err := extract(context.Background(), bytes.NewReader(zst), dst, 1<<20, limits{maxEntries: tt.max})
		if !errors.Is(err, tt.want) {
			t.Errorf("max %d: err = %v, want %v", tt.max, err, tt.want)
		}
		if tt.want != nil && !strings.Contains(err.Error(), `"d/f3"`) {
			t.Errorf("err %q does not name the fifth entry", err)
		}
		check()
	}
}

func TestExtractTolerated(t *testing.T) {
	// GNU tar -C dir . style names, a PAX global header, an explicit dir
	// entry after its contents, and a dir without owner write that must
	// still be filled.
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	must(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "x"}}))
	for _, e := range []entry{dir("./", 0o755), file("./bin/x", "x", 0o755), dir("./bin/", 0o555), file("./bin/y", "y", 0o644)} {
		h := e.hdr
		must(t, tw.WriteHeader(&h))
		_, err := io.WriteString(tw, e.body)
		must(t, err)
	}
	must(t, tw.Close())
	dst, check := sandbox(t)
	st, err := Extract(context.Background(), bytes.NewReader(zstdBytes(t, raw.Bytes())), dst, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(dst, "bin"), 0o755) })
	check()
	if want := (Stats{Files: 2, Dirs: 1, Bytes: 2}); st != want {
		t.Errorf("stats = %+v, want %+v", st, want)
	}
	fi, err := os.Stat(filepath.Join(dst, "bin"))
	must(t, err)
	if fi.Mode().Perm() != 0o555 {
		t.Errorf("bin mode %v, want 0555", fi.Mode().Perm())
	}
	if b, err := os.ReadFile(filepath.Join(dst, "bin/y")); err != nil || string(b) != "y" {
		t.Errorf("bin/y = %q, %v", b, err)
	}
}

func TestExtractNotEmpty(t *testing.T) {
	dst, _ := sandbox(t)
	must(t, os.WriteFile(filepath.Join(dst, "old"), nil, 0o644))
	_, err := Extract(context.Background(), bytes.NewReader(archive(t, file("f", "x", 0o644))), dst, 1<<20)
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("err = %v, want not empty", err)
	}
}

// cancelReader cancels ctx once n bytes have been read through it.
type cancelReader struct {
	r      io.Reader
	n      int
	cancel context.CancelFunc
}

func (c *cancelReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n -= n
	if c.n <= 0 {
		c.cancel()
	}
	return n, err
}

func TestExtractCancel(t *testing.T) {
	var entries []entry
	for i := range 200 {
		entries = append(entries, file(fmt.Sprintf("f%03d", i), strings.Repeat(fmt.Sprint(i), 20000), 0o644))
	}
	zst := archive(t, entries...)

	t.Run("before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		dst, check := sandbox(t)
		_, err := Extract(ctx, bytes.NewReader(zst), dst, 1<<30)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if names := readNames(t, dst); len(names) != 0 {
			t.Errorf("dst holds %v", names)
		}
		check()
	})
	t.Run("during", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		dst, check := sandbox(t)
		r := &cancelReader{r: bytes.NewReader(zst), n: len(zst) / 4, cancel: cancel}
		st, err := Extract(ctx, r, dst, 1<<30)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if st.Files == 0 || st.Files >= 200 {
			t.Errorf("stopped after %d files, want some but not all", st.Files)
		}
		check()
	})
}

func TestNewReaderCap(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	zst := zstdBytes(t, data)
	tests := []struct {
		max  int64
		want error
	}{
		{int64(len(data)), nil},
		{int64(len(data)) + 1, nil},
		{int64(len(data)) - 1, ErrTooLarge},
		{0, ErrTooLarge},
	}
	for _, tt := range tests {
		r, err := NewReader(bytes.NewReader(zst), tt.max)
		must(t, err)
		got, err := io.ReadAll(r)
		r.Close()
		if !errors.Is(err, tt.want) {
			t.Errorf("max %d: err = %v, want %v", tt.max, err, tt.want)
		}
		if n := min(int64(len(data)), tt.max); !bytes.Equal(got, data[:n]) {
			t.Errorf("max %d: got %d bytes, want the first %d", tt.max, len(got), n)
		}
	}
	if _, err := NewReader(bytes.NewReader(zst), -1); err == nil {
		t.Error("negative cap accepted")
	}
}

// rleBomb is a hand-made zstd frame of RLE blocks: n bytes of b in about
// n/32768 bytes, with the largest window NewReader accepts.
func rleBomb(n int, b byte) []byte {
	const block = 128 << 10
	out := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, (23 - 10) << 3} // magic, FHD, window 8 MiB
	for n > 0 {
		size := min(n, block)
		n -= size
		h := uint32(size)<<3 | 1<<1 // RLE block
		if n == 0 {
			h |= 1 // last block
		}
		out = append(out, byte(h), byte(h>>8), byte(h>>16), b)
	}
	return out
}

func TestNewReaderBombBoundedMemory(t *testing.T) {
	bomb := rleBomb(4<<30, 'A')
	if len(bomb) > 200<<10 {
		t.Fatalf("bomb is %d bytes", len(bomb))
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r, err := NewReader(bytes.NewReader(bomb), 16<<20)
	must(t, err)
	n, err := io.Copy(io.Discard, r)
	r.Close()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	if n != 16<<20 {
		t.Errorf("read %d bytes before the cap, want %d", n, 16<<20)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	if alloc > 64<<20 {
		t.Errorf("decoding to the cap allocated %d MiB", alloc>>20)
	}
	t.Logf("allocated %d KiB", alloc>>10)
}

func TestCompressRoundTrip(t *testing.T) {
	data := bytes.Repeat([]byte("image block "), 100000)
	var z bytes.Buffer
	n, err := Compress(&z, bytes.NewReader(data))
	must(t, err)
	if n != int64(len(data)) {
		t.Errorf("rawSize = %d, want %d", n, len(data))
	}
	if z.Len() >= len(data)/10 {
		t.Errorf("compressed %d to %d bytes", len(data), z.Len())
	}
	r, err := NewReader(&z, n)
	must(t, err)
	defer r.Close()
	got, err := io.ReadAll(r)
	must(t, err)
	if !bytes.Equal(got, data) {
		t.Error("round trip differs")
	}
}

func TestCheckLinkTarget(t *testing.T) {
	tests := []struct {
		name, target string
		ok           bool
	}{
		{"l", "x", true},
		{"l", ".", true},
		{"l", "./a/b", true},
		{"a/l", "../x", true},
		{"a/b/l", "../../x/y", true},
		{"a/b/l", "../.././x", true},
		{"l", "..", false},
		{"a/l", "../..", false},
		{"l", "/etc", false},
		{"l", "", false},
		{"l", "a/../b", false},
		{"a/l", "../b/../..", false},
		{"l", "x\x00y", false},
	}
	for _, tt := range tests {
		err := checkLinkTarget(tt.name, tt.target)
		if (err == nil) != tt.ok {
			t.Errorf("checkLinkTarget(%q, %q) = %v, want ok=%v", tt.name, tt.target, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrLinkEscape) {
			t.Errorf("checkLinkTarget(%q, %q) = %v, want ErrLinkEscape", tt.name, tt.target, err)
		}
	}
}

func FuzzExtract(f *testing.F) {
	f.Add(archive(f, dir("bin/", 0o755), file("bin/x", "#!/bin/sh", 0o755), symlink("cur", "bin")))
	f.Add(archive(f, symlink("a", "."), file("a/b", "x", 0o644)))
	f.Add(archive(f, file("../evil", "x", 0o644)))
	f.Add(archive(f, symlink("evil", "../sibling")))
	f.Add(archive(f, other(tar.TypeLink, "h", "/etc/passwd")))
	f.Add(archive(f, file("su", "x", 0o4755)))
	f.Add(zstdBytes(f, paxSparse()))
	f.Add(zstdBytes(f, gnuSparse()))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0})
	f.Add(rleBomb(4<<20, 0))
	f.Fuzz(func(t *testing.T, zst []byte) {
		dst, check := sandbox(t)
		_, err := extract(context.Background(), bytes.NewReader(zst), dst, 1<<20, limits{maxEntries: 256, noSync: true})
		if err != nil && !strings.HasPrefix(err.Error(), "archive: ") {
			t.Errorf("error without archive prefix: %v", err)
		}
		check()
		// Leave dst removable even if an entry made a directory read-only.
		filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				os.Chmod(p, 0o755)
			}
			return nil
		})
	})
}

func BenchmarkExtract(b *testing.B) {
	var entries []entry
	for i := range 100 {
		entries = append(entries, file(fmt.Sprintf("d%d/f%d", i%10, i), strings.Repeat(fmt.Sprint(i), 10000), 0o644))
	}
	zst := archive(b, entries...)
	b.SetBytes(int64(len(zst)))
	for b.Loop() {
		dst := b.TempDir()
		if _, err := Extract(context.Background(), bytes.NewReader(zst), dst, 1<<30); err != nil {
			b.Fatal(err)
		}
	}
}
