package updatesrv

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/internal/release"
)

type fixture struct {
	repo string
	pub  ed25519.PublicKey
	m    *manifest.Manifest
	srv  *httptest.Server
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{repo: filepath.Join(dir, "repo")}
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(filepath.Join(src, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "bin", "qx-node"), bytes.Repeat([]byte("qx-node binary\n"), 2000), 0o755); err != nil {
		t.Fatal(err)
	}
	pub, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	f.pub = pub
	f.m, err = release.Create(context.Background(), release.Spec{
		Repo: f.repo, Channel: "dev", Version: "0.0.6", Key: key, Components: map[string]string{"qx-node": src},
	})
	if err != nil {
		t.Fatal(err)
	}
	// httptest servers listen on 127.0.0.1.
	f.srv = httptest.NewServer(Handler(f.repo, nil))
	t.Cleanup(f.srv.Close)
	return f
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (f *fixture) do(t *testing.T, method, path string, header map[string]string) response {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, body}
}

func wantError(t *testing.T, r response, status int, code, msg string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d (body %s)", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var b errorBody
	if err := json.Unmarshal(r.body, &b); err != nil {
		t.Fatalf("error body %q: %v", r.body, err)
	}
	if b.Error.Code != code || !strings.Contains(b.Error.Message, msg) {
		t.Errorf("error = %+v, want code %q and a message with %q", b.Error, code, msg)
	}
}

