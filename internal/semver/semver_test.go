package semver

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want Version
	}{
		{"0.0.0", Version{}},
		{"1.2.3", Version{Major: 1, Minor: 2, Patch: 3}},
		{"10.20.30", Version{Major: 10, Minor: 20, Patch: 30}},
		{"1.0.0-alpha", Version{Major: 1, Pre: "alpha"}},
		{"1.0.0-alpha.1", Version{Major: 1, Pre: "alpha.1"}},
		{"1.0.0-0.3.7", Version{Major: 1, Pre: "0.3.7"}},
		{"1.0.0-x.7.z.92", Version{Major: 1, Pre: "x.7.z.92"}},
		{"1.0.0-x-y-z.--", Version{Major: 1, Pre: "x-y-z.--"}},
		{"1.0.0-0a", Version{Major: 1, Pre: "0a"}}, // alphanumeric: a leading zero is fine
		{"1.0.0+20130313144700", Version{Major: 1, Build: "20130313144700"}},
		{"1.0.0+001", Version{Major: 1, Build: "001"}}, // build identifiers may have leading zeros
		{"1.0.0-beta+exp.sha.5114f85", Version{Major: 1, Pre: "beta", Build: "exp.sha.5114f85"}},
		{"1.0.0+21AF26D3----117B344092BD", Version{Major: 1, Build: "21AF26D3----117B344092BD"}},
		{"18446744073709551615.0.0", Version{Major: 1<<64 - 1}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("Parse(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			if s := got.String(); s != tt.in {
				t.Errorf("String() = %q, want %q", s, tt.in)
			}
			if err := Valid(tt.in); err != nil {
				t.Errorf("Valid(%q) = %v", tt.in, err)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		in, why string
	}{
		{"", "empty"},
		{"v1.2.3", "not a number"},
		{"1.2", "want MAJOR.MINOR.PATCH"},
		{"1.2.3.4", "want MAJOR.MINOR.PATCH"},
		{"1..3", "empty minor"},
		{"01.2.3", "major version \"01\" has a leading zero"},
		{"1.02.3", "minor version \"02\" has a leading zero"},
		{"1.2.03", "patch version \"03\" has a leading zero"},
		{"1.2.3-", "pre-release: empty"},
		{"1.2.3+", "build metadata: empty"},
		{"1.2.3-alpha..1", "empty identifier"},
		{"1.2.3-01", "leading zero"},
		{"1.2.3-alpha_1", "not allowed"},
		{"1.2.3+build!", "not allowed"},
		{"1.2.3-a+b+c", "not allowed"},
		{" 1.2.3", "not a number"},
		{"1.2.3 ", "not a number"},
		{"-1.2.3", "want MAJOR.MINOR.PATCH"},
		{"1.2.-3", "empty patch"},
		{"18446744073709551616.0.0", "out of range"},
		{"1.2.3-" + strings.Repeat("a", MaxLen), "longer than"},
		{"１.2.3", "not a number"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := Parse(tt.in)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) = %v, want ErrInvalid", tt.in, err)
			}
			if !strings.Contains(err.Error(), tt.why) {
				t.Errorf("Parse(%q) = %q, want it to say %q", tt.in, err, tt.why)
			}
			if Valid(tt.in) == nil {
				t.Errorf("Valid(%q) = nil", tt.in)
			}
		})
	}
}

func TestCompare(t *testing.T) {
	// Each is strictly lower than the next (semver.org's examples and more).
	ordered := []string{
		"0.0.1",
		"0.0.9",
		"0.1.0",
		"0.9.9",
		"0.10.0",
		"1.0.0-0",
		"1.0.0-9",
		"1.0.0-10",
		"1.0.0-99999999999999999999", // larger than uint64: still numeric
		"1.0.0-alpha",
		"1.0.0-alpha.1",
		"1.0.0-alpha.beta",
		"1.0.0-beta",
		"1.0.0-beta.2",
		"1.0.0-beta.11",
		"1.0.0-rc.1",
		"1.0.0",
		"1.0.1",
		"1.1.0",
		"2.0.0",
		"10.0.0",
	}
	for i, a := range ordered {
		for j, b := range ordered {
			want := 0
			switch {
			case i < j:
				want = -1
			case i > j:
				want = 1
			}
			got, err := Compare(a, b)
			if err != nil {
				t.Fatalf("Compare(%q, %q): %v", a, b, err)
			}
			if got != want {
				t.Errorf("Compare(%q, %q) = %d, want %d", a, b, got, want)
			}
		}
	}
}

func TestCompareIgnoresBuild(t *testing.T) {
	tests := []struct{ a, b string }{
		{"1.0.0+a", "1.0.0+b"},
		{"1.0.0-rc.1+x", "1.0.0-rc.1"},
	}
	for _, tt := range tests {
		if got, err := Compare(tt.a, tt.b); err != nil || got != 0 {
			t.Errorf("Compare(%q, %q) = %d, %v; want 0", tt.a, tt.b, got, err)
		}
	}
}

func TestCompareInvalid(t *testing.T) {
	for _, tt := range []struct{ a, b string }{{"1.0", "1.0.0"}, {"1.0.0", "x"}} {
		if _, err := Compare(tt.a, tt.b); !errors.Is(err, ErrInvalid) {
			t.Errorf("Compare(%q, %q) error = %v, want ErrInvalid", tt.a, tt.b, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"1.2.3", "1.0.0-alpha.1+build.5", "0.0.0-0", "01.2.3", "1.2.3-", "1.2.3+a+b"} {
		f.Add(s, "1.0.0-rc.1")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		va, err := Parse(a)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) error %v does not wrap ErrInvalid", a, err)
			}
			return
		}
		if s := va.String(); s != a {
			t.Fatalf("Parse(%q).String() = %q", a, s)
		}
		if va.Compare(va) != 0 {
			t.Fatalf("%q does not compare equal to itself", a)
		}
		vb, err := Parse(b)
		if err != nil {
			return
		}
		if ab, ba := va.Compare(vb), vb.Compare(va); ab != -ba {
			t.Fatalf("Compare not antisymmetric: %q vs %q: %d, %d", a, b, ab, ba)
		}
	})
}
