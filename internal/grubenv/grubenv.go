// Package grubenv reads and writes the GRUB environment block: the 1024-byte
// "# GRUB Environment Block" file that GRUB's load_env/save_env and
// grub-editenv use. The A/B boot rule keeps its state there (qx_slot,
// qx_try_slot, qx_tries), so the agent edits it natively, byte-compatible with
// grub-core/lib/envblk.c:
//
//   - the block starts with the signature line, then one "name=value\n" line
//     per variable, in insertion order, then '#' padding to exactly 1024 bytes;
//   - in values, '\\' and '\n' are written with a backslash before them (so a
//     newline is stored as a backslash followed by a real newline), and on
//     reading a backslash makes the next byte literal, as GRUB does;
//   - lines starting with '#' are comments (grub-editenv create writes a
//     "# WARNING" line); they are skipped on reading and not written back.
package grubenv

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/quantix-os/update-agent/internal/journal"
)

// Size is the size of a GRUB environment block, as grub-editenv creates it.
const Size = 1024

// Signature is the first line of every environment block.
const Signature = "# GRUB Environment Block\n"

var (
	// ErrFormat: the bytes are not a well-formed environment block, or a
	// variable cannot be stored in one (bad name, NUL byte).
	ErrFormat = errors.New("malformed GRUB environment block")
	// ErrTooLarge: the variables do not fit in Size bytes.
	ErrTooLarge = errors.New("GRUB environment block overflow")
)

// Env is an ordered set of variables. The zero value is an empty Env.
// It is not safe for concurrent use.
type Env struct {
	keys []string
	vals map[string]string
}

// New returns an empty Env.
func New() *Env { return &Env{} }

// Get returns the value of k and whether it is set.
func (e *Env) Get(k string) (string, bool) {
	v, ok := e.vals[k]
	return v, ok
}

// Set sets k to v. A new variable goes last; an existing one keeps its place,
// as grub_envblk_set does. Names are checked by Bytes.
func (e *Env) Set(k, v string) {
	if e.vals == nil {
		e.vals = make(map[string]string)
	}
	if _, ok := e.vals[k]; !ok {
		e.keys = append(e.keys, k)
	}
	e.vals[k] = v
}

// Unset removes k; removing a variable that is not set does nothing.
func (e *Env) Unset(k string) {
	if _, ok := e.vals[k]; !ok {
		return
	}
	delete(e.vals, k)
	e.keys = slices.DeleteFunc(e.keys, func(s string) bool { return s == k })
}

// Keys returns the variable names in block order.
func (e *Env) Keys() []string { return slices.Clone(e.keys) }

// checkName reports why name cannot be a variable name in a block that GRUB
// parses back to the same variable: envblk.c ends a name at the first '=',
// treats a line starting with '#' as a comment, and works on C strings.
func checkName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty variable name", ErrFormat)
	case name[0] == '#':
		return fmt.Errorf("%w: variable name %q starts with '#'", ErrFormat, name)
	case strings.ContainsAny(name, "=\n\\\x00"):
		return fmt.Errorf("%w: variable name %q contains '=', '\\\\', a newline or NUL", ErrFormat, name)
	}
	return nil
}

// Bytes encodes e as a Size-byte block. It fails with ErrFormat for a name or
// value that cannot be stored, and ErrTooLarge when the variables do not fit.
func (e *Env) Bytes() ([]byte, error) {
	var b bytes.Buffer
	b.Grow(Size)
	b.WriteString(Signature)
	for _, k := range e.keys {
		if err := checkName(k); err != nil {
			return nil, err
		}
		v := e.vals[k]
		if strings.IndexByte(v, 0) >= 0 {
			return nil, fmt.Errorf("%w: value of %s contains NUL", ErrFormat, k)
		}
		b.WriteString(k)
		b.WriteByte('=')
		for i := 0; i < len(v); i++ {
			if v[i] == '\\' || v[i] == '\n' {
				b.WriteByte('\\')
			}
			b.WriteByte(v[i])
		}
		b.WriteByte('\n')
	}
	if b.Len() > Size {
		return nil, fmt.Errorf("%w: %d variables need %d bytes, the block holds %d", ErrTooLarge, len(e.keys), b.Len(), Size)
	}
	out := b.Bytes()
	for len(out) < Size {
		out = append(out, '#')
	}
	return out, nil
}

