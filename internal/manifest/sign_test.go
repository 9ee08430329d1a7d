package manifest

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// seedKey derives a deterministic key so fuzz seeds stay valid between runs.
func seedKey(b byte) (ed25519.PublicKey, ed25519.PrivateKey) {
	k := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize))
	return k.Public().(ed25519.PublicKey), k
}

func TestKeyID(t *testing.T) {
	// sha256 of 32 zero bytes begins 66687aadf862bd77.
	if got := KeyID(make(ed25519.PublicKey, 32)); got != "66687aadf862bd77" {
		t.Errorf("KeyID(zero key) = %q", got)
	}
	pub, _ := seedKey(1)
	if id := KeyID(pub); len(id) != 16 || strings.ToLower(id) != id {
		t.Errorf("KeyID = %q, want 16 lowercase hex digits", id)
	}
}

func TestPublicKeyEncoding(t *testing.T) {
	pub, _ := seedKey(1)
	s := EncodePublicKey(pub)
	if len(s) != 44 || !strings.HasSuffix(s, "=") {
		t.Errorf("EncodePublicKey = %q, want 44 characters of standard base64", s)
	}
	for _, in := range []string{s, s + "\n", "  " + s + "\r\n"} {
		got, err := ParsePublicKey(in)
		if err != nil {
			t.Fatalf("ParsePublicKey(%q): %v", in, err)
		}
		if !got.Equal(pub) {
			t.Errorf("ParsePublicKey(%q) = %x, want %x", in, got, pub)
		}
	}
	bad := []struct{ in, want string }{
		{"", "0 bytes, want 32"},
		{"not base64!", "not standard base64"},
		{base64.RawURLEncoding.EncodeToString(pub), "not standard base64"},
		{base64.StdEncoding.EncodeToString(pub[:31]), "31 bytes, want 32"},
		{base64.StdEncoding.EncodeToString(append(pub, 0)), "33 bytes, want 32"},
	}
	for _, tt := range bad {
		_, err := ParsePublicKey(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParsePublicKey(%q) = %v, want it to say %q", tt.in, err, tt.want)
		}
	}
}

func TestSignVerify(t *testing.T) {
	pub1, key1 := seedKey(1)
	pub2, key2 := seedKey(2)
	pub3, _ := seedKey(3)
	raw := sampleJSON(t)
	env, err := Sign(raw, key1, key2)
	if err != nil {
		t.Fatal(err)
	}
	s, err := DecodeSigned(env)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Signatures) != 2 || s.Signatures[0].KeyID != KeyID(pub1) || s.Signatures[1].KeyID != KeyID(pub2) {
		t.Fatalf("signatures = %+v", s.Signatures)
	}
	if !bytes.Equal(s.Signed, raw) {
		t.Fatal("envelope does not carry the exact manifest bytes")
	}

	// The verifier knows only one of the two signers (the other is unknown
	// to it), or knows both, or knows an extra key that signed nothing.
	for _, keys := range [][]ed25519.PublicKey{{pub1}, {pub2}, {pub3, pub2}, {pub1, pub2}} {
		m, got, err := Verify(env, keys)
		if err != nil {
			t.Fatalf("Verify with %d keys: %v", len(keys), err)
		}
		if !bytes.Equal(got, raw) || m.Serial != 12 || m.Channel != "dev" {
			t.Errorf("Verify = %+v, %q", m, got)
		}
	}

	_, _, err = Verify(env, []ed25519.PublicKey{pub3})
	if !errors.Is(err, ErrNoValidSignature) || !strings.Contains(err.Error(), "no signature is by a configured key") ||
		!strings.Contains(err.Error(), KeyID(pub3)) {
		t.Errorf("unknown key: %v", err)
	}
	if _, _, err := Verify(env, nil); !errors.Is(err, ErrNoValidSignature) {
		t.Errorf("no keys: %v, want ErrNoValidSignature", err)
	}
	if _, _, err := Verify(env, []ed25519.PublicKey{pub1[:31]}); err == nil || !strings.Contains(err.Error(), "31 bytes") {
		t.Errorf("short configured key: %v", err)
	}
}

