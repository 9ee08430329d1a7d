package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix-os/update-agent/internal/qxtest"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

const artifactPath = apiPrefix + testArtifact

func checkFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes differ from the %d wanted", path, len(got), len(want))
	}
}

func checkGone(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: want it gone, stat says %v", p, err)
		}
	}
}

// interrupted leaves dst.part holding the first n bytes of data, as a
// download cancelled mid-way would, and checks the cancel was prompt.
func interrupted(t *testing.T, artifact, dst string, data []byte, etag string, n int) {
	t.Helper()
	fs := newFileServer(t, apiPrefix+artifact, data, etag)
	fs.set(data, etag, fs.stallAfter(n))
	c := testClient(t, fs.URL, Options{})
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- c.Download(ctx, artifact, dst, int64(len(data)), sha(data), nil) }()
	qxtest.WaitFor(t, 10*time.Second, "the partial file", func() bool {
		st, err := os.Stat(dst + partSuffix)
		return err == nil && st.Size() == int64(n)
	})
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Download: %v, want context.Canceled", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Download did not stop within 2s of cancel")
	}
	if st, err := os.Stat(dst + partSuffix); err != nil || st.Size() != int64(n) {
		t.Fatalf("after cancel the .part should hold %d bytes: %v %v", n, st, err)
	}
	if _, err := os.Stat(dst + metaSuffix); err != nil {
		t.Fatalf("after cancel the ETag file should remain: %v", err)
	}
	checkGone(t, dst)
}

