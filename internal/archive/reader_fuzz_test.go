package archive

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzNewReader feeds arbitrary bytes to the bounded zstd reader that
// decompresses disk images: it must never deliver more than the cap, and
// must fail only with ErrTooLarge or ErrCorrupt.
func FuzzNewReader(f *testing.F) {
	f.Add(zstdBytes(f, []byte("a disk image, or the start of one")), int64(64))
	f.Add(zstdBytes(f, bytes.Repeat([]byte{0}, 1<<16)), int64(1000))
	f.Add(rleBomb(1<<20, 'A'), int64(4096))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xa8, 0x51, 0x00, 0x00, 'x', 'y'}, int64(10)) // 2 GiB window
	f.Add([]byte("not zstd"), int64(10))
	f.Add([]byte{}, int64(0))
	f.Fuzz(func(t *testing.T, data []byte, maxRaw int64) {
		maxRaw = max(0, maxRaw%(1<<20)) // bounded, so a bomb ends quickly
		r, err := NewReader(bytes.NewReader(data), maxRaw)
		if err != nil {
			t.Fatalf("NewReader: %v", err)
		}
		defer r.Close()
		n, err := io.Copy(io.Discard, r)
		if n > maxRaw {
			t.Fatalf("delivered %d bytes, cap %d", n, maxRaw)
		}
		if err != nil && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error %v wraps neither ErrTooLarge nor ErrCorrupt", err)
		}
	})
}
