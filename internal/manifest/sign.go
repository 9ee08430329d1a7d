package manifest

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Signed is the signed envelope the Update Server serves:
// {"signed": base64(manifest bytes), "signatures": [{"keyId", "sig"}]}.
// Signatures are ed25519 over exactly the decoded Signed bytes, so the
// manifest is verified as bytes and parsed only after.
type Signed struct {
	Signed     []byte      `json:"signed"` // standard base64 in JSON
	Signatures []Signature `json:"signatures"`
}

// Signature is one ed25519 signature and the id of the key that made it.
type Signature struct {
	KeyID string `json:"keyId"`
	Sig   []byte `json:"sig"` // standard base64 in JSON
}

// KeyID is the lowercase hex of the first 8 bytes of SHA-256 over the raw
// 32-byte public key.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// EncodePublicKey writes pub as standard base64 of its raw 32 bytes, the form
// update.pub and the agent's updates.publicKeys hold.
func EncodePublicKey(pub ed25519.PublicKey) string {
	return base64.StdEncoding.EncodeToString(pub)
}

// ParsePublicKey reads a key written by EncodePublicKey; surrounding white
// space (a file's trailing newline) is ignored.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimSpace(s)
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("manifest: public key %q: not standard base64: %w", clip(s), err)
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("manifest: public key %q: %d bytes, want %d", clip(s), len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// Sign signs manifestJSON with every key and returns the envelope JSON.
// The bytes are signed as given, after checking that Decode accepts them, so
// a release tool cannot publish a manifest every agent would refuse.
func Sign(manifestJSON []byte, keys ...ed25519.PrivateKey) ([]byte, error) {
	if len(keys) == 0 {
		return nil, errors.New("manifest: sign: no signing key")
	}
	if _, err := Decode(manifestJSON); err != nil {
		return nil, fmt.Errorf("manifest: sign: %w", err)
	}
	env := Signed{Signed: manifestJSON}
	seen := make(map[string]bool, len(keys))
	for i, k := range keys {
		if len(k) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("manifest: sign: key %d is %d bytes, want %d", i, len(k), ed25519.PrivateKeySize)
		}
		id := KeyID(k.Public().(ed25519.PublicKey))
		if seen[id] {
			return nil, fmt.Errorf("manifest: sign: key %d (keyId %s) given twice", i, id)
		}
		seen[id] = true
		env.Signatures = append(env.Signatures, Signature{KeyID: id, Sig: ed25519.Sign(k, manifestJSON)})
	}
	b, err := json.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("manifest: sign: %w", err)
	}
	return append(b, '\n'), nil
}

// Verify decodes a signed envelope, requires at least one valid signature by
// one of keys over exactly the signed bytes, and then decodes those bytes
// with Decode. Signatures by unknown keyIds are ignored, as are bad ones by a
// known keyId; with no valid one the error wraps ErrNoValidSignature. It
// returns the manifest and its raw bytes. Verify checks no policy: see
// Policy.Check.
func Verify(data []byte, keys []ed25519.PublicKey) (*Manifest, []byte, error) {
	if len(keys) == 0 {
		return nil, nil, fmt.Errorf("manifest: verify: no public key configured: %w", ErrNoValidSignature)
	}
	ids := make([]string, len(keys))
	for i, k := range keys {
		// ed25519.Verify panics on a short key.
		if len(k) != ed25519.PublicKeySize {
			return nil, nil, fmt.Errorf("manifest: verify: configured public key %d is %d bytes, want %d", i, len(k), ed25519.PublicKeySize)
		}
		ids[i] = KeyID(k)
	}
	env, err := DecodeSigned(data)
	if err != nil {
		return nil, nil, err
	}
	if !anyValid(env, keys, ids) {
		return nil, nil, fmt.Errorf("manifest: %s: %w", describe(env, ids), ErrNoValidSignature)
	}
	m, err := Decode(env.Signed)
	if err != nil {
		return nil, nil, err
	}
	return m, env.Signed, nil
}

func anyValid(env *Signed, keys []ed25519.PublicKey, ids []string) bool {
	for _, s := range env.Signatures {
		for i, k := range keys {
			if ids[i] == s.KeyID && ed25519.Verify(k, env.Signed, s.Sig) {
				return true
			}
		}
	}
	return false
}

// describe says why no signature was valid, naming keyIds so that an operator
// can tell a wrong key from a tampered manifest.
func describe(env *Signed, ids []string) string {
	if len(env.Signatures) == 0 {
		return "envelope has no signatures"
	}
	var got []string
	known := false
	for _, s := range env.Signatures {
		got = append(got, fmt.Sprintf("%q", clip(s.KeyID)))
		for _, id := range ids {
			known = known || id == s.KeyID
		}
		if len(got) == 4 {
			got = append(got, "...")
			break
		}
	}
	why := "no signature is by a configured key"
	if known {
		why = "signature by a configured key does not match the manifest bytes"
	}
	return fmt.Sprintf("%s (signed by keyIds %s; configured keyIds %s)", why, strings.Join(got, ", "), strings.Join(ids, ", "))
}