func TestDownload(t *testing.T) {
	data := randomBytes(3<<20+123, 1)
	fs := newFileServer(t, artifactPath, data, `"v1"`)
	c := testClient(t, fs.URL, Options{})
	dst := filepath.Join(t.TempDir(), "qx-node.tar.zst")
	var pl progressLog
	if err := c.Download(t.Context(), testArtifact, dst, int64(len(data)), sha(data), pl.fn); err != nil {
		t.Fatal(err)
	}
	checkFile(t, dst, data)
	checkGone(t, dst+partSuffix, dst+metaSuffix)

	reqs := fs.requests()
	if len(reqs) != 1 || reqs[0].Range != "" || reqs[0].Status != http.StatusOK {
		t.Fatalf("requests = %+v, want one plain 200 GET", reqs)
	}
	if reqs[0].AcceptEncoding != "identity" {
		t.Errorf("Accept-Encoding = %q, want identity", reqs[0].AcceptEncoding)
	}
	calls := pl.get()
	if len(calls) == 0 || calls[len(calls)-1] != [2]int64{int64(len(data)), int64(len(data))} {
		t.Fatalf("progress calls %v: want the last to be (size, size)", calls)
	}
	for i, cl := range calls {
		if cl[1] != int64(len(data)) || cl[0] > cl[1] || (i > 0 && cl[0] < calls[i-1][0]) {
			t.Fatalf("progress call %d = %v: want rising done ≤ total = size", i, cl)
		}
	}

	// Already there: no request, one progress call.
	pl = progressLog{}
	if err := c.Download(t.Context(), testArtifact, dst, int64(len(data)), sha(data), pl.fn); err != nil {
		t.Fatal(err)
	}
	if n := len(fs.requests()); n != 1 {
		t.Errorf("%d requests after the second Download, want still 1", n)
	}
	if calls := pl.get(); len(calls) != 1 || calls[0][0] != int64(len(data)) {
		t.Errorf("progress calls for a present file = %v, want one (size, size)", calls)
	}

	// There but wrong: fetched again and replaced.
	if err := os.WriteFile(dst, make([]byte, len(data)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Download(t.Context(), testArtifact, dst, int64(len(data)), sha(data), nil); err != nil {
		t.Fatal(err)
	}
	checkFile(t, dst, data)
	if n := len(fs.requests()); n != 2 {
		t.Errorf("%d requests after replacing a corrupt file, want 2", n)
	}
}

func TestDownloadEmpty(t *testing.T) {
	fs := newFileServer(t, artifactPath, nil, `"e"`)
	c := testClient(t, fs.URL, Options{})
	dst := filepath.Join(t.TempDir(), "empty")
	if err := c.Download(t.Context(), testArtifact, dst, 0, sha(nil), nil); err != nil {
		t.Fatal(err)
	}
	checkFile(t, dst, nil)
}

func TestDownloadResumesAfterCut(t *testing.T) {
	for _, etag := range []string{`"v1"`, ""} {
		t.Run("etag="+etag, func(t *testing.T) {
			data := randomBytes(1<<20, 2)
			fs := newFileServer(t, artifactPath, data, etag)
			fs.set(data, etag, firstN(1, cutAfter(100_000)))
			c := testClient(t, fs.URL, Options{})
			dst := filepath.Join(t.TempDir(), "a")
			if err := c.Download(t.Context(), testArtifact, dst, int64(len(data)), sha(data), nil); err != nil {
				t.Fatal(err)
			}
			checkFile(t, dst, data)
			reqs := fs.requests()
			if len(reqs) != 2 {
				t.Fatalf("requests = %+v, want the cut one and a resume", reqs)
			}
			if r := reqs[1]; r.Range != "bytes=100000-" || r.IfRange != etag || r.Status != http.StatusPartialContent {
				t.Fatalf("resume request = %+v, want Range bytes=100000-, If-Range %q, answered 206", r, etag)
			}
		})
	}
}

func TestDownloadKeepsGoingWhileProgressing(t *testing.T) {
	// Every answer is cut after 64 KiB: 16 attempts with only 2 retries
	// allowed, which works because each attempt gets further.
	data := randomBytes(1<<20, 3)
	fs := newFileServer(t, artifactPath, data, `"v1"`)
	fs.set(data, `"v1"`, cutAfter(64<<10))
	c := testClient(t, fs.URL, Options{Retries: 2})
	dst := filepath.Join(t.TempDir(), "a")
	if err := c.Download(t.Context(), testArtifact, dst, int64(len(data)), sha(data), nil); err != nil {
		t.Fatal(err)
	}
	checkFile(t, dst, data)
	if n := len(fs.requests()); n != 16 {
		t.Errorf("%d requests, want 16", n)
	}
}

func TestDownloadGivesUpWithoutProgress(t *testing.T) {
	// Only the first answer sends anything; later ones are cut at once.
	data := randomBytes(100_000, 4)
	fs := newFileServer(t, artifactPath, data, `"v1"`)
	fs.set(data, `"v1"`, func(w http.ResponseWriter, r *http.Request, n int, data []byte, etag string) bool {
		if n == 0 {
			return cutAfter(1000)(w, r, n, data, etag)
		}
		return cutAfter(0)(w, r, n, data, etag)
	})
	c := testClient(t, fs.URL, Options{Retries: 3})
	dst := filepath.Join(t.TempDir(), "a")
	err := c.Download(t.Context(), testArtifact, dst, int64(len(data)), sha(data), nil)
	if err == nil || !strings.Contains(err.Error(), "giving up after 4 attempts") {
		t.Fatalf("err = %v, want giving up after 4 attempts", err)
	}
	if st, err := os.Stat(dst + partSuffix); err != nil || st.Size() != 1000 {
		t.Fatalf(".part should keep the 1000 bytes for a later resume: %v %v", st, err)
	}
}

func TestDownloadResumesAfterRestart(t *testing.T) {
	data := randomBytes(2<<20, 5)
	const half = 1 << 20
	dst := filepath.Join(t.TempDir(), "a")
	interrupted(t, testArtifact, dst, data, `"v1"`, half)

	// A new process: new server (same content), new Client.
	fs := newFileServer(t, artifactPath, data, `"v1"`)
	c := testClient(t, fs.URL, Options{})
	var pl progressLog
	if err := c.Download(t.Context(), testArtifact, dst, int64(len(data)), sha(data), pl.fn); err != nil {
		t.Fatal(err)
	}
	checkFile(t, dst, data)
	checkGone(t, dst+partSuffix, dst+metaSuffix)
	reqs := fs.requests()
	if len(reqs) != 1 || reqs[0].Range != fmt.Sprintf("bytes=%d-", half) || reqs[0].IfRange != `"v1"` || reqs[0].Status != http.StatusPartialContent {
		t.Fatalf("requests = %+v, want one ranged If-Range request answered 206", reqs)
	}
	if calls := pl.get(); len(calls) < 2 || calls[0][0] != half {
		t.Errorf("progress calls %v: want the first at the resume point %d", calls, half)
	}
}

func TestDownloadFileChanged(t *testing.T) {
	old := randomBytes(1<<20, 6)
	changed := randomBytes(1<<20+7, 7)
	const n = 300_000

	t.Run("restarts from 0", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "a")
		interrupted(t, testArtifact, dst, old, `"old"`, n)
		fs := newFileServer(t, artifactPath, changed, `"new"`)
		c := testClient(t, fs.URL, Options{})
		if err := c.Download(t.Context(), testArtifact, dst, int64(len(changed)), sha(changed), nil); err != nil {
			t.Fatal(err)
		}
		checkFile(t, dst, changed)
		reqs := fs.requests()
		if len(reqs) != 1 || reqs[0].Range == "" || reqs[0].IfRange != `"old"` || reqs[0].Status != http.StatusOK {
			t.Fatalf("requests = %+v, want one ranged request answered 200 (whole new file)", reqs)
		}
	})

	t.Run("content disagrees with the hash", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "a")
		interrupted(t, testArtifact, dst, old, `"old"`, n)
		same := append([]byte(nil), old...)
		same[len(same)-1] ^= 1 // same size, different content
		fs := newFileServer(t, artifactPath, same, `"new"`)
		c := testClient(t, fs.URL, Options{})
		err := c.Download(t.Context(), testArtifact, dst, int64(len(old)), sha(old), nil)
		if !errors.Is(err, ErrChecksum) {
			t.Fatalf("err = %v, want ErrChecksum", err)
		}
		checkGone(t, dst, dst+partSuffix, dst+metaSuffix)
	})

	t.Run("part from another artifact", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "a")
		interrupted(t, "releases/0.0.5/qx-node-0.0.5.tar.zst", dst, old, `"v1"`, n)
		fs := newFileServer(t, artifactPath, old, `"v1"`)
		c := testClient(t, fs.URL, Options{})
		if err := c.Download(t.Context(), testArtifact, dst, int64(len(old)), sha(old), nil); err != nil {
			t.Fatal(err)
		}
		checkFile(t, dst, old)
		if reqs := fs.requests(); len(reqs) != 1 || reqs[0].Range != "" {
			t.Fatalf("requests = %+v, want one request from byte 0", reqs)
		}
	})
}

