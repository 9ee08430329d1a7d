package archive

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

func TestReadAhead(t *testing.T) {
	random := func(n int) []byte {
		b := make([]byte, n)
		r := rand.New(rand.NewPCG(1, uint64(n)))
		for i := range b {
			b[i] = byte(r.Uint32() | 1) // no zero bytes
		}
		return b
	}
	boom := errors.New("boom")
	tests := []struct {
		name      string
		data      []byte
		err       error // the source fails with it after data
		wantZeros int64
	}{
		{"empty", nil, nil, 0},
		{"one byte", []byte{7}, nil, 0},
		{"just under a buffer", random(aheadBufSize - 1), nil, 0},
		{"one buffer", random(aheadBufSize), nil, 0},
		{"more than all buffers", random(aheadBufs*aheadBufSize + 7), nil, 0},
		{"ends in an end-of-archive marker", append(random(3*aheadBufSize+100), make([]byte, 1024)...), nil, 1024},
		{"all zeros", make([]byte, 2*aheadBufSize), nil, 2 * aheadBufSize},
		{"source fails", random(aheadBufSize + 5), boom, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var src io.Reader = bytes.NewReader(tt.data)
			if tt.err != nil {
				src = io.MultiReader(src, iotest.ErrReader(tt.err))
			}
			a := newReadAhead(iotest.HalfReader(src))
			defer a.Close()
			// Odd-sized reads, as tar's 512-byte blocks and file tails are.
			got, err := io.ReadAll(iotest.OneByteReader(io.LimitReader(a, 100)))
			if err != nil {
				t.Fatal(err)
			}
			rest, err := io.ReadAll(a)
			got = append(got, rest...)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("error %v, want %v", err, tt.err)
				}
			} else if err != nil {
				t.Fatalf("error %v", err)
			}
			if !bytes.Equal(got, tt.data) {
				t.Fatalf("read %d bytes, not the %d written", len(got), len(tt.data))
			}
			if tt.err == nil && a.zeros != tt.wantZeros {
				t.Errorf("zeros = %d, want %d", a.zeros, tt.wantZeros)
			}
		})
	}
}

// Close returns while the goroutine waits for its reader to take a buffer.
func TestReadAheadCloseUnread(t *testing.T) {
	a := newReadAhead(bytes.NewReader(make([]byte, 10*aheadBufSize)))
	var p [10]byte
	if _, err := io.ReadFull(a, p[:]); err != nil {
		t.Fatal(err)
	}
	a.Close() // must not hang
}
