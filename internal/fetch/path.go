package fetch

import (
	"fmt"
	"strings"
)

// maxArtifactPath bounds an artifact path; real ones are a few dozen bytes.
const maxArtifactPath = 1024

// ArtifactURL resolves a manifest artifact path such as
// "releases/0.0.6/qx-node-0.0.6.tar.zst" against {server}/api/v1/quantix-os/.
//
// The path comes from a manifest, so it is checked against a whitelist rather
// than escaped: slash-separated non-empty segments of A-Z a-z 0-9 and
// . _ - ~ + @ = , with no "." or ".." segment. That refuses absolute paths,
// schemes, hosts, backslashes, queries, fragments and percent-escapes alike.
// A refused path gives an error wrapping ErrBadPath.
func (c *Client) ArtifactURL(artifact string) (string, error) {
	if err := checkArtifact(artifact); err != nil {
		return "", err
	}
	u := *c.base
	u.Path += artifact
	return u.String(), nil
}

func checkArtifact(p string) error {
	bad := func(why string, args ...any) error {
		return fmt.Errorf("artifact path %q: %s: %w", p, fmt.Sprintf(why, args...), ErrBadPath)
	}
	switch {
	case p == "":
		return bad("empty")
	case len(p) > maxArtifactPath:
		return bad("longer than %d bytes", maxArtifactPath)
	case strings.HasPrefix(p, "/"):
		return bad("absolute path")
	case strings.HasPrefix(p, "//"):
		return bad("has a host")
	case strings.Contains(strings.SplitN(p, "/", 2)[0], ":"):
		return bad("has a scheme")
	case strings.Contains(p, `\`):
		return bad("has a backslash")
	}
	for seg := range strings.SplitSeq(p, "/") {
		switch seg {
		case "":
			return bad("empty segment")
		case ".", "..":
			return bad("%q segment", seg)
		}
		for i := 0; i < len(seg); i++ {
			if !pathByte(seg[i]) {
				return bad("character %q not allowed", seg[i])
			}
		}
	}
	return nil
}

func pathByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("._-~+@=,", b) >= 0
}
