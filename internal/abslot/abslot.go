// Package abslot writes full-system images into the A/B slots and reads back
// which slot the running system booted from.
//
// A slot is a block device (a partition, typically
// /dev/disk/by-partlabel/qx-a) or, in tests and the demo, a regular file. The
// image arrives as a decompressed stream of exactly the rawSize bytes the
// signed manifest declares; Write streams it with bounded memory, syncs it,
// and reads the slot back against rawSha256 before anyone is allowed to boot
// it. The boot rules themselves live in deploy/grub and internal/bootsim.
package abslot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

var (
	// ErrVerify: the image, as streamed or as read back from the slot, does
	// not match rawSha256.
	ErrVerify = errors.New("slot verification failed")
	// ErrBadSlot: a slot name other than "a" or "b".
	ErrBadSlot = errors.New("bad slot name")
	// ErrNoSlot: the kernel command line has no qx.slot= argument.
	ErrNoSlot = errors.New("no qx.slot on the kernel command line")
	// ErrSize: the image stream is shorter or longer than rawSize, or the
	// slot is too small to hold it.
	ErrSize = errors.New("image size mismatch")
)

// CmdlineArg is the kernel command line argument that names the booted slot.
const CmdlineArg = "qx.slot"

// bufSize is the unit of reading, writing and hashing: large enough that
// syscalls and channel hand-offs cost nothing next to the data, aligned so
// every write but the last starts and ends on a device block boundary.
const bufSize = 4 << 20

// progressEvery is the least time between two progress calls.
const progressEvery = 100 * time.Millisecond

// Other returns the slot that is not slot.
func Other(slot string) (string, error) {
	switch slot {
	case "a":
		return "b", nil
	case "b":
		return "a", nil
	}
	return "", fmt.Errorf("%w: %q (want a or b)", ErrBadSlot, slot)
}

// BootedSlot reads a kernel command line (normally /proc/cmdline) and returns
// the value of its qx.slot= argument. It fails with ErrNoSlot when there is
// none, and ErrBadSlot when the value is not a or b or when two arguments
// disagree: committing the wrong slot is worse than not knowing.
func BootedSlot(cmdlinePath string) (string, error) {
	f, err := os.Open(cmdlinePath)
	if err != nil {
		return "", fmt.Errorf("read kernel command line: %w", err)
	}
	defer f.Close()
	// Kernel command lines are a few KiB at most; do not slurp a wrong file.
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return "", fmt.Errorf("read kernel command line %s: %w", cmdlinePath, err)
	}
	slot := ""
	for _, arg := range strings.Fields(string(b)) {
		v, ok := strings.CutPrefix(arg, CmdlineArg+"=")
		if !ok {
			continue
		}
		if _, err := Other(v); err != nil {
			return "", fmt.Errorf("kernel command line %s: %w", cmdlinePath, err)
		}
		if slot != "" && slot != v {
			return "", fmt.Errorf("kernel command line %s: %w: both %s=%s and %s=%s", cmdlinePath, ErrBadSlot, CmdlineArg, slot, CmdlineArg, v)
		}
		slot = v
	}
	if slot == "" {
		return "", fmt.Errorf("kernel command line %s: %w", cmdlinePath, ErrNoSlot)
	}
	return slot, nil
}

func parseSum(s string) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("bad rawSha256 %q: want 64 hex digits", s)
	}
	return b, nil
}

func checkArgs(rawSize int64, rawSHA256 string) ([]byte, error) {
	if rawSize <= 0 {
		return nil, fmt.Errorf("bad rawSize %d", rawSize)
	}
	return parseSum(rawSHA256)
}

