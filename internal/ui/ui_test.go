package ui

import (
	"io/fs"
	"regexp"
	"strings"
	"testing"
)

func read(t *testing.T, name string) string {
	t.Helper()
	b, err := fs.ReadFile(FS(), name)
	if err != nil {
		t.Fatalf("page file %s: %v", name, err)
	}
	if len(b) == 0 {
		t.Fatalf("page file %s is empty", name)
	}
	return string(b)
}

func TestFiles(t *testing.T) {
	html := read(t, "index.html")
	read(t, "assets/app.js")
	read(t, "assets/app.css")
	for _, ref := range []string{`src="/assets/app.js"`, `href="/assets/app.css"`} {
		if !strings.Contains(html, ref) {
			t.Errorf("index.html does not load %s", ref)
		}
	}
	// The facade serves only index.html and assets/: anything else is dead weight.
	fs.WalkDir(FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if !d.IsDir() && p != "index.html" && !strings.HasPrefix(p, "assets/") {
			t.Errorf("%s would never be served", p)
		}
		return nil
	})
}

// TestStrictCSP holds the page to the facade's policy (default-src 'self')
// and to the rule that it loads nothing from outside the host.
func TestStrictCSP(t *testing.T) {
	html := read(t, "index.html")
	js := read(t, "assets/app.js")
	css := read(t, "assets/app.css")
	bad := []struct {
		file, text string
		re         *regexp.Regexp
		why        string
	}{
		{"index.html", html, regexp.MustCompile(`(?is)<script[^>]*>\s*[^<\s]`), "inline script"},
		{"index.html", html, regexp.MustCompile(`(?i)<style`), "inline style element"},
		{"index.html", html, regexp.MustCompile(`(?i)\sstyle\s*=`), "style attribute"},
		{"index.html", html, regexp.MustCompile(`(?i)\son[a-z]+\s*=`), "inline event handler"},
		{"index.html", html, regexp.MustCompile(`(?i)javascript:`), "javascript: URL"},
		{"index.html", html, regexp.MustCompile(`(?i)(?:src|href|action)\s*=\s*"(?:[a-z]+:|//)`), "foreign URL"},
		{"app.js", js, regexp.MustCompile(`\binnerHTML\b|\bouterHTML\b|insertAdjacentHTML|document\.write`), "HTML injection sink"},
		{"app.js", js, regexp.MustCompile(`\beval\s*\(|new\s+Function\s*\(`), "eval (refused by the policy)"},
		{"app.js", js, regexp.MustCompile(`setAttribute\(\s*['"]style`), "style attribute (refused by the policy)"},
		{"app.js", js, regexp.MustCompile(`[a-z]+://`), "absolute URL"},
		{"app.css", css, regexp.MustCompile(`(?i)@import|url\(`), "external resource"},
	}
	for _, b := range bad {
		if m := b.re.FindString(b.text); m != "" {
			t.Errorf("%s: %s: %q", b.file, b.why, m)
		}
	}
	for _, tag := range regexp.MustCompile(`(?i)<script[^>]*>`).FindAllString(html, -1) {
		if !strings.Contains(tag, ` src="/assets/`) {
			t.Errorf("index.html: script not loaded from assets/: %s", tag)
		}
	}
}

// TestIDs checks that every element the script and the browser test use is
// in the page.
func TestIDs(t *testing.T) {
	html := read(t, "index.html")
	js := read(t, "assets/app.js")
	ids := map[string]bool{}
	for _, m := range regexp.MustCompile(`\sid="([^"]+)"`).FindAllStringSubmatch(html, -1) {
		if ids[m[1]] {
			t.Errorf("id %q twice in index.html", m[1])
		}
		ids[m[1]] = true
	}
	used := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?:\$|setText)\('([^']+)'`).FindAllStringSubmatch(js, -1) {
		used[m[1]] = true
	}
	if len(used) < 20 {
		t.Fatalf("found only %d ids used by app.js; the pattern is stale", len(used))
	}
	for _, id := range []string{"status-badge", "check-btn", "apply-btn", "available-version", "download-size",
		"component-count", "release-notes", "progress", "ver-os", "ver-qx-node", "ver-qx-console", "ver-host-ui",
		"error-panel", "error-message", "reboot-panel", "history-body", "settings-form", "token-dialog", "token-input"} {
		used[id] = true
	}
	for id := range used {
		if !ids[id] {
			t.Errorf("id %q is used but not in index.html", id)
		}
	}
	// Every status has its label, as the seed spells them.
	for _, l := range []string{"'Idle'", "'Checking...'", "'Up to Date'", "'Update Available'", "'Downloading...'",
		"'Applying...'", "'Complete'", "'Error'", "'Reboot Required'"} {
		if !strings.Contains(js, l) {
			t.Errorf("app.js has no label %s", l)
		}
	}
}
