package fetch

import (
	"fmt"
	"testing"
)

// FuzzParseContentRange: the Content-Range header comes from the server; a
// parsed one is a range that can be resumed from, and prints back the same.
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-9/10", "bytes 5-9/*", "bytes 9-5/10", "bytes -1-3/4", "bytes 0-9/9",
		"bytes 00-9/10", "bytes 0-9223372036854775807/9223372036854775807", "items 0-1/2", "bytes 1-2", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, total, err := parseContentRange(s)
		if err != nil {
			if start != 0 || total != 0 {
				t.Fatalf("parseContentRange(%q) = %d, %d with error %v", s, start, total, err)
			}
			return
		}
		if start < 0 || total < -1 || (total >= 0 && start >= total) {
			t.Fatalf("parseContentRange(%q) = start %d, total %d: not a usable range", s, start, total)
		}
		var a, b int64
		var tot string
		if n, _ := fmt.Sscanf(s, "bytes %d-%d/%s", &a, &b, &tot); n != 3 || a != start {
			t.Fatalf("parseContentRange(%q) = start %d, which the header does not say", s, start)
		}
	})
}
