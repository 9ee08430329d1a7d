package archive

import (
	"fmt"
	"os"
	"sync"
	"time"
)

// Small files are written by fileWriters goroutines. Extracting a component
// tree is mostly creating files, and the kernel's time per created file
// (inode allocation, the write, chmod, utimes) dwarfs the bytes: on one
// goroutine the extraction runs on one core. The main goroutine still reads
// the tar stream and decides everything (names, parents, duplicates, limits)
// in order; a writer only creates, at a path already checked, a file whose
// bytes were read whole into a pooled buffer. Larger files are written by the
// main goroutine as before.
const (
	fileWriters = 2
	smallFile   = 256 << 10 // the largest file handed to a writer
	smallBufs   = 8         // buffers in the pool: at most 2 MiB of contents in flight
)

// fileJob is a small file to create.
type fileJob struct {
	name  string
	perm  os.FileMode
	mtime time.Time
	data  []byte // from writers.pool
}

// writers creates small files in the background.
type writers struct {
	x    *extractor
	jobs chan fileJob
	pool chan []byte
	wg   sync.WaitGroup
	once sync.Once

	mu  sync.Mutex
	err error // the first failure
}

func startWriters(x *extractor) *writers {
	w := &writers{x: x, jobs: make(chan fileJob, smallBufs), pool: make(chan []byte, smallBufs)}
	for range smallBufs {
		w.pool <- nil // allocated on first use: most archives in tests are tiny
	}
	for range fileWriters {
		w.wg.Go(w.run)
	}
	return w
}

// buffer returns a buffer of n bytes (n <= smallFile), waiting for one to be free.
func (w *writers) buffer(n int64) []byte {
	b := <-w.pool
	if b == nil {
		b = make([]byte, smallFile)
	}
	return b[:n]
}

// put queues a file; its data must come from buffer.
func (w *writers) put(j fileJob) { w.jobs <- j }

func (w *writers) run() {
	for j := range w.jobs {
		// After a failure or a cancel, only hand the buffers back.
		if w.failed() == nil && w.x.ctx.Err() == nil {
			err := w.x.create(j.name, j.perm, j.mtime, func(f *os.File) error {
				_, err := f.Write(j.data)
				return err
			})
			if err != nil {
				w.fail(fmt.Errorf("archive: entry %q: %w", j.name, err))
			}
		}
		w.pool <- j.data[:0]
	}
}

func (w *writers) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
	}
}

// failed is the first failure of a writer, or nil.
func (w *writers) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// wait lets the writers finish what is queued and stops them; it returns the
// first failure. It may be called more than once.
func (w *writers) wait() error {
	w.once.Do(func() {
		close(w.jobs)
		w.wg.Wait()
	})
	return w.failed()
}

// create makes the file name: O_EXCL, never opening something that is
// already there (nor following a symlink in its place), then fill writes
// its bytes, then its mode and mtime. The main goroutine and the writers
// both create files with it.
func (x *extractor) create(name string, perm os.FileMode, mtime time.Time, fill func(*os.File) error) error {
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := fill(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return x.root.Chtimes(name, mtime, mtime)
}