// openSlot opens dst for writing rawSize bytes. A regular file is truncated
// to rawSize (dropping any longer old image). A block device is never
// truncated or created; it is opened with O_EXCL, which Linux turns into an
// exclusive open that fails with EBUSY while the device is mounted or held,
// so the running system's own slot cannot be overwritten by mistake. A
// missing dst is an error rather than a new file: a typo in a device path
// must not fill /dev with a multi-GiB regular file.
func openSlot(dst string, rawSize int64) (*os.File, error) {
	fi, err := os.Stat(dst)
	if err != nil {
		return nil, err
	}
	switch m := fi.Mode(); {
	case m.IsRegular():
		f, err := os.OpenFile(dst, os.O_WRONLY, 0)
		if err != nil {
			return nil, err
		}
		if err := f.Truncate(rawSize); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	case m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0:
		f, err := os.OpenFile(dst, os.O_WRONLY|os.O_EXCL, 0)
		if err != nil {
			return nil, err
		}
		size, err := f.Seek(0, io.SeekEnd)
		if err == nil {
			_, err = f.Seek(0, io.SeekStart)
		}
		if err != nil {
			f.Close()
			return nil, err
		}
		if size < rawSize {
			f.Close()
			return nil, fmt.Errorf("%w: device holds %d bytes, the image needs %d", ErrSize, size, rawSize)
		}
		return f, nil
	default:
		return nil, fmt.Errorf("not a regular file or block device (%v)", m.Type())
	}
}

// chunk is one filled buffer on its way from the reader to the writer.
type chunk struct {
	buf []byte
	n   int
	err error // io.EOF after the last chunk of a well-sized stream
}

// fill reads into buf until it is full, r fails, or ctx is done. It checks
// ctx between reads, so a slow network stream is cancelled promptly too.
func fill(ctx context.Context, r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// readImage reads exactly rawSize bytes of r into buffers taken from free and
// hands them to full, ending with a chunk whose err is io.EOF (success) or the
// failure. It stops when stop is closed.
//
// It runs in its own goroutine so that decompressing overlaps writing and
// hashing (which the writer does): with two buffers one is filled while the
// other is written. Measured on 2 cores with a 64 MiB image (BenchmarkWrite
// without the read-back): one goroutine ~730 MB/s, ~850 with the
// sync_file_range below; two goroutines hashing in the reader ~900; hashing
// in the writer ~1400, as decompression is the heavier stage.
func readImage(ctx context.Context, r io.Reader, rawSize int64, free <-chan []byte, full chan<- chunk, stop <-chan struct{}) {
	defer close(full)
	send := func(c chunk) bool {
		select {
		case full <- c:
			return true
		case <-stop:
			return false
		}
	}
	var total int64
	for {
		var buf []byte
		select {
		case buf = <-free:
		case <-stop:
			return
		}
		want := int64(len(buf))
		if rem := rawSize - total; rem < want {
			want = rem
		}
		n, err := fill(ctx, r, buf[:want])
		total += int64(n)
		switch {
		case err == io.EOF && total == rawSize:
			// The last bytes came with EOF in the same Read: a clean end.
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			err = fmt.Errorf("%w: image stream ended after %d of %d bytes", ErrSize, total, rawSize)
		case err != nil:
			err = fmt.Errorf("read image: %w", err)
		case total == rawSize:
			err = checkEnd(r, rawSize)
		}
		if !send(chunk{buf: buf, n: n, err: err}) || err != nil {
			return
		}
	}
}

// checkEnd makes sure r has nothing past rawSize: a longer stream is not the
// image the manifest describes, even if its first rawSize bytes are.
func checkEnd(r io.Reader, rawSize int64) error {
	var probe [1]byte
	n, err := io.ReadFull(r, probe[:])
	switch {
	case n > 0:
		return fmt.Errorf("%w: image stream longer than %d bytes", ErrSize, rawSize)
	case err == io.EOF:
		return io.EOF
	default:
		// archive.NewReader capped at rawSize reports the excess this way.
		return fmt.Errorf("%w: read past %d bytes: %w", ErrSize, rawSize, err)
	}
}

// Write streams r, the decompressed image, into the slot dst: exactly rawSize
// bytes (a shorter or longer stream fails with ErrSize), through two reused
// 4 MiB buffers whatever the image size, hashing as it goes. It syncs dst,
// then drops the slot's cached pages and reads the first rawSize bytes back
// from the device (a partition may be larger than the image), failing with
// ErrVerify when the stream or the read-back does not match rawSHA256.
//
// dst must exist. A regular file is truncated to rawSize first; a block device
// is never truncated and must not be in use (see openSlot). progress, when not
// nil, is called with the bytes written so far at most every 100ms from the
// calling goroutine, and once with (rawSize, rawSize) when all is written and
// synced. Cancelling ctx stops the copy within one buffer.
func Write(ctx context.Context, dst string, r io.Reader, rawSize int64, rawSHA256 string, progress func(done, total int64)) error {
	want, err := checkArgs(rawSize, rawSHA256)
	if err != nil {
		return fmt.Errorf("write slot %s: %w", dst, err)
	}
	f, err := openSlot(dst, rawSize)
	if err != nil {
		return fmt.Errorf("write slot %s: %w", dst, err)
	}
	buf, err := write(ctx, f, r, rawSize, want, progress)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write slot %s: %w", dst, err)
	}
	if progress != nil {
		progress(rawSize, rawSize)
	}
	if err := verify(ctx, dst, rawSize, want, buf); err != nil {
		return fmt.Errorf("write slot %s: %w", dst, err)
	}
	return nil
}

