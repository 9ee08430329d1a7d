package abslot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/quantix-os/update-agent/internal/archive"
)

// imageReader yields n bytes of semi-random, compressible data (like a disk
// image: runs of zeros between stretches of low-entropy bytes) without ever
// holding them all, so tests can make big images cheaply.
type imageReader struct {
	rng  *rand.Rand
	left int64
}

func newImage(seed uint64, n int64) *imageReader {
	return &imageReader{rng: rand.New(rand.NewPCG(seed, 1)), left: n}
}

func (g *imageReader) Read(p []byte) (int, error) {
	if g.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	for i := 0; i < len(p); {
		run := min(len(p)-i, 512+g.rng.IntN(4096))
		if g.rng.IntN(4) == 0 {
			clear(p[i : i+run])
		} else {
			var x uint64
			for j := i; j < i+run; j++ {
				if (j-i)%16 == 0 {
					x = g.rng.Uint64()
				}
				p[j] = 'a' + byte(x&15)
				x >>= 4
			}
		}
		i += run
	}
	g.left -= int64(len(p))
	return len(p), nil
}

type testImage struct {
	raw  []byte // nil for big images
	zst  []byte
	size int64
	sum  string
}

// makeImage compresses n bytes of imageReader output, keeping the raw bytes
// only when keepRaw.
func makeImage(t testing.TB, seed uint64, n int64, keepRaw bool) testImage {
	t.Helper()
	img, err := buildImage(seed, n, keepRaw)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func buildImage(seed uint64, n int64, keepRaw bool) (testImage, error) {
	var zbuf, raw bytes.Buffer
	enc, err := zstd.NewWriter(&zbuf, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithWindowSize(archive.MaxWindow))
	if err != nil {
		return testImage{}, err
	}
	h := sha256.New()
	w := io.MultiWriter(enc, h)
	if keepRaw {
		w = io.MultiWriter(w, &raw)
	}
	if _, err := io.Copy(w, newImage(seed, n)); err != nil {
		return testImage{}, err
	}
	if err := enc.Close(); err != nil {
		return testImage{}, err
	}
	img := testImage{zst: zbuf.Bytes(), size: n, sum: hex.EncodeToString(h.Sum(nil))}
	if keepRaw {
		img.raw = raw.Bytes()
	}
	return img, nil
}

// big is the 64 MiB image of the memory test and the benchmark, built once.
var big = sync.OnceValues(func() (testImage, error) { return buildImage(64, 64<<20, false) })

func zreader(t testing.TB, img testImage, capAt int64) io.ReadCloser {
	t.Helper()
	r, err := archive.NewReader(bytes.NewReader(img.zst), capAt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// slotFile makes an existing file slot holding old content.
func slotFile(t testing.TB, old []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "slot-b.img")
	if err := os.WriteFile(p, old, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOther(t *testing.T) {
	tests := []struct{ in, want string }{{"a", "b"}, {"b", "a"}, {"", ""}, {"c", ""}, {"A", ""}, {"a ", ""}}
	for _, tt := range tests {
		got, err := Other(tt.in)
		if tt.want == "" {
			if !errors.Is(err, ErrBadSlot) {
				t.Errorf("Other(%q): err = %v, want ErrBadSlot", tt.in, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Other(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestBootedSlot(t *testing.T) {
	tests := []struct {
		name, cmdline, want string
		err                 error
	}{
		{"a", "BOOT_IMAGE=/boot/vmlinuz-lts root=PARTLABEL=qx-a qx.slot=a quiet\n", "a", nil},
		{"b first", "qx.slot=b\troot=PARTLABEL=qx-b", "b", nil},
		{"repeated, agreeing", "qx.slot=a quiet qx.slot=a", "a", nil},
		{"absent", "root=/dev/sda2 quiet\n", "", ErrNoSlot},
		{"empty file", "", "", ErrNoSlot},
		{"prefix only", "xqx.slot=a qx.slotx=b", "", ErrNoSlot},
		{"bad value", "qx.slot=c", "", ErrBadSlot},
		{"empty value", "qx.slot= quiet", "", ErrBadSlot},
		{"disagreeing", "qx.slot=a qx.slot=b", "", ErrBadSlot},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "cmdline")
			if err := os.WriteFile(p, []byte(tt.cmdline), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := BootedSlot(p)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("BootedSlot = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if _, err := BootedSlot(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: err = %v, want fs.ErrNotExist", err)
	}
}

func TestWriteFromZstd(t *testing.T) {
	// Not a multiple of the buffer: the last write is short.
	img := makeImage(t, 1, 5<<20+123, true)
	// The old image was longer, and is not a prefix of the new one.
	dst := slotFile(t, bytes.Repeat([]byte{0xff}, 9<<20))
	var calls [][2]int64
	progress := func(done, total int64) { calls = append(calls, [2]int64{done, total}) }
	if err := Write(t.Context(), dst, zreader(t, img, img.size), img.size, img.sum, progress); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, img.raw) {
		t.Fatalf("slot holds %d bytes, not the image (%d bytes)", len(got), len(img.raw))
	}
	if len(calls) == 0 || calls[len(calls)-1] != [2]int64{img.size, img.size} {
		t.Fatalf("progress calls %v: want the last to be (%d, %d)", calls, img.size, img.size)
	}
	for i, c := range calls {
		if c[1] != img.size || c[0] > c[1] || (i > 0 && c[0] < calls[i-1][0]) {
			t.Fatalf("bad progress sequence %v", calls)
		}
	}
	if err := Verify(t.Context(), dst, img.size, img.sum); err != nil {
		t.Fatalf("Verify after Write: %v", err)
	}
}

func TestWriteReaderShapes(t *testing.T) {
	img := makeImage(t, 6, 256<<10+5, true)
	tests := []struct {
		name string
		r    func(io.Reader) io.Reader
	}{
		{"one byte per read", iotest.OneByteReader},
		{"half reads", iotest.HalfReader},
		{"data with EOF", iotest.DataErrReader},
		{"timeout then data", iotest.TimeoutReader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := slotFile(t, nil)
			err := Write(t.Context(), dst, tt.r(bytes.NewReader(img.raw)), img.size, img.sum, nil)
			if tt.name == "timeout then data" {
				// A read error is an error, never a short or partial success.
				if !errors.Is(err, iotest.ErrTimeout) {
					t.Fatalf("err = %v, want iotest.ErrTimeout", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(dst); !bytes.Equal(got, img.raw) {
				t.Fatal("slot does not hold the image")
			}
		})
	}
}

func TestWriteErrors(t *testing.T) {
	img := makeImage(t, 2, 1<<20+7, true)
	otherSum := strings.Repeat("ab", 32)
	tests := []struct {
		name    string
		r       func(t *testing.T) io.Reader
		rawSize int64
		sum     string
		want    []error
		msg     string
	}{
		{"wrong hash", func(t *testing.T) io.Reader { return zreader(t, img, img.size) },
			img.size, otherSum, []error{ErrVerify}, "image stream sha256"},
		{"short stream", func(t *testing.T) io.Reader { return bytes.NewReader(img.raw) },
			img.size + 1, img.sum, []error{ErrSize}, "ended after 1048583 of 1048584 bytes"},
		{"short zstd stream", func(t *testing.T) io.Reader { return zreader(t, img, img.size+10) },
			img.size + 10, img.sum, []error{ErrSize}, "ended after"},
		{"long stream", func(t *testing.T) io.Reader { return bytes.NewReader(img.raw) },
			img.size - 1, img.sum, []error{ErrSize}, "longer than"},
		{"long zstd stream, capped", func(t *testing.T) io.Reader { return zreader(t, img, img.size-1) },
			img.size - 1, img.sum, []error{ErrSize, archive.ErrTooLarge}, "read past"},
		{"corrupt zstd", func(t *testing.T) io.Reader {
			z := bytes.Clone(img.zst)
			z[len(z)/2] ^= 0xff
			r, err := archive.NewReader(bytes.NewReader(z), img.size)
			if err != nil {
				t.Fatal(err)
			}
			return r
		}, img.size, img.sum, []error{archive.ErrCorrupt}, "read image"},
		{"bad sum", func(t *testing.T) io.Reader { return bytes.NewReader(img.raw) },
			img.size, "xyz", nil, "bad rawSha256"},
		{"zero size", func(t *testing.T) io.Reader { return bytes.NewReader(nil) },
			0, img.sum, nil, "bad rawSize 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := slotFile(t, nil)
			err := Write(t.Context(), dst, tt.r(t), tt.rawSize, tt.sum, nil)
			if err == nil {
				t.Fatal("Write succeeded")
			}
			for _, w := range tt.want {
				if !errors.Is(err, w) {
					t.Errorf("err = %v, want %v", err, w)
				}
			}
			if !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), dst) {
				t.Errorf("err = %v, want it to name %s and say %q", err, dst, tt.msg)
			}
		})
	}
}

func TestWriteRefusesDestination(t *testing.T) {
	img := makeImage(t, 3, 4096, true)
	dir := t.TempDir()
	tests := []struct {
		name, dst string
		want      error
		msg       string
	}{
		{"missing", filepath.Join(dir, "nope"), fs.ErrNotExist, ""},
		{"directory", dir, nil, "not a regular file or block device"},
		{"char device", os.DevNull, nil, "not a regular file or block device"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Write(t.Context(), tt.dst, bytes.NewReader(img.raw), img.size, img.sum, nil)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v, want %v / %q", err, tt.want, tt.msg)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("Write created a missing destination")
	}
}

// cancelAfter cancels its context once n bytes have been read, then counts
// the bytes still read.
type cancelAfter struct {
	r      io.Reader
	n      int64
	cancel context.CancelFunc
	after  int64
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	if c.n <= 0 {
		c.after += int64(len(p))
	}
	n, err := c.r.Read(p)
	c.n -= int64(n)
	if c.n <= 0 {
		c.cancel()
	}
	return n, err
}

func TestWriteCancel(t *testing.T) {
	const size = 1 << 30 // never reached
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r := &cancelAfter{r: newImage(4, size), n: 6 << 20, cancel: cancel}
	dst := slotFile(t, nil)
	start := time.Now()
	err := Write(ctx, dst, r, size, strings.Repeat("00", 32), nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("cancel took %v", d)
	}
	if r.after > 0 {
		t.Fatalf("%d bytes were read after the cancel", r.after)
	}
}

func TestVerify(t *testing.T) {
	img := makeImage(t, 5, 3<<20, true)
	dst := slotFile(t, img.raw)
	if err := Verify(t.Context(), dst, img.size, img.sum); err != nil {
		t.Fatal(err)
	}
	// A partition is usually larger than the image: only rawSize bytes count.
	if err := os.WriteFile(dst, append(bytes.Clone(img.raw), "trailing junk"...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Verify(t.Context(), dst, img.size, img.sum); err != nil {
		t.Fatalf("with trailing bytes: %v", err)
	}
	flipped := bytes.Clone(img.raw)
	flipped[len(flipped)-1] ^= 1
	tests := []struct {
		name, msg string
		content   []byte
	}{
		{"one bit flipped", "slot sha256", flipped},
		{"truncated", "slot holds 3145727 bytes", img.raw[:len(img.raw)-1]},
		{"empty", "slot holds 0 bytes", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := slotFile(t, tt.content)
			err := Verify(t.Context(), p, img.size, img.sum)
			if !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v, want ErrVerify saying %q", err, tt.msg)
			}
		})
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := Verify(ctx, dst, img.size, img.sum); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: err = %v", err)
	}
	if err := Verify(t.Context(), filepath.Join(t.TempDir(), "nope"), img.size, img.sum); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing: err = %v", err)
	}
}

func TestWriteMemoryBounded(t *testing.T) {
	img, err := big()
	if err != nil {
		t.Fatal(err)
	}
	dst := slotFile(t, nil)
	r := zreader(t, img, img.size)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if err := Write(t.Context(), dst, r, img.size, img.sum, nil); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d KiB writing a %d MiB image", alloc>>10, img.size>>20)
	// Two 4 MiB buffers, the zstd decoder's window and block buffers: far
	// below the image, and independent of its size.
	if alloc > 24<<20 {
		t.Fatalf("allocated %d MiB for a %d MiB image", alloc>>20, img.size>>20)
	}
}

func BenchmarkWrite(b *testing.B) {
	img, err := big()
	if err != nil {
		b.Fatal(err)
	}
	dst := slotFile(b, nil)
	b.SetBytes(img.size)
	b.ReportAllocs()
	for b.Loop() {
		r, err := archive.NewReader(bytes.NewReader(img.zst), img.size)
		if err != nil {
			b.Fatal(err)
		}
		if err := Write(b.Context(), dst, r, img.size, img.sum, nil); err != nil {
			b.Fatal(err)
		}
		r.Close()
	}
}