func TestDownloadRangeNotSatisfiable(t *testing.T) {
	data := randomBytes(200_000, 8)
	fs := newFileServer(t, artifactPath, data, `"v1"`)
	fs.set(data, `"v1"`, func(w http.ResponseWriter, r *http.Request, n int, data []byte, etag string) bool {
		switch n {
		case 0:
			return cutAfter(50_000)(w, r, n, data, etag)
		case 1:
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return true
		}
		return false
	})
	c := testClient(t, fs.URL, Options{})
	dst := filepath.Join(t.TempDir(), "a")
	if err := c.Download(t.Context(), testArtifact, dst, int64(len(data)), sha(data), nil); err != nil {
		t.Fatal(err)
	}
	checkFile(t, dst, data)
	var ranges []string
	for _, r := range fs.requests() {
		ranges = append(ranges, r.Range)
	}
	if want := []string{"", "bytes=50000-", ""}; fmt.Sprint(ranges) != fmt.Sprint(want) {
		t.Fatalf("Range headers = %q, want %q", ranges, want)
	}
}

func TestDownloadWrongHash(t *testing.T) {
	data := randomBytes(100_000, 9)
	fs := newFileServer(t, artifactPath, data, `"v1"`)
	c := testClient(t, fs.URL, Options{})
	dst := filepath.Join(t.TempDir(), "a")
	want := sha([]byte("something else"))
	err := c.Download(t.Context(), testArtifact, dst, int64(len(data)), want, nil)
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("err = %v, want ErrChecksum", err)
	}
	for _, s := range []string{"fetch " + testArtifact + ": sha256 mismatch", "got " + sha(data), "want " + want} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
	checkGone(t, dst, dst+partSuffix, dst+metaSuffix)
	if n := len(fs.requests()); n != 1 {
		t.Errorf("%d requests: a checksum error must not be retried", n)
	}
}

