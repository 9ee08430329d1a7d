package fetch

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const testArtifact = "releases/0.0.6/qx-node-0.0.6.tar.zst"

// testClient returns a Client with tiny backoffs, logging into the test.
func testClient(t *testing.T, serverURL string, opts Options) *Client {
	t.Helper()
	if opts.MinBackoff == 0 {
		opts.MinBackoff = time.Millisecond
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 5 * time.Millisecond
	}
	if opts.StallTimeout == 0 {
		opts.StallTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	c, err := New(serverURL, opts)
	if err != nil {
		t.Fatalf("New(%q): %v", serverURL, err)
	}
	return c
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 42))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// reqLog is what the test server saw of one request.
type reqLog struct {
	Path, Range, IfRange, IfNoneMatch, AcceptEncoding string
	Status                                            int // 0 when a hook answered
}

// hook may answer request number n (from 0) itself; it returns false to let
// the server answer normally.
type hook func(w http.ResponseWriter, r *http.Request, n int, data []byte, etag string) bool

// fileServer serves one artifact (or manifest) with http.ServeContent, which
// implements Range, If-Range and If-None-Match, and records every request.
type fileServer struct {
	*httptest.Server
	path string
	stop chan struct{} // closed at test end to release blocked handlers

	mu   sync.Mutex
	data []byte
	etag string
	hook hook
	reqs []reqLog
}

func newFileServer(t *testing.T, path string, data []byte, etag string) *fileServer {
	t.Helper()
	fs := &fileServer{path: path, data: data, etag: etag, stop: make(chan struct{})}
	fs.Server = httptest.NewServer(http.HandlerFunc(fs.serve))
	t.Cleanup(fs.Close)
	t.Cleanup(func() { close(fs.stop) }) // runs first: unblocks handlers so Close returns
	return fs
}

func (fs *fileServer) set(data []byte, etag string, h hook) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.data, fs.etag, fs.hook = data, etag, h
}

func (fs *fileServer) requests() []reqLog {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return append([]reqLog(nil), fs.reqs...)
}

func (fs *fileServer) serve(w http.ResponseWriter, r *http.Request) {
	fs.mu.Lock()
	n := len(fs.reqs)
	fs.reqs = append(fs.reqs, reqLog{
		Path: r.URL.RequestURI(), Range: r.Header.Get("Range"), IfRange: r.Header.Get("If-Range"),
		IfNoneMatch: r.Header.Get("If-None-Match"), AcceptEncoding: r.Header.Get("Accept-Encoding"),
	})
	data, etag, h := fs.data, fs.etag, fs.hook
	fs.mu.Unlock()

	if r.URL.Path != fs.path {
		http.NotFound(w, r)
		return
	}
	if h != nil && h(w, r, n, data, etag) {
		return
	}
	rec := &statusWriter{ResponseWriter: w}
	if etag != "" {
		w.Header().Set("ETag", etag)
	}
	http.ServeContent(rec, r, "", time.Time{}, bytes.NewReader(data))
	fs.mu.Lock()
	fs.reqs[n].Status = rec.status
	fs.mu.Unlock()
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// rangeStart returns N from "bytes=N-", or 0. It honours If-Range the way
// ServeContent does: a mismatching validator means the whole file.
func rangeStart(r *http.Request, etag string) int {
	s, ok := strings.CutPrefix(r.Header.Get("Range"), "bytes=")
	if !ok {
		return 0
	}
	if ir := r.Header.Get("If-Range"); ir != "" && ir != etag {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSuffix(s, "-"))
	if err != nil {
		return 0
	}
	return n
}

// writeHead writes, on a hijacked connection, the status line and headers a
// correct server would send for the request, and returns the bytes it owes.
func writeHead(bw *bufio.ReadWriter, r *http.Request, data []byte, etag string) []byte {
	start := rangeStart(r, etag)
	rest := data[start:]
	if start > 0 {
		fmt.Fprintf(bw, "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n", start, len(data)-1, len(data))
	} else {
		fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\n")
	}
	if etag != "" {
		fmt.Fprintf(bw, "ETag: %s\r\n", etag)
	}
	fmt.Fprintf(bw, "Content-Length: %d\r\nConnection: close\r\n\r\n", len(rest))
	return rest
}

// cutAfter answers correctly but closes the connection after max body bytes.
func cutAfter(max int) hook {
	return func(w http.ResponseWriter, r *http.Request, _ int, data []byte, etag string) bool {
		conn, bw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		defer conn.Close()
		rest := writeHead(bw, r, data, etag)
		bw.Write(rest[:min(max, len(rest))])
		bw.Flush()
		return true
	}
}

// stallAfter answers correctly, sends max body bytes, then goes silent until
// the client gives up or the test ends.
func (fs *fileServer) stallAfter(max int) hook {
	return func(w http.ResponseWriter, r *http.Request, _ int, data []byte, etag string) bool {
		start := rangeStart(r, etag)
		w.Header().Set("ETag", etag)
		w.Header().Set("Content-Length", strconv.Itoa(len(data)-start))
		if start > 0 {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, len(data)-1, len(data)))
			w.WriteHeader(http.StatusPartialContent)
		}
		w.Write(data[start : start+min(max, len(data)-start)])
		http.NewResponseController(w).Flush()
		select {
		case <-r.Context().Done():
		case <-fs.stop:
		}
		return true
	}
}

// firstN applies h to the first n requests only.
func firstN(n int, h hook) hook {
	return func(w http.ResponseWriter, r *http.Request, i int, data []byte, etag string) bool {
		return i < n && h(w, r, i, data, etag)
	}
}

// status answers with code and a JSON error body.
func status(code int, msg string) hook {
	return func(w http.ResponseWriter, r *http.Request, _ int, _ []byte, _ string) bool {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		fmt.Fprintf(w, `{"error":{"code":"test","message":%q}}`, msg)
		return true
	}
}

// chunked sends body without a Content-Length.
func chunked(body []byte) hook {
	return func(w http.ResponseWriter, r *http.Request, _ int, _ []byte, etag string) bool {
		w.Header().Set("ETag", etag)
		half := len(body) / 2
		w.Write(body[:half])
		http.NewResponseController(w).Flush() // no Content-Length from here on
		w.Write(body[half:])
		return true
	}
}

// progressLog records Progress calls.
type progressLog struct {
	mu    sync.Mutex
	calls [][2]int64
}

func (p *progressLog) fn(done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, [2]int64{done, total})
}

func (p *progressLog) get() [][2]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][2]int64(nil), p.calls...)
}
