package fetch

import (
	"strings"
	"testing"
	"time"
)

func TestNew(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:9000", "https://updates.example.com", "HTTP://h:1/", "http://h/prefix"} {
		if _, err := New(ok, Options{}); err != nil {
			t.Errorf("New(%q): %v", ok, err)
		}
	}
	for _, tc := range []struct{ url, says string }{
		{"", "scheme"},
		{"127.0.0.1:9000", "127.0.0.1:9000"},
		{"ftp://h/x", "scheme must be http or https"},
		{"file:///etc", "scheme must be http or https"},
		{"http://", "no host"},
		{"http:opaque", "no host"},
		{"http://user:secret@h", "credentials"},
		{"http://h?x=1", "query"},
		{"http://h#f", "fragment"},
	} {
		_, err := New(tc.url, Options{})
		if err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("New(%q) = %v, want an error saying %q", tc.url, err, tc.says)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("New(%q) error leaks the password: %v", tc.url, err)
		}
	}
}

func TestDefaults(t *testing.T) {
	c, err := New("http://h", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if c.retries != DefaultRetries || c.minBackoff != DefaultMinBackoff || c.maxBackoff != DefaultMaxBackoff || c.stall != DefaultStallTimeout || c.hc == nil || c.hc.Timeout != 0 {
		t.Fatalf("defaults: %+v", c)
	}
	if c, _ := New("http://h", Options{Retries: -3}); c.retries != 0 {
		t.Errorf("Retries -3 gave %d retries, want 0", c.retries)
	}
}

func TestBackoff(t *testing.T) {
	c, err := New("http://h", Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for n, ceil := range map[int]time.Duration{1: 10, 2: 20, 3: 40, 4: 80, 5: 100, 60: 100} {
		ceil *= time.Millisecond
		for range 50 {
			if d := c.backoff(n); d < ceil/2 || d > ceil {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", n, d, ceil/2, ceil)
			}
		}
	}
}

func TestParseContentRange(t *testing.T) {
	for _, tc := range []struct {
		in           string
		start, total int64
		ok           bool
	}{
		{"bytes 0-9/10", 0, 10, true},
		{"bytes 5-9/*", 5, -1, true},
		{"bytes 5-9/9", 0, 0, false},
		{"bytes 9-5/10", 0, 0, false},
		{"bytes -1-5/10", 0, 0, false},
		{"bytes */10", 0, 0, false},
		{"items 0-9/10", 0, 0, false},
		{"", 0, 0, false},
	} {
		start, total, err := parseContentRange(tc.in)
		if (err == nil) != tc.ok || start != tc.start || total != tc.total {
			t.Errorf("parseContentRange(%q) = %d, %d, %v", tc.in, start, total, err)
		}
	}
}

func TestStrongETag(t *testing.T) {
	for in, want := range map[string]string{
		`"abc"`: `"abc"`, `W/"abc"`: "", `abc`: "", `"a"b"`: "", "\"a\nb\"": "", `""`: `""`, "": "",
	} {
		if got := strongETag(in); got != want {
			t.Errorf("strongETag(%q) = %q, want %q", in, got, want)
		}
	}
}
