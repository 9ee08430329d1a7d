package archive

import "io"

// Read-ahead sizing: aheadBufs buffers of aheadBufSize bytes, 1 MiB in all.
const (
	aheadBufSize = 256 << 10
	aheadBufs    = 4
)

// readAhead reads r in a goroutine of its own, up to aheadBufs buffers ahead
// of its reader. Extract reads the decompressed tar through it, so that
// decompressing overlaps creating and writing the files, which the kernel
// spends its time on, as in `zstd -dc | tar -x`: two cores instead of one.
//
// It also counts the zero bytes that end what its reader has read (zeros),
// which tells a tar end-of-archive marker from a stream cut off between
// entries. Close stops the goroutine and waits for it; call it before closing r.
type readAhead struct {
	full  chan aheadChunk // filled buffers, in stream order
	free  chan []byte
	stop  chan struct{}
	done  chan struct{}
	cur   aheadChunk
	off   int   // read position in cur
	zeros int64 // trailing zero bytes of everything Read returned
}

// aheadChunk is one buffer of the stream, and the error that ended it.
type aheadChunk struct {
	buf []byte
	n   int
	err error
}

func newReadAhead(r io.Reader) *readAhead {
	a := &readAhead{
		full: make(chan aheadChunk, aheadBufs),
		free: make(chan []byte, aheadBufs),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	for range aheadBufs {
		a.free <- make([]byte, aheadBufSize)
	}
	go a.fill(r)
	return a
}

// fill reads r into free buffers until r fails (io.EOF included) or stop.
func (a *readAhead) fill(r io.Reader) {
	defer close(a.done)
	for {
		var buf []byte
		select {
		case buf = <-a.free:
		case <-a.stop:
			return
		}
		n, err := io.ReadFull(r, buf)
		if err == io.ErrUnexpectedEOF {
			err = io.EOF // a short last buffer
		}
		select {
		case a.full <- aheadChunk{buf: buf, n: n, err: err}:
		case <-a.stop:
			return
		}
		if err != nil {
			return
		}
	}
}

// Read returns the stream's bytes in order, then the error that ended it.
func (a *readAhead) Read(p []byte) (int, error) {
	for a.off == a.cur.n {
		if a.cur.err != nil {
			return 0, a.cur.err
		}
		if a.cur.buf != nil {
			a.free <- a.cur.buf // never blocks: there are aheadBufs buffers in all
		}
		a.cur, a.off = <-a.full, 0
	}
	n := copy(p, a.cur.buf[a.off:a.cur.n])
	a.off += n
	i := n - 1
	for i >= 0 && p[i] == 0 {
		i--
	}
	if i < 0 {
		a.zeros += int64(n)
	} else {
		a.zeros = int64(n - 1 - i)
	}
	return n, nil
}

// Close stops the goroutine and waits for it to be out of the reader.
func (a *readAhead) Close() {
	close(a.stop)
	<-a.done
}