// write copies the image into f and syncs it; it returns one of its buffers
// for the read-back to reuse.
func write(ctx context.Context, f *os.File, r io.Reader, rawSize int64, want []byte, progress func(done, total int64)) ([]byte, error) {
	free := make(chan []byte, 2)
	free <- make([]byte, bufSize)
	free <- make([]byte, bufSize)
	full := make(chan chunk, 2)
	stop := make(chan struct{})
	h := sha256.New()
	var wg sync.WaitGroup
	wg.Go(func() { readImage(ctx, r, rawSize, free, full, stop) })
	// The reader may be inside r.Read; wait for it so that the caller can
	// close r safely once write returns.
	defer wg.Wait()
	defer close(stop)

	var (
		done     int64
		last     = time.Now()
		fd       = int(f.Fd())
		finished bool
		buf      []byte
	)
	for c := range full {
		buf = c.buf
		if c.n > 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if _, err := f.Write(c.buf[:c.n]); err != nil {
				return nil, err
			}
			// Start writeback of what was just written without waiting for
			// it: dirty pages stay bounded and the final fsync is short.
			// Advisory only (tmpfs and some filesystems ignore it); the
			// fsync below is what guarantees durability.
			_ = unix.SyncFileRange(fd, done, int64(c.n), unix.SYNC_FILE_RANGE_WRITE)
			h.Write(c.buf[:c.n])
			done += int64(c.n)
		}
		if c.err == io.EOF {
			finished = true
			break
		}
		if c.err != nil {
			return nil, c.err
		}
		if progress != nil && time.Since(last) >= progressEvery {
			progress(done, rawSize)
			last = time.Now()
		}
		free <- c.buf
	}
	if !finished {
		// The reader stopped without a verdict: only ctx can do that.
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: image stream ended after %d of %d bytes", ErrSize, done, rawSize)
	}
	if got := h.Sum(nil); string(got) != string(want) {
		return nil, fmt.Errorf("%w: image stream sha256 %x, want %x", ErrVerify, got, want)
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	return buf, nil
}

// Verify reads the first rawSize bytes of dst back from the device and checks
// them against rawSHA256 (ErrVerify on mismatch, or when dst is shorter). The
// agent uses it after a restart, before it trusts a slot written earlier.
func Verify(ctx context.Context, dst string, rawSize int64, rawSHA256 string) error {
	want, err := checkArgs(rawSize, rawSHA256)
	if err != nil {
		return fmt.Errorf("verify slot %s: %w", dst, err)
	}
	if err := verify(ctx, dst, rawSize, want, make([]byte, bufSize)); err != nil {
		return fmt.Errorf("verify slot %s: %w", dst, err)
	}
	return nil
}

func verify(ctx context.Context, dst string, rawSize int64, want, buf []byte) error {
	f, err := os.Open(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	// Drop the (clean, synced) cached pages so that the bytes hashed come
	// from the device, not from the page cache that was just written.
	_ = unix.Fadvise(int(f.Fd()), 0, rawSize, unix.FADV_DONTNEED)
	h := sha256.New()
	var done int64
	for done < rawSize {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := int64(len(buf))
		if rem := rawSize - done; rem < n {
			n = rem
		}
		m, err := io.ReadFull(f, buf[:n])
		h.Write(buf[:m])
		done += int64(m)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return fmt.Errorf("%w: slot holds %d bytes, the image has %d", ErrVerify, done, rawSize)
		}
		if err != nil {
			return fmt.Errorf("read back: %w", err)
		}
	}
	if got := h.Sum(nil); string(got) != string(want) {
		return fmt.Errorf("%w: slot sha256 %x, want %x", ErrVerify, got, want)
	}
	return nil
}