func TestDownloadWrongSize(t *testing.T) {
	data := randomBytes(100_000, 10)
	for _, tc := range []struct {
		name string
		size int64  // what the manifest says
		h    hook   // nil: ServeContent (with Content-Length)
		body []byte // for the chunked hook
	}{
		{name: "longer, Content-Length", size: int64(len(data)) - 1},
		{name: "shorter, Content-Length", size: int64(len(data)) + 1},
		{name: "longer, chunked", size: int64(len(data)) - 1, h: chunked(data)},
		{name: "shorter, chunked", size: int64(len(data)) + 1, h: chunked(data)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFileServer(t, artifactPath, data, `"v1"`)
			fs.set(data, `"v1"`, tc.h)
			c := testClient(t, fs.URL, Options{})
			dst := filepath.Join(t.TempDir(), "a")
			var pl progressLog
			err := c.Download(t.Context(), testArtifact, dst, tc.size, sha(data), pl.fn)
			if !errors.Is(err, ErrSize) {
				t.Fatalf("err = %v, want ErrSize", err)
			}
			if !strings.Contains(err.Error(), testArtifact) {
				t.Errorf("error %q does not name the artifact", err)
			}
			for _, cl := range pl.get() {
				if cl[0] > tc.size {
					t.Fatalf("progress reported %d bytes written, more than size %d", cl[0], tc.size)
				}
			}
			checkGone(t, dst, dst+partSuffix, dst+metaSuffix)
			if n := len(fs.requests()); n != 1 {
				t.Errorf("%d requests: a size error must not be retried", n)
			}
		})
	}
}

func TestDownloadServerErrors(t *testing.T) {
	data := randomBytes(50_000, 11)

	t.Run("500 then OK", func(t *testing.T) {
		fs := newFileServer(t, artifactPath, data, `"v1"`)
		fs.set(data, `"v1"`, firstN(2, status(http.StatusInternalServerError, "boom")))
		c := testClient(t, fs.URL, Options{})
		dst := filepath.Join(t.TempDir(), "a")
		if err := c.Download(t.Context(), testArtifact, dst, int64(len(data)), sha(data), nil); err != nil {
			t.Fatal(err)
		}
		checkFile(t, dst, data)
		if n := len(fs.requests()); n != 3 {
			t.Errorf("%d requests, want 3", n)
		}
	})

	t.Run("always 503", func(t *testing.T) {
		fs := newFileServer(t, artifactPath, data, `"v1"`)
		fs.set(data, `"v1"`, status(http.StatusServiceUnavailable, "down for maintenance"))
		c := testClient(t, fs.URL, Options{Retries: 2})
		err := c.Download(t.Context(), testArtifact, filepath.Join(t.TempDir(), "a"), int64(len(data)), sha(data), nil)
		var se *StatusError
		if !errors.Is(err, ErrServer) || !errors.As(err, &se) || se.StatusCode != 503 {
			t.Fatalf("err = %v, want ErrServer wrapping a 503 StatusError", err)
		}
		if !strings.Contains(err.Error(), "down for maintenance") {
			t.Errorf("error %q lacks the server's message", err)
		}
		if n := len(fs.requests()); n != 3 {
			t.Errorf("%d requests, want 1 + 2 retries", n)
		}
	})

	for _, tc := range []struct {
		code int
		is   error
	}{
		{http.StatusForbidden, nil},
		{http.StatusBadRequest, nil},
		{http.StatusNotFound, ErrNotFound},
	} {
		t.Run(fmt.Sprint(tc.code, " not retried"), func(t *testing.T) {
			fs := newFileServer(t, artifactPath, data, `"v1"`)
			fs.set(data, `"v1"`, status(tc.code, "nope"))
			c := testClient(t, fs.URL, Options{})
			err := c.Download(t.Context(), testArtifact, filepath.Join(t.TempDir(), "a"), int64(len(data)), sha(data), nil)
			var se *StatusError
			if !errors.As(err, &se) || se.StatusCode != tc.code || errors.Is(err, ErrServer) {
				t.Fatalf("err = %v, want a %d StatusError", err, tc.code)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("err = %v, want %v", err, tc.is)
			}
			if n := len(fs.requests()); n != 1 {
				t.Errorf("%d requests, want 1", n)
			}
		})
	}
}