// Parse decodes a block. It is strict: exactly Size bytes, the signature,
// then "name=value\n" lines and '#' comment lines, then only '#' padding.
// Duplicate names and NUL bytes are refused.
func Parse(b []byte) (*Env, error) {
	if len(b) != Size {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrFormat, len(b), Size)
	}
	if !bytes.HasPrefix(b, []byte(Signature)) {
		return nil, fmt.Errorf("%w: missing %q signature", ErrFormat, strings.TrimSuffix(Signature, "\n"))
	}
	e := New()
	p := len(Signature)
	for p < len(b) {
		if b[p] == '#' {
			end := lineEnd(b, p)
			if end >= len(b) {
				// Padding runs to the end; GRUB only ever pads with '#'.
				for i := p; i < len(b); i++ {
					if b[i] != '#' {
						return nil, fmt.Errorf("%w: byte %d: padding contains %q", ErrFormat, i, b[i])
					}
				}
				break
			}
			p = end + 1 // a comment line
			continue
		}
		line := p
		eq := bytes.IndexByte(b[p:], '=')
		if nl := bytes.IndexByte(b[p:], '\n'); eq < 0 || (nl >= 0 && nl < eq) {
			return nil, fmt.Errorf("%w: byte %d: line without '='", ErrFormat, line)
		}
		name := string(b[p : p+eq])
		if err := checkName(name); err != nil {
			return nil, fmt.Errorf("byte %d: %w", line, err)
		}
		if _, dup := e.vals[name]; dup {
			return nil, fmt.Errorf("%w: byte %d: variable %s set twice", ErrFormat, line, name)
		}
		p += eq + 1
		var v []byte
		for {
			if p >= len(b) {
				return nil, fmt.Errorf("%w: byte %d: variable %s not terminated by a newline", ErrFormat, line, name)
			}
			c := b[p]
			if c == '\n' {
				p++
				break
			}
			if c == '\\' {
				// As envblk.c: the next byte, whatever it is, is literal.
				p++
				if p >= len(b) {
					return nil, fmt.Errorf("%w: byte %d: variable %s ends in a lone backslash", ErrFormat, line, name)
				}
				c = b[p]
			}
			if c == 0 {
				return nil, fmt.Errorf("%w: byte %d: NUL in the value of %s", ErrFormat, p, name)
			}
			v = append(v, c)
			p++
		}
		e.Set(name, string(v))
	}
	return e, nil
}

// lineEnd returns the index of the newline ending the line that starts at p,
// or len(b) when there is none. Like find_next_line in envblk.c it skips the
// byte after a backslash, in comments too, so both parsers agree on where
// every line starts.
func lineEnd(b []byte, p int) int {
	for p < len(b) {
		switch b[p] {
		case '\\':
			p += 2
		case '\n':
			return p
		default:
			p++
		}
	}
	return len(b)
}

// Read reads and parses the block at path.
func Read(path string) (*Env, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read grub env %s: %w", path, err)
	}
	defer f.Close()
	// One byte past Size is enough to tell a file that is too long.
	b, err := io.ReadAll(io.LimitReader(f, Size+1))
	if err != nil {
		return nil, fmt.Errorf("read grub env %s: %w", path, err)
	}
	e, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("read grub env %s: %w", path, err)
	}
	return e, nil
}

// Write replaces the block at path atomically (temp file, fsync, rename,
// fsync of the directory), so a crash leaves the old or the new block, never
// a torn one that GRUB would refuse.
func Write(path string, e *Env) error {
	b, err := e.Bytes()
	if err != nil {
		return fmt.Errorf("write grub env %s: %w", path, err)
	}
	if err := journal.WriteFileAtomic(path, b, 0o644); err != nil {
		return fmt.Errorf("write grub env: %w", err)
	}
	return nil
}

// Update reads the block at path (a missing file is an empty Env), calls fn
// and writes the result. When fn fails nothing is written. Update does not
// lock: one process (the agent, or the boot simulator) owns the file.
func Update(path string, fn func(*Env) error) error {
	e, err := Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		e, err = New(), nil
	}
	if err != nil {
		return err
	}
	if err := fn(e); err != nil {
		return fmt.Errorf("update grub env %s: %w", path, err)
	}
	return Write(path, e)
}