func TestManifestEndpoints(t *testing.T) {
	f := newFixture(t)
	for _, tt := range []struct{ path, file string }{
		{"/api/v1/quantix-os/manifest?channel=dev", "manifest.json"},
		{"/api/v1/quantix-os/manifest/signed?channel=dev", "manifest.signed.json"},
	} {
		t.Run(tt.file, func(t *testing.T) {
			want, _ := os.ReadFile(filepath.Join(f.repo, "channels/dev", tt.file))
			r := f.do(t, "GET", tt.path, nil)
			if r.status != 200 || !bytes.Equal(r.body, want) {
				t.Fatalf("GET: %d %q", r.status, r.body)
			}
			etag := r.header.Get("ETag")
			if len(etag) != 34 || etag[0] != '"' || strings.HasPrefix(etag, "W/") {
				t.Errorf("ETag %q, want a strong quoted hash", etag)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			r = f.do(t, "GET", tt.path, map[string]string{"If-None-Match": etag})
			if r.status != http.StatusNotModified || len(r.body) != 0 {
				t.Errorf("If-None-Match: %d %q, want 304", r.status, r.body)
			}
			r = f.do(t, "GET", tt.path, map[string]string{"If-None-Match": `"other"`})
			if r.status != 200 {
				t.Errorf("stale If-None-Match: %d, want 200", r.status)
			}
			r = f.do(t, "HEAD", tt.path, nil)
			if r.status != 200 || r.header.Get("ETag") != etag {
				t.Errorf("HEAD: %d, ETag %q", r.status, r.header.Get("ETag"))
			}
		})
	}

	r := f.do(t, "GET", "/api/v1/quantix-os/manifest/signed?channel=dev", nil)
	m, _, err := manifest.Verify(r.body, []ed25519.PublicKey{f.pub})
	if err != nil || m.Version != "0.0.6" {
		t.Errorf("served envelope: %+v, %v", m, err)
	}

	// A new release changes the ETag, so clients revalidating get it.
	etag := r.header.Get("ETag")
	os.WriteFile(filepath.Join(f.repo, "channels/dev/manifest.signed.json"), append(r.body, ' '), 0o644)
	r = f.do(t, "GET", "/api/v1/quantix-os/manifest/signed?channel=dev", map[string]string{"If-None-Match": etag})
	if r.status != 200 || r.header.Get("ETag") == etag {
		t.Errorf("after change: %d, ETag %q (was %q)", r.status, r.header.Get("ETag"), etag)
	}
}

func TestManifestErrors(t *testing.T) {
	f := newFixture(t)
	r := f.do(t, "GET", "/api/v1/quantix-os/manifest?channel=x", nil)
	wantError(t, r, 404, "not_found", `channel "x" has no release`)
	if want := `{"error":{"code":"not_found","message":"channel \"x\" has no release"}}` + "\n"; string(r.body) != want {
		t.Errorf("body %q, want %q", r.body, want)
	}
	wantError(t, f.do(t, "GET", "/api/v1/quantix-os/manifest/signed?channel=stable", nil), 404, "not_found", `channel "stable" has no release`)
	wantError(t, f.do(t, "GET", "/api/v1/quantix-os/manifest/signed", nil), 400, "bad_request", "missing channel")
	wantError(t, f.do(t, "GET", "/api/v1/quantix-os/manifest?channel=", nil), 400, "invalid_channel", `channel ""`)
	wantError(t, f.do(t, "GET", "/api/v1/quantix-os/manifest?channel=..%2Fkeys", nil), 400, "invalid_channel", `"../keys"`)
	wantError(t, f.do(t, "GET", "/api/v1/quantix-os/manifest?channel=Dev", nil), 400, "invalid_channel", `"Dev"`)
	wantError(t, f.do(t, "POST", "/api/v1/quantix-os/manifest?channel=dev", nil), 405, "method_not_allowed", "POST")
	wantError(t, f.do(t, "GET", "/api/v1/quantix-os/nothing", nil), 404, "not_found", "no such endpoint")
	wantError(t, f.do(t, "GET", "/", nil), 404, "not_found", "no such endpoint")
}

func TestArtifact(t *testing.T) {
	f := newFixture(t)
	c := f.m.Components[0]
	want, err := os.ReadFile(filepath.Join(f.repo, c.Artifact))
	if err != nil {
		t.Fatal(err)
	}
	if len(want) < 100 {
		t.Fatalf("artifact of %d bytes is too small for the range tests", len(want))
	}
	path := "/api/v1/quantix-os/" + c.Artifact

	r := f.do(t, "GET", path, nil)
	if r.status != 200 || !bytes.Equal(r.body, want) {
		t.Fatalf("GET: %d, %d bytes, want %d", r.status, len(r.body), len(want))
	}
	etag := r.header.Get("ETag")
	if etag == "" || strings.HasPrefix(etag, "W/") || r.header.Get("Accept-Ranges") != "bytes" {
		t.Errorf("ETag %q, Accept-Ranges %q", etag, r.header.Get("Accept-Ranges"))
	}
	if ct := r.header.Get("Content-Type"); ct != "application/octet-stream" {
		t.Errorf("Content-Type %q", ct)
	}

	r = f.do(t, "GET", path, map[string]string{"Range": "bytes=10-49"})
	if r.status != http.StatusPartialContent || !bytes.Equal(r.body, want[10:50]) {
		t.Errorf("Range 10-49: %d %x, want 206 %x", r.status, r.body, want[10:50])
	}
	if cr := r.header.Get("Content-Range"); cr != "bytes 10-49/"+strconv.Itoa(len(want)) {
		t.Errorf("Content-Range %q", cr)
	}
	// Resuming from an offset, as the agent's fetcher does.
	r = f.do(t, "GET", path, map[string]string{"Range": "bytes=60-", "If-Range": etag})
	if r.status != http.StatusPartialContent || !bytes.Equal(r.body, want[60:]) {
		t.Errorf("If-Range matching: %d, %d bytes, want 206 with %d", r.status, len(r.body), len(want)-60)
	}
	r = f.do(t, "GET", path, map[string]string{"Range": "bytes=60-", "If-Range": `"0-0"`})
	if r.status != 200 || !bytes.Equal(r.body, want) {
		t.Errorf("If-Range stale: %d, %d bytes, want 200 with all", r.status, len(r.body))
	}
	r = f.do(t, "GET", path, map[string]string{"If-None-Match": etag})
	if r.status != http.StatusNotModified {
		t.Errorf("If-None-Match: %d, want 304", r.status)
	}
	r = f.do(t, "GET", path, map[string]string{"Range": "bytes=" + strconv.Itoa(len(want)+10) + "-"})
	if r.status != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("Range past the end: %d, want 416", r.status)
	}

	// A replaced file gets a new ETag, so a resume does not splice two files.
	later := time.Now().Add(time.Minute)
	os.Chtimes(filepath.Join(f.repo, c.Artifact), later, later)
	r = f.do(t, "GET", path, map[string]string{"Range": "bytes=60-", "If-Range": etag})
	if r.status != 200 || r.header.Get("ETag") == etag {
		t.Errorf("after change: %d, ETag %q (was %q), want 200 and a new ETag", r.status, r.header.Get("ETag"), etag)
	}
}

