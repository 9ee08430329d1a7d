package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func sampleJSON(t testing.TB) []byte {
	t.Helper()
	b, err := json.Marshal(sample())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// splice replaces the first occurrence of old in the sample's JSON.
func splice(t testing.TB, old, new string) []byte {
	t.Helper()
	b := sampleJSON(t)
	if !bytes.Contains(b, []byte(old)) {
		t.Fatalf("sample JSON has no %q: %s", old, b)
	}
	return bytes.Replace(b, []byte(old), []byte(new), 1)
}

func TestDecode(t *testing.T) {
	m, err := Decode(sampleJSON(t))
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != "0.0.6" || m.Serial != 12 || len(m.Components) != 2 || m.Image == nil ||
		m.Image.RawSize != 789 || !m.ReleasedAt.Equal(t0) || m.Components[1].Name != "qx-console" {
		t.Errorf("Decode = %+v", m)
	}
	// White space around the object is fine.
	if _, err := Decode(append(append([]byte(" \n"), sampleJSON(t)...), "\n\t "...)); err != nil {
		t.Errorf("with white space: %v", err)
	}
	// The contract's own example, with a real hash, decodes.
	doc := `{ "schema": 1, "product": "quantix-os", "channel": "dev", "version": "0.0.6",
  "serial": 12, "releasedAt": "2025-11-01T12:00:00Z", "expiresAt": "2026-01-30T12:00:00+01:00", "minVersion": "0.0.3",
  "releaseNotes": "...",
  "components": [ { "name": "qx-node", "version": "0.0.6",
                    "artifact": "releases/0.0.6/qx-node-0.0.6.tar.zst",
                    "sha256": "` + sumA + `", "size": 123, "rawSize": 456 } ],
  "image": { "artifact": "releases/0.0.6/quantix-os-0.0.6.img.zst", "sha256": "` + sumA + `",
             "size": 456, "rawSha256": "` + sumB + `", "rawSize": 789 } }`
	if _, err := Decode([]byte(doc)); err != nil {
		t.Errorf("contract example: %v", err)
	}
}

func TestDecodeRefuses(t *testing.T) {
	tests := []struct {
		name string
		data func(t testing.TB) []byte
		is   error
		want string
	}{
		{"empty", func(testing.TB) []byte { return nil }, ErrMalformed, "empty input"},
		{"blank", func(testing.TB) []byte { return []byte(" \n") }, ErrMalformed, "empty input"},
		{"too large", func(testing.TB) []byte { return bytes.Repeat([]byte(" "), MaxSize+1) }, ErrTooLarge, "limit 1048576"},
		{"not JSON", func(testing.TB) []byte { return []byte("hello") }, ErrMalformed, "invalid character"},
		{"truncated", func(t testing.TB) []byte { b := sampleJSON(t); return b[:len(b)-5] }, ErrMalformed, "unexpected end"},
		{"array", func(testing.TB) []byte { return []byte(`[1]`) }, ErrMalformed, "not an object"},
		{"null", func(testing.TB) []byte { return []byte(`null`) }, ErrMalformed, "not an object"},
		{"trailing object", func(t testing.TB) []byte { return append(sampleJSON(t), "{}"...) }, ErrMalformed, "data after"},
		{"trailing garbage", func(t testing.TB) []byte { return append(sampleJSON(t), " x"...) }, ErrMalformed, "invalid character"},
		{"invalid UTF-8", func(t testing.TB) []byte { return splice(t, `"notes"`, "\"n\xffo\"") }, ErrMalformed, "UTF-8"},
		{"unknown top field", func(t testing.TB) []byte { return splice(t, `{"schema"`, `{"extra":1,"schema"`) }, ErrMalformed, `unknown field "extra"`},
		{"known key at wrong level", func(t testing.TB) []byte { return splice(t, `{"schema"`, `{"size":1,"schema"`) }, ErrMalformed, `unknown field "size"`},
		{"unknown component field", func(t testing.TB) []byte { return splice(t, `{"name"`, `{"mode":1,"name"`) }, ErrMalformed, `unknown field "components[0].mode"`},
		{"case variant", func(t testing.TB) []byte { return splice(t, `"version":"0.0.6"`, `"Version":"0.0.6"`) }, ErrMalformed, `unknown field "Version"`},
		{"unicode fold", func(t testing.TB) []byte { return splice(t, `"serial"`, `"ſerial"`) }, ErrMalformed, `unknown field "ſerial"`},
		{"duplicate top", func(t testing.TB) []byte { return splice(t, `"serial":12`, `"serial":12,"serial":99`) }, ErrDuplicateKey, `key "serial" appears twice`},
		{"duplicate escaped", func(t testing.TB) []byte { return splice(t, `"serial":12`, `"serial":12,"\u0073erial":99`) }, ErrDuplicateKey, `"serial"`},
		{"duplicate in component", func(t testing.TB) []byte {
			return splice(t, `"sha256":"`+sumB+`"`, `"sha256":"`+sumB+`","sha256":"`+sumA+`"`)
		}, ErrDuplicateKey, `key "components[1].sha256" appears twice`},
		{"duplicate in image", func(t testing.TB) []byte { return splice(t, `"rawSize":789`, `"rawSize":789,"rawSize":1`) }, ErrDuplicateKey, `"image.rawSize"`},
		{"deep", func(t testing.TB) []byte { return splice(t, `"components":[`, `"components":[[[`) }, ErrMalformed, "nested deeper"},
		{"deep nesting bomb", func(t testing.TB) []byte { return []byte(`{"components":` + strings.Repeat("[", 100000)) }, ErrMalformed, "nested deeper"},
		{"wrong type", func(t testing.TB) []byte { return splice(t, `"serial":12`, `"serial":"12"`) }, ErrMalformed, "serial"},
		{"negative serial", func(t testing.TB) []byte { return splice(t, `"serial":12`, `"serial":-1`) }, ErrMalformed, "serial"},
		{"float serial", func(t testing.TB) []byte { return splice(t, `"serial":12`, `"serial":1.5`) }, ErrMalformed, "serial"},
		{"bad time", func(t testing.TB) []byte {
			return splice(t, `"releasedAt":"2025-11-01T12:00:00Z"`, `"releasedAt":"yesterday"`)
		}, ErrMalformed, "yesterday"},
		{"invalid after decode", func(t testing.TB) []byte { return splice(t, `"serial":12`, `"serial":0`) }, ErrInvalid, "serial must be at least 1"},
		{"bad path", func(t testing.TB) []byte { return splice(t, `"releases/0.0.6/qx-node`, `"/etc/qx-node`) }, ErrBadArtifactPath, "absolute"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Decode(tt.data(t))
			if err == nil {
				t.Fatalf("Decode accepted it: %+v", m)
			}
			if !errors.Is(err, tt.is) {
				t.Errorf("Decode = %v, want %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Decode = %q, want it to say %q", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "manifest: ") || strings.Count(err.Error(), "manifest: ") > 1 {
				t.Errorf("Decode = %q, want one \"manifest: \" prefix", err)
			}
		})
	}
}

func TestDecodeSigned(t *testing.T) {
	good := `{"signed":"e30=","signatures":[{"keyId":"0011223344556677","sig":"AAAA"}]}`
	s, err := DecodeSigned([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if string(s.Signed) != "{}" || len(s.Signatures) != 1 || s.Signatures[0].KeyID != "0011223344556677" || len(s.Signatures[0].Sig) != 3 {
		t.Errorf("DecodeSigned = %+v", s)
	}
	if s, err := DecodeSigned([]byte(`{"signed":"e30="}`)); err != nil || len(s.Signatures) != 0 {
		t.Errorf("no signatures: %+v, %v; want accepted with none", s, err)
	}
	many := `{"signed":"e30=","signatures":[` + strings.TrimSuffix(strings.Repeat(`{"keyId":"a","sig":""},`, MaxSignatures+1), ",") + `]}`
	tests := []struct {
		name, data string
		is         error
		want       string
	}{
		{"no signed", `{"signatures":[]}`, ErrMalformed, "no signed manifest bytes"},
		{"empty signed", `{"signed":"","signatures":[]}`, ErrMalformed, "no signed manifest bytes"},
		{"bad base64", `{"signed":"!!","signatures":[]}`, ErrMalformed, "base64"},
		{"duplicate signed", `{"signed":"e30=","signed":"e30=","signatures":[]}`, ErrDuplicateKey, `"signed"`},
		{"duplicate keyId", `{"signed":"e30=","signatures":[{"keyId":"a","keyId":"b","sig":""}]}`, ErrDuplicateKey, `"signatures[0].keyId"`},
		{"unknown", `{"signed":"e30=","signatures":[],"note":1}`, ErrMalformed, `unknown field "note"`},
		{"case variant", `{"Signed":"e30=","signatures":[]}`, ErrMalformed, `unknown field "Signed"`},
		{"trailing", `{"signed":"e30=","signatures":[]} {}`, ErrMalformed, "data after"},
		{"too many signatures", many, ErrMalformed, "33 signatures, limit 32"},
		{"too large", `{"signed":"` + strings.Repeat("A", 2*MaxSize) + `"}`, ErrTooLarge, "limit 2097152"},
		{"signed too large", `{"signed":"` + strings.Repeat("A", MaxSize/3*4+8) + `"}`, ErrTooLarge, "manifest of 1048581 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeSigned([]byte(tt.data))
			if !errors.Is(err, tt.is) {
				t.Fatalf("DecodeSigned = %v, want %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("DecodeSigned = %q, want it to say %q", err, tt.want)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(sampleJSON(f))
	f.Add(splice(f, `"serial":12`, `"serial":12,"serial":13`))
	f.Add([]byte(`{"schema":1}`))
	f.Add([]byte(`{"components":[{"name":"a"}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Decode(data)
		if err != nil {
			if m != nil {
				t.Fatal("Decode returned a manifest with an error")
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("accepted manifest does not validate: %v", err)
		}
		// What was accepted survives a round trip unchanged.
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := Decode(b)
		if err != nil {
			t.Fatalf("re-encoded manifest refused: %v\n%s", err, b)
		}
		b2, _ := json.Marshal(m2)
		if !bytes.Equal(b, b2) {
			t.Fatalf("round trip changed the manifest:\n%s\n%s", b, b2)
		}
	})
}