// reenvelope builds an envelope by hand.
func reenvelope(t *testing.T, signed []byte, sigs ...Signature) []byte {
	t.Helper()
	b, err := json.Marshal(Signed{Signed: signed, Signatures: sigs})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVerifyRefuses(t *testing.T) {
	pub1, key1 := seedKey(1)
	pub2, key2 := seedKey(2)
	raw := sampleJSON(t)
	sig1 := Signature{KeyID: KeyID(pub1), Sig: ed25519.Sign(key1, raw)}
	tampered := bytes.Replace(raw, []byte(`"serial":12`), []byte(`"serial":13`), 1)
	flipped := bytes.Clone(sig1.Sig)
	flipped[10] ^= 1
	invalid := bytes.Replace(raw, []byte(`"schema":1`), []byte(`"schema":7`), 1)
	dup := bytes.Replace(raw, []byte(`"serial":12`), []byte(`"serial":12,"serial":99`), 1)

	tests := []struct {
		name string
		env  []byte
		is   error
		want string
	}{
		{"no signatures", reenvelope(t, raw), ErrNoValidSignature, "envelope has no signatures"},
		{"tampered bytes", reenvelope(t, tampered, sig1), ErrNoValidSignature, "does not match the manifest bytes"},
		{"flipped signature", reenvelope(t, raw, Signature{KeyID: sig1.KeyID, Sig: flipped}), ErrNoValidSignature, "does not match"},
		{"short signature", reenvelope(t, raw, Signature{KeyID: sig1.KeyID, Sig: sig1.Sig[:10]}), ErrNoValidSignature, "does not match"},
		{"known keyId, other key's signature", reenvelope(t, raw, Signature{KeyID: sig1.KeyID, Sig: ed25519.Sign(key2, raw)}), ErrNoValidSignature, "does not match"},
		{"valid signature under an unknown keyId", reenvelope(t, raw, Signature{KeyID: KeyID(pub2), Sig: sig1.Sig}), ErrNoValidSignature, "no signature is by a configured key"},
		{"upper-case keyId", reenvelope(t, raw, Signature{KeyID: strings.ToUpper(sig1.KeyID), Sig: sig1.Sig}), ErrNoValidSignature, "no signature is by"},
		{"signed but invalid", reenvelope(t, invalid, Signature{KeyID: sig1.KeyID, Sig: ed25519.Sign(key1, invalid)}), ErrInvalid, "schema 7"},
		{"signed but duplicate key", reenvelope(t, dup, Signature{KeyID: sig1.KeyID, Sig: ed25519.Sign(key1, dup)}), ErrDuplicateKey, `"serial"`},
		{"not an envelope", raw, ErrMalformed, "unknown field"},
		{"garbage", []byte("\x00\x01"), ErrMalformed, "invalid character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, got, err := Verify(tt.env, []ed25519.PublicKey{pub1})
			if err == nil {
				t.Fatalf("Verify accepted: %+v", m)
			}
			if m != nil || got != nil {
				t.Error("Verify returned a manifest with an error")
			}
			if !errors.Is(err, tt.is) {
				t.Errorf("Verify = %v, want %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Verify = %q, want it to say %q", err, tt.want)
			}
		})
	}

	// One bad signature does not spoil a good one after it.
	env := reenvelope(t, raw, Signature{KeyID: sig1.KeyID, Sig: flipped}, sig1)
	if _, _, err := Verify(env, []ed25519.PublicKey{pub1}); err != nil {
		t.Errorf("bad then good signature: %v", err)
	}
}

func TestSignRefuses(t *testing.T) {
	_, key1 := seedKey(1)
	raw := sampleJSON(t)
	tests := []struct {
		name string
		data []byte
		keys []ed25519.PrivateKey
		want string
	}{
		{"no key", raw, nil, "no signing key"},
		{"short key", raw, []ed25519.PrivateKey{key1[:32]}, "key 0 is 32 bytes"},
		{"same key twice", raw, []ed25519.PrivateKey{key1, key1}, "given twice"},
		{"invalid manifest", bytes.Replace(raw, []byte(`"serial":12`), []byte(`"serial":0`), 1), []ed25519.PrivateKey{key1}, "serial must be at least 1"},
		{"not JSON", []byte("{"), []ed25519.PrivateKey{key1}, "unexpected end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := Sign(tt.data, tt.keys...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Sign = %s, %v; want an error saying %q", env, err, tt.want)
			}
		})
	}
}

func FuzzVerify(f *testing.F) {
	pub1, key1 := seedKey(1)
	_, key2 := seedKey(2)
	raw := sampleJSON(f)
	for _, keys := range [][]ed25519.PrivateKey{{key1}, {key2}, {key2, key1}} {
		env, err := Sign(raw, keys...)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(env)
	}
	f.Add([]byte(`{"signed":"e30=","signatures":[{"keyId":"` + KeyID(pub1) + `","sig":"AAAA"}]}`))
	f.Add([]byte(`{"signed":"e30=","signed":"e30="}`))
	keys := []ed25519.PublicKey{pub1}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, got, err := Verify(data, keys)
		if err != nil {
			if m != nil || got != nil {
				t.Fatal("Verify returned a manifest with an error")
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("accepted manifest does not validate: %v", err)
		}
		m2, err := Decode(got)
		if err != nil {
			t.Fatalf("accepted raw bytes do not decode: %v", err)
		}
		a, _ := json.Marshal(m)
		b, _ := json.Marshal(m2)
		if !bytes.Equal(a, b) {
			t.Fatal("returned manifest differs from its raw bytes")
		}
	})
}