func TestArtifactRefuses(t *testing.T) {
	f := newFixture(t)
	outside := filepath.Join(filepath.Dir(f.repo), "secret")
	os.WriteFile(outside, []byte("secret"), 0o644)
	os.Symlink(outside, filepath.Join(f.repo, "releases/0.0.6/escape.tar.zst"))
	os.Symlink("../../channels/dev/manifest.json", filepath.Join(f.repo, "releases/0.0.6/up.json"))
	os.Mkdir(filepath.Join(f.repo, "releases/0.0.6/dir"), 0o755)
	os.WriteFile(filepath.Join(f.repo, "releases/0.0.6/.partial.tmp"), []byte("x"), 0o644)

	tests := []struct {
		path         string
		status       int
		code, detail string
	}{
		{"/api/v1/quantix-os/releases/0.0.6/missing.tar.zst", 404, "not_found", `release file "0.0.6/missing.tar.zst" not found`},
		{"/api/v1/quantix-os/releases/9.9.9/qx-node-0.0.6.tar.zst", 404, "not_found", "not found"},
		{"/api/v1/quantix-os/releases/0.0.6/escape.tar.zst", 404, "not_found", "not found"},
		{"/api/v1/quantix-os/releases/0.0.6/up.json", 404, "not_found", "not found"},
		{"/api/v1/quantix-os/releases/0.0.6/dir", 404, "not_found", "not found"},
		{"/api/v1/quantix-os/releases/0.0.6/.partial.tmp", 400, "bad_request", `".partial.tmp"`},
		{"/api/v1/quantix-os/releases/0.0.6/%2e%2e", 400, "bad_request", `".."`},
		{"/api/v1/quantix-os/releases/0.0.6/..%2F..%2Fchannels%2Fdev%2Fmanifest.json", 400, "bad_request", "not allowed"},
		{"/api/v1/quantix-os/releases/..%2Fchannels/manifest.json", 400, "bad_request", "not a semantic version"},
		{"/api/v1/quantix-os/releases/v0.0.6/x", 400, "bad_request", `"v0.0.6"`},
		{"/api/v1/quantix-os/releases/0.0.6/a%5Cb", 400, "bad_request", "not allowed"},
		{"/api/v1/quantix-os/releases/0.0.6", 404, "not_found", "no such endpoint"},
		{"/api/v1/quantix-os/releases/0.0.6/a/b", 404, "not_found", "no such endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			r := f.do(t, "GET", tt.path, nil)
			wantError(t, r, tt.status, tt.code, tt.detail)
			if bytes.Contains(r.body, []byte("secret")) || bytes.Contains(r.body, []byte(`"schema"`)) {
				t.Errorf("leaked a file: %s", r.body)
			}
		})
	}
	wantError(t, f.do(t, "DELETE", "/api/v1/quantix-os/"+f.m.Components[0].Artifact, nil), 405, "method_not_allowed", "DELETE")
}

func TestMissingRepo(t *testing.T) {
	srv := httptest.NewServer(Handler(filepath.Join(t.TempDir(), "none"), nil))
	defer srv.Close()
	f := &fixture{srv: srv}
	wantError(t, f.do(t, "GET", "/api/v1/quantix-os/manifest/signed?channel=dev", nil), 404, "not_found", `channel "dev" has no release`)
	wantError(t, f.do(t, "GET", "/api/v1/quantix-os/releases/0.0.6/x.tar.zst", nil), 404, "not_found", "not found")
}
