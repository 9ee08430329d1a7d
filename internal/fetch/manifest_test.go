package fetch

import (
	"bytes"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

const manifestPath = apiPrefix + "manifest/signed"

func TestSignedManifestETag(t *testing.T) {
	v1 := []byte(`{"signed":"eyJ2IjoxfQ==","signatures":[]}`)
	fs := newFileServer(t, manifestPath, v1, `"m1"`)
	c := testClient(t, fs.URL, Options{})

	got, err := c.SignedManifest(t.Context(), "dev")
	if err != nil || !bytes.Equal(got, v1) {
		t.Fatalf("first call = %q, %v; want %q", got, err, v1)
	}
	got[0] = 'X' // the caller owns what it gets; the cache must not change

	got, err = c.SignedManifest(t.Context(), "dev")
	if err != nil || !bytes.Equal(got, v1) {
		t.Fatalf("second call = %q, %v; want the cached %q", got, err, v1)
	}
	reqs := fs.requests()
	if len(reqs) != 2 || reqs[0].Path != manifestPath+"?channel=dev" || reqs[0].IfNoneMatch != "" {
		t.Fatalf("first request = %+v, want GET %s?channel=dev without If-None-Match", reqs[0], manifestPath)
	}
	if reqs[1].IfNoneMatch != `"m1"` || reqs[1].Status != http.StatusNotModified {
		t.Fatalf("second request = %+v, want If-None-Match \"m1\" answered 304", reqs[1])
	}

	// Another channel has its own cache entry.
	if _, err := c.SignedManifest(t.Context(), "stable"); err != nil {
		t.Fatal(err)
	}
	if r := fs.requests()[2]; r.IfNoneMatch != "" || r.Path != manifestPath+"?channel=stable" {
		t.Fatalf("request for another channel = %+v, want no If-None-Match", r)
	}

	// A new manifest replaces the cached one.
	v2 := []byte(`{"signed":"eyJ2IjoyfQ==","signatures":[]}`)
	fs.set(v2, `"m2"`, nil)
	if got, err := c.SignedManifest(t.Context(), "dev"); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("after a change = %q, %v; want %q", got, err, v2)
	}
	if got, err := c.SignedManifest(t.Context(), "dev"); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("after a change, cached = %q, %v; want %q", got, err, v2)
	}
	if r := fs.requests()[4]; r.IfNoneMatch != `"m2"` || r.Status != http.StatusNotModified {
		t.Fatalf("last request = %+v, want If-None-Match \"m2\" answered 304", r)
	}
}

func TestSignedManifestNotFound(t *testing.T) {
	fs := newFileServer(t, manifestPath, nil, "")
	fs.set(nil, "", func(w http.ResponseWriter, r *http.Request, _ int, _ []byte, _ string) bool {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"error":{"code":"not_found","message":"channel nope not found"}}`))
		return true
	})
	c := testClient(t, fs.URL, Options{})
	_, err := c.SignedManifest(t.Context(), "nope")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), "channel nope not found") {
		t.Errorf("error %q lacks the server's message", err)
	}
	if n := len(fs.requests()); n != 1 {
		t.Errorf("%d requests: a 404 must not be retried", n)
	}

	// A plain-text 404 (a server with no such route) still says something.
	fs2 := newFileServer(t, "/elsewhere", nil, "")
	c2 := testClient(t, fs2.URL, Options{})
	_, err = c2.SignedManifest(t.Context(), "dev")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "404 page not found") {
		t.Fatalf("err = %v, want ErrNotFound with the body text", err)
	}
}

func TestSignedManifestTooLarge(t *testing.T) {
	big := bytes.Repeat([]byte("a"), MaxManifestSize+1)
	for _, tc := range []struct {
		name string
		h    hook
	}{
		{"Content-Length", nil},
		{"chunked", chunked(big)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFileServer(t, manifestPath, big, `"big"`)
			fs.set(big, `"big"`, tc.h)
			c := testClient(t, fs.URL, Options{})
			if _, err := c.SignedManifest(t.Context(), "dev"); !errors.Is(err, ErrTooLarge) {
				t.Fatalf("err = %v, want ErrTooLarge", err)
			}
			if n := len(fs.requests()); n != 1 {
				t.Errorf("%d requests: too large must not be retried", n)
			}
		})
	}
	// Exactly the limit is fine.
	fs := newFileServer(t, manifestPath, big[:MaxManifestSize], `"ok"`)
	c := testClient(t, fs.URL, Options{})
	if got, err := c.SignedManifest(t.Context(), "dev"); err != nil || len(got) != MaxManifestSize {
		t.Fatalf("at the limit: %d bytes, %v", len(got), err)
	}
}

func TestSignedManifestRetries(t *testing.T) {
	body := []byte(`{"signed":"","signatures":[]}`)

	t.Run("5xx then OK", func(t *testing.T) {
		fs := newFileServer(t, manifestPath, body, `"m"`)
		fs.set(body, `"m"`, firstN(2, status(http.StatusBadGateway, "upstream")))
		c := testClient(t, fs.URL, Options{})
		if got, err := c.SignedManifest(t.Context(), "dev"); err != nil || !bytes.Equal(got, body) {
			t.Fatalf("= %q, %v", got, err)
		}
		if n := len(fs.requests()); n != 3 {
			t.Errorf("%d requests, want 3", n)
		}
	})

	t.Run("stall then OK", func(t *testing.T) {
		fs := newFileServer(t, manifestPath, body, `"m"`)
		fs.set(body, `"m"`, firstN(1, fs.stallAfter(5)))
		c := testClient(t, fs.URL, Options{StallTimeout: 200 * time.Millisecond})
		if got, err := c.SignedManifest(t.Context(), "dev"); err != nil || !bytes.Equal(got, body) {
			t.Fatalf("= %q, %v", got, err)
		}
		if n := len(fs.requests()); n != 2 {
			t.Errorf("%d requests, want 2", n)
		}
	})

	t.Run("always 500", func(t *testing.T) {
		fs := newFileServer(t, manifestPath, body, `"m"`)
		fs.set(body, `"m"`, status(http.StatusInternalServerError, "boom"))
		c := testClient(t, fs.URL, Options{Retries: -1})
		_, err := c.SignedManifest(t.Context(), "dev")
		if !errors.Is(err, ErrServer) || !strings.Contains(err.Error(), `channel "dev"`) {
			t.Fatalf("err = %v, want ErrServer naming the channel", err)
		}
		if n := len(fs.requests()); n != 1 {
			t.Errorf("%d requests with Retries -1, want 1", n)
		}
	})

	t.Run("empty channel", func(t *testing.T) {
		c := testClient(t, "http://127.0.0.1:1", Options{})
		if _, err := c.SignedManifest(t.Context(), ""); err == nil {
			t.Fatal("empty channel accepted")
		}
	})
}
