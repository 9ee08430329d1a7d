// Package semver parses and orders Semantic Versioning 2.0.0 versions
// (https://semver.org): MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD].
//
// It is strict on purpose, since versions come from signed manifests and decide
// what a host installs: no leading "v", no leading zeros in numeric parts, no
// empty identifiers. Build metadata is kept but never affects ordering.
package semver

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrInvalid is wrapped by every parse error.
var ErrInvalid = errors.New("invalid semantic version")

// MaxLen bounds a version string; real ones are a dozen bytes, and the bound
// keeps hostile input out of error messages and logs.
const MaxLen = 256

// Version is a parsed semantic version.
type Version struct {
	Major, Minor, Patch uint64
	// Pre is the pre-release part without its "-" ("rc.1"), empty for a release.
	Pre string
	// Build is the build metadata without its "+", ignored by Compare.
	Build string
}

// Parse parses v, which must be a complete semantic version.
func Parse(v string) (Version, error) {
	bad := func(why string, args ...any) (Version, error) {
		s := v
		if len(s) > 40 {
			s = s[:40] + "..."
		}
		return Version{}, fmt.Errorf("semver: %q: %s: %w", s, fmt.Sprintf(why, args...), ErrInvalid)
	}
	if v == "" {
		return bad("empty")
	}
	if len(v) > MaxLen {
		return bad("longer than %d bytes", MaxLen)
	}
	rest := v
	var ver Version
	if i := strings.IndexByte(rest, '+'); i >= 0 {
		ver.Build = rest[i+1:]
		rest = rest[:i]
		if err := checkIdents(ver.Build, false); err != nil {
			return bad("build metadata: %s", err)
		}
	}
	if i := strings.IndexByte(rest, '-'); i >= 0 {
		ver.Pre = rest[i+1:]
		rest = rest[:i]
		if err := checkIdents(ver.Pre, true); err != nil {
			return bad("pre-release: %s", err)
		}
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 {
		return bad("want MAJOR.MINOR.PATCH")
	}
	for i, dst := range []*uint64{&ver.Major, &ver.Minor, &ver.Patch} {
		name := [...]string{"major", "minor", "patch"}[i]
		p := parts[i]
		if p == "" {
			return bad("empty %s version", name)
		}
		if !allDigits(p) {
			return bad("%s version %q is not a number", name, p)
		}
		if len(p) > 1 && p[0] == '0' {
			return bad("%s version %q has a leading zero", name, p)
		}
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return bad("%s version %q is out of range", name, p)
		}
		*dst = n
	}
	return ver, nil
}

// checkIdents checks a dot-separated list of identifiers; numeric pre-release
// identifiers must not have leading zeros.
func checkIdents(s string, pre bool) error {
	if s == "" {
		return errors.New("empty")
	}
	for id := range strings.SplitSeq(s, ".") {
		if id == "" {
			return errors.New("empty identifier")
		}
		for i := 0; i < len(id); i++ {
			if !identByte(id[i]) {
				return fmt.Errorf("identifier %q: character %q not allowed", id, id[i])
			}
		}
		if pre && len(id) > 1 && id[0] == '0' && allDigits(id) {
			return fmt.Errorf("numeric identifier %q has a leading zero", id)
		}
	}
	return nil
}

func identByte(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-'
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// Valid reports why v is not a semantic version, or nil.
func Valid(v string) error {
	_, err := Parse(v)
	return err
}

// String returns the version in its canonical form, which for a parsed
// version is exactly the string it was parsed from.
func (v Version) String() string {
	var b strings.Builder
	b.WriteString(strconv.FormatUint(v.Major, 10))
	b.WriteByte('.')
	b.WriteString(strconv.FormatUint(v.Minor, 10))
	b.WriteByte('.')
	b.WriteString(strconv.FormatUint(v.Patch, 10))
	if v.Pre != "" {
		b.WriteByte('-')
		b.WriteString(v.Pre)
	}
	if v.Build != "" {
		b.WriteByte('+')
		b.WriteString(v.Build)
	}
	return b.String()
}

// Compare returns -1, 0 or +1 as v has lower, equal or higher precedence than
// w (semver.org, section 11). Build metadata is ignored.
func (v Version) Compare(w Version) int {
	if c := cmpUint(v.Major, w.Major); c != 0 {
		return c
	}
	if c := cmpUint(v.Minor, w.Minor); c != 0 {
		return c
	}
	if c := cmpUint(v.Patch, w.Patch); c != 0 {
		return c
	}
	// A pre-release has lower precedence than the release itself.
	switch {
	case v.Pre == w.Pre:
		return 0
	case v.Pre == "":
		return 1
	case w.Pre == "":
		return -1
	}
	a, b := strings.Split(v.Pre, "."), strings.Split(w.Pre, ".")
	for i := 0; i < len(a) && i < len(b); i++ {
		if c := cmpIdent(a[i], b[i]); c != 0 {
			return c
		}
	}
	// All shared identifiers equal: the longer list wins.
	return cmpUint(uint64(len(a)), uint64(len(b)))
}

// cmpIdent orders two pre-release identifiers: numeric ones numerically and
// below alphanumeric ones, alphanumeric ones by ASCII.
func cmpIdent(a, b string) int {
	an, bn := allDigits(a), allDigits(b)
	switch {
	case an && bn:
		// No leading zeros, so the longer number is the larger, whatever its size.
		if c := cmpUint(uint64(len(a)), uint64(len(b))); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	case an:
		return -1
	case bn:
		return 1
	}
	return strings.Compare(a, b)
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Compare parses a and b and returns -1, 0 or +1 as a has lower, equal or
// higher precedence than b.
func Compare(a, b string) (int, error) {
	va, err := Parse(a)
	if err != nil {
		return 0, err
	}
	vb, err := Parse(b)
	if err != nil {
		return 0, err
	}
	return va.Compare(vb), nil
}
