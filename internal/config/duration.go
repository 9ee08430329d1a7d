package config

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/goccy/go-yaml/ast"
)

// Duration is a time.Duration written as a Go duration string ("90s", "1h")
// in YAML and JSON, so a config file never holds bare nanosecond counts.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String returns the Go duration string, such as "1h0m0s".
func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML decodes a duration string. It takes the YAML node rather than
// bytes so that a bad value is reported with its key path and line.
func (d *Duration) UnmarshalYAML(node ast.Node) error {
	s, ok := node.(*ast.StringNode)
	if !ok {
		got := "null"
		if node != nil {
			got = node.String()
		}
		return nodeError(node, fmt.Errorf("want a duration such as \"30s\" or \"1h\", got %s", got))
	}
	v, err := time.ParseDuration(s.Value)
	if err != nil {
		return nodeError(node, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as its Go duration string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// UnmarshalText parses a Go duration string (flags, environment, JSON keys).
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// MarshalJSON writes the duration as a JSON string such as "1h0m0s", the
// shape the REST facade shows.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads the JSON string form written by MarshalJSON, so a
// settings update through the REST facade round-trips.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"1h\": %w", err)
	}
	return d.UnmarshalText([]byte(s))
}