func TestDownloadStall(t *testing.T) {
	data := randomBytes(200_000, 12)

	t.Run("retried", func(t *testing.T) {
		fs := newFileServer(t, artifactPath, data, `"v1"`)
		fs.set(data, `"v1"`, firstN(1, fs.stallAfter(10_000)))
		c := testClient(t, fs.URL, Options{StallTimeout: 200 * time.Millisecond})
		dst := filepath.Join(t.TempDir(), "a")
		if err := c.Download(t.Context(), testArtifact, dst, int64(len(data)), sha(data), nil); err != nil {
			t.Fatal(err)
		}
		checkFile(t, dst, data)
		if reqs := fs.requests(); len(reqs) != 2 || reqs[1].Range != "bytes=10000-" {
			t.Fatalf("requests = %+v, want a resume from byte 10000 after the stall", reqs)
		}
	})

	t.Run("gives up", func(t *testing.T) {
		fs := newFileServer(t, artifactPath, data, `"v1"`)
		fs.set(data, `"v1"`, fs.stallAfter(0))
		c := testClient(t, fs.URL, Options{StallTimeout: 200 * time.Millisecond, Retries: 1})
		start := time.Now()
		err := c.Download(t.Context(), testArtifact, filepath.Join(t.TempDir(), "a"), int64(len(data)), sha(data), nil)
		if !errors.Is(err, ErrStalled) {
			t.Fatalf("err = %v, want ErrStalled", err)
		}
		if d := time.Since(start); d < 400*time.Millisecond || d > 5*time.Second {
			t.Errorf("took %v, want about two stall timeouts", d)
		}
		if n := len(fs.requests()); n != 2 {
			t.Errorf("%d requests, want 2", n)
		}
	})
}

func TestDownloadBadArguments(t *testing.T) {
	fs := newFileServer(t, artifactPath, []byte("x"), `"v1"`)
	c := testClient(t, fs.URL, Options{})
	dst := filepath.Join(t.TempDir(), "a")
	good := sha([]byte("x"))
	for _, tc := range []struct {
		name, artifact, dst, sum string
		size                     int64
		is                       error
	}{
		{"bad path", "../etc/passwd", dst, good, 1, ErrBadPath},
		{"short sha", testArtifact, dst, good[:10], 1, nil},
		{"non-hex sha", testArtifact, dst, strings.Repeat("z", 64), 1, nil},
		{"negative size", testArtifact, dst, good, -1, nil},
		{"empty dst", testArtifact, "", good, 1, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Download(t.Context(), tc.artifact, tc.dst, tc.size, tc.sum, nil)
			if err == nil || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Fatalf("err = %v, want an error (%v)", err, tc.is)
			}
		})
	}
	if n := len(fs.requests()); n != 0 {
		t.Errorf("%d requests for bad arguments, want 0", n)
	}
}
