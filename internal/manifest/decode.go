package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"
)

// Every key a manifest may hold, at whatever level. checkJSON refuses any
// other key before encoding/json sees it: encoding/json matches keys to fields
// case-insensitively (and with Unicode folding: "ſerial" is "serial"), so
// without this a "Version" key would silently set Version.
var manifestKeys = keySet("schema", "product", "channel", "version", "serial", "releasedAt",
	"expiresAt", "minVersion", "releaseNotes", "components", "image",
	"name", "artifact", "sha256", "size", "rawSize", "rawSha256")

var envelopeKeys = keySet("signed", "signatures", "keyId", "sig")

func keySet(keys ...string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// Depth of the deepest value of each document: object, array, object.
const maxDepth = 3

// MaxSignatures bounds the signatures of an envelope, and so the work of Verify.
const MaxSignatures = 32

// Decode strictly decodes and validates a manifest: input over MaxSize,
// malformed JSON, invalid UTF-8, unknown fields, duplicate keys at any level,
// keys that differ from the contract's only in case, and trailing data are
// refused before Validate runs.
func Decode(data []byte) (*Manifest, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("manifest: %d bytes, limit %d: %w", len(data), MaxSize, ErrTooLarge)
	}
	var m Manifest
	if err := decodeStrict(data, "manifest", manifestKeys, &m); err != nil {
		return nil, err
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// DecodeSigned strictly decodes a signed envelope,
// {"signed": base64, "signatures": [{"keyId", "sig"}]}, without checking any
// signature. The input is capped at 2*MaxSize, the decoded manifest bytes at
// MaxSize and the signatures at MaxSignatures.
func DecodeSigned(data []byte) (*Signed, error) {
	if len(data) > 2*MaxSize {
		return nil, fmt.Errorf("manifest: signed envelope: %d bytes, limit %d: %w", len(data), 2*MaxSize, ErrTooLarge)
	}
	var s Signed
	if err := decodeStrict(data, "manifest: signed envelope", envelopeKeys, &s); err != nil {
		return nil, err
	}
	switch {
	case len(s.Signed) == 0:
		return nil, fmt.Errorf("manifest: signed envelope: no signed manifest bytes: %w", ErrMalformed)
	case len(s.Signed) > MaxSize:
		return nil, fmt.Errorf("manifest: signed envelope: manifest of %d bytes, limit %d: %w", len(s.Signed), MaxSize, ErrTooLarge)
	case len(s.Signatures) > MaxSignatures:
		return nil, fmt.Errorf("manifest: signed envelope: %d signatures, limit %d: %w", len(s.Signatures), MaxSignatures, ErrMalformed)
	}
	return &s, nil
}

// decodeStrict checks data with checkJSON, then decodes it into v refusing
// unknown fields. Its errors start with what.
func decodeStrict(data []byte, what string, keys map[string]bool, v any) error {
	if err := checkJSON(data, keys); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w: %w", what, err, ErrMalformed)
	}
	if _, err := dec.Token(); err != io.EOF {
		// checkJSON has seen the whole input, so this is only a safety net.
		return fmt.Errorf("%s: data after the JSON object: %w", what, ErrMalformed)
	}
	return nil
}

// frame is one open object or array during checkJSON's walk.
type frame struct {
	object bool
	keys   map[string]bool // keys seen so far (objects)
	key    string          // the last key read (objects)
	inKey  bool            // an object expecting a key rather than a value
	index  int             // index of the current element (arrays)
	path   string          // where this container sits
}

// checkJSON walks data token by token and refuses what encoding/json would let
// through silently: duplicate keys (it keeps the last), keys outside allowed,
// invalid UTF-8 (it substitutes U+FFFD), nesting deeper than maxDepth, and
// anything after the top-level value, which must be an object. The walk is
// iterative, so hostile nesting costs no stack.
func checkJSON(data []byte, allowed map[string]bool) error {
	if !utf8.Valid(data) {
		return fmt.Errorf("invalid UTF-8: %w", ErrMalformed)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var stack []*frame
	started := false
	for {
		tok, err := dec.Token()
		switch {
		case err == io.EOF && !started:
			return fmt.Errorf("empty input: %w", ErrMalformed)
		case err == io.EOF && len(stack) > 0:
			return fmt.Errorf("unexpected end of JSON input: %w", ErrMalformed)
		case err == io.EOF:
			return nil
		case err != nil:
			return fmt.Errorf("%w: %w", err, ErrMalformed)
		}
		if len(stack) == 0 {
			if started {
				return fmt.Errorf("data after the JSON object: %w", ErrMalformed)
			}
			if tok != json.Delim('{') {
				return fmt.Errorf("top-level value is not an object: %w", ErrMalformed)
			}
			started = true
			stack = append(stack, &frame{object: true, keys: make(map[string]bool), inKey: true})
			continue
		}
		top := stack[len(stack)-1]
		if top.object && top.inKey {
			// Token yields only a string key or '}' here.
			if tok == json.Delim('}') {
				stack = valueDone(stack[:len(stack)-1])
				continue
			}
			k, _ := tok.(string)
			top.key = k
			if !allowed[k] {
				return fmt.Errorf("unknown field %q: %w", clip(valuePath(top)), ErrMalformed)
			}
			if top.keys[k] {
				return fmt.Errorf("key %q appears twice: %w", clip(valuePath(top)), ErrDuplicateKey)
			}
			top.keys[k] = true
			top.inKey = false
			continue
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if len(stack) >= maxDepth {
				return fmt.Errorf("%q: nested deeper than %d levels: %w", clip(valuePath(top)), maxDepth, ErrMalformed)
			}
			f := &frame{object: tok == json.Delim('{'), path: valuePath(top)}
			if f.object {
				f.keys = make(map[string]bool)
				f.inKey = true
			}
			stack = append(stack, f)
		case json.Delim(']'):
			stack = valueDone(stack[:len(stack)-1])
		default:
			stack = valueDone(stack)
		}
	}
}

// valueDone records that a value of the innermost open container ended.
func valueDone(stack []*frame) []*frame {
	if len(stack) > 0 {
		top := stack[len(stack)-1]
		if top.object {
			top.inKey = true
		} else {
			top.index++
		}
	}
	return stack
}

// valuePath names the value f expects next, for error messages:
// "components[1].sha256".
func valuePath(f *frame) string {
	if !f.object {
		return f.path + "[" + strconv.Itoa(f.index) + "]"
	}
	if f.path == "" {
		return f.key
	}
	return f.path + "." + f.key
}
