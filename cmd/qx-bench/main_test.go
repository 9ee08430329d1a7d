package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestInts(t *testing.T) {
	tests := []struct {
		in   string
		want []int
		ok   bool
	}{
		{"1000,5000", []int{1000, 5000}, true},
		{" 2, 3 ", []int{2, 3}, true},
		{"5", []int{5}, true},
		{"", nil, false},
		{"1,x", nil, false},
		{"0", nil, false},
		{"-4", nil, false},
	}
	for _, tt := range tests {
		got, err := ints(tt.in)
		if (err == nil) != tt.ok || !slices.Equal(got, tt.want) {
			t.Errorf("ints(%q) = %v, %v; want %v (ok %v)", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// Bad flags stop the run before it starts anything, naming the flag.
func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--fleet", "many"},
		{"--only", "1,x"},
		{"--no-such-flag"},
		{"infra"}, // the child needs --store and --repo
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 2 {
			t.Errorf("run %v = %d, want 2; stderr %s", args, code, stderr.String())
		}
		if stderr.Len() == 0 || stdout.Len() != 0 {
			t.Errorf("run %v: stdout %q, stderr %q; want only an error on stderr", args, stdout.String(), stderr.String())
		}
		if args[0] == "--fleet" && !strings.Contains(stderr.String(), "--fleet") {
			t.Errorf("run %v: error %q does not name the flag", args, stderr.String())
		}
	}
}
