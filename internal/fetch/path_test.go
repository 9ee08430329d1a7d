package fetch

import (
	"errors"
	"net/url"
	"path"
	"strconv"
	"strings"
	"testing"
)

func TestArtifactURL(t *testing.T) {
	for _, tc := range []struct {
		server, artifact, want string
	}{
		{"http://127.0.0.1:9000", "releases/0.0.6/qx-node-0.0.6.tar.zst", "http://127.0.0.1:9000/api/v1/quantix-os/releases/0.0.6/qx-node-0.0.6.tar.zst"},
		{"http://127.0.0.1:9000/", "releases/0.0.6/x.img.zst", "http://127.0.0.1:9000/api/v1/quantix-os/releases/0.0.6/x.img.zst"},
		{"https://updates.example.com/mirror/", "releases/1.0.0+build.7/a_b~c=d,e@f", "https://updates.example.com/mirror/api/v1/quantix-os/releases/1.0.0+build.7/a_b~c=d,e@f"},
		{"http://[::1]:9000", "x", "http://[::1]:9000/api/v1/quantix-os/x"},
		{"http://h", "..x/y..", "http://h/api/v1/quantix-os/..x/y.."},
	} {
		c := testClient(t, tc.server, Options{})
		got, err := c.ArtifactURL(tc.artifact)
		if err != nil || got != tc.want {
			t.Errorf("%s + %q = %q, %v; want %q", tc.server, tc.artifact, got, err, tc.want)
		}
	}

	c := testClient(t, "http://127.0.0.1:9000", Options{})
	for _, bad := range []string{
		"",
		"..",
		"../secret",
		"releases/../../etc/passwd",
		"releases/0.0.6/..",
		"./releases/x",
		"releases/./x",
		"/releases/x",
		"/etc/passwd",
		"//evil.example.com/x",
		"http://evil.example.com/x",
		"https:x",
		"file:///etc/passwd",
		"c:/windows",
		`releases\0.0.6\x`,
		`..\x`,
		"releases//x",
		"releases/x/",
		"releases/x?y=1",
		"releases/x#frag",
		"releases/%2e%2e/x",
		"releases/a b",
		"releases/x\x00",
		"releases/x\n",
		"releases/é",
		strings.Repeat("a", 1025),
	} {
		got, err := c.ArtifactURL(bad)
		if !errors.Is(err, ErrBadPath) {
			t.Errorf("ArtifactURL(%q) = %q, %v; want ErrBadPath", bad, got, err)
		} else if len(bad) < 100 && !strings.Contains(err.Error(), strconv.Quote(bad)) {
			t.Errorf("error %q does not name the path %q", err, bad)
		}
	}
}

func FuzzArtifactURL(f *testing.F) {
	for _, s := range []string{
		"releases/0.0.6/qx-node-0.0.6.tar.zst", "../x", "a/../b", "//h/x", "http://h/x",
		`a\b`, "a/./b", "%2e%2e/x", "a?b", "a#b", "", "a//b", ".../x",
	} {
		f.Add(s)
	}
	c, err := New("http://127.0.0.1:9000/pre", Options{})
	if err != nil {
		f.Fatal(err)
	}
	const prefix = "/pre" + apiPrefix
	f.Fuzz(func(t *testing.T, artifact string) {
		got, err := c.ArtifactURL(artifact)
		if err != nil {
			if !errors.Is(err, ErrBadPath) {
				t.Fatalf("error %v does not wrap ErrBadPath", err)
			}
			return
		}
		u, err := url.Parse(got)
		if err != nil {
			t.Fatalf("ArtifactURL(%q) = %q, which does not parse: %v", artifact, got, err)
		}
		if u.Scheme != "http" || u.Host != "127.0.0.1:9000" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			t.Fatalf("ArtifactURL(%q) = %q leaves the server", artifact, got)
		}
		if !strings.HasPrefix(u.Path, prefix) || len(u.Path) == len(prefix) {
			t.Fatalf("ArtifactURL(%q) = %q is not below %s", artifact, got, prefix)
		}
		if path.Clean(u.Path) != u.Path || u.Path != prefix+artifact || u.EscapedPath() != u.Path {
			t.Fatalf("ArtifactURL(%q) = %q: path %q is not exactly the clean, unescaped artifact path", artifact, got, u.Path)
		}
	})
}
