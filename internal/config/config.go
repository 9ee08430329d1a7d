// Package config loads and checks the node agent's YAML configuration file.
//
// Decoding is strict: a key the agent does not know is refused with its path
// and line, so a typo never silently falls back to a default. Every other
// problem is reported by Validate, all at once, each naming its key, and
// every such error wraps ErrInvalid.
//
// A minimal file needs only the node id, the Update Server URL and one public
// key; everything else has the defaults that Default returns:
//
//	nodeId: node-a
//	updates:
//	  serverUrl: http://127.0.0.1:9000
//	  publicKeys: ["<base64 of the raw 32-byte ed25519 key>"]
package config

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"github.com/goccy/go-yaml/token"
)

// ErrInvalid is wrapped by every error that reports a bad configuration
// (unknown key, malformed value, failed check).
var ErrInvalid = errors.New("invalid configuration")

// MaxSize bounds the configuration file; anything larger is not a config
// file written by hand and is refused before parsing.
const MaxSize = 1 << 20

// DefaultHealthTimeout is a component's healthTimeout when its entry leaves
// it out (map entries do not inherit from Default).
const DefaultHealthTimeout = Duration(30 * time.Second)

// Options is the whole agent configuration.
type Options struct {
	// NodeID names this host on the bus: one NATS subject token.
	NodeID     string               `yaml:"nodeId" json:"nodeId"`
	Log        Log                  `yaml:"log" json:"log"`
	NATS       NATS                 `yaml:"nats" json:"nats"`
	Updates    Updates              `yaml:"updates" json:"updates"`
	Paths      Paths                `yaml:"paths" json:"paths"`
	Components map[string]Component `yaml:"components" json:"components"`
	Services   Services             `yaml:"services" json:"services"`
	AB         AB                   `yaml:"ab" json:"ab"`
	HTTP       HTTP                 `yaml:"http" json:"http"`
}

// Log selects the log output.
type Log struct {
	Format string `yaml:"format" json:"format"` // text or json
	Level  string `yaml:"level" json:"level"`   // debug, info, warn or error
}

// NATS is the connection to the bus. An empty URL runs the agent standalone.
type NATS struct {
	URL          string `yaml:"url" json:"url"` // comma-separated server URLs
	Creds        string `yaml:"creds" json:"creds"`
	NkeySeed     string `yaml:"nkeySeed" json:"nkeySeed"`
	User         string `yaml:"user" json:"user"`
	PasswordFile string `yaml:"passwordFile" json:"passwordFile"`
	TLS          TLS    `yaml:"tls" json:"tls"`
	// Name is the connection name; Parse fills in "qx-agent-{nodeId}".
	Name string `yaml:"name" json:"name"`
}

// TLS configures the client side of a TLS connection.
type TLS struct {
	CA                 string `yaml:"ca" json:"ca"`
	Cert               string `yaml:"cert" json:"cert"`
	Key                string `yaml:"key" json:"key"`
	InsecureSkipVerify bool   `yaml:"insecureSkipVerify" json:"insecureSkipVerify"`
}

// Updates says where releases come from and when to look for them.
type Updates struct {
	ServerURL     string   `yaml:"serverUrl" json:"serverUrl"`
	Channel       string   `yaml:"channel" json:"channel"`
	AutoCheck     bool     `yaml:"autoCheck" json:"autoCheck"`
	AutoApply     bool     `yaml:"autoApply" json:"autoApply"`
	CheckInterval Duration `yaml:"checkInterval" json:"checkInterval"`
	// PublicKeys are standard base64 of raw 32-byte ed25519 keys.
	PublicKeys   []string `yaml:"publicKeys" json:"publicKeys"`
	Retries      int      `yaml:"retries" json:"retries"`
	StallTimeout Duration `yaml:"stallTimeout" json:"stallTimeout"`
}

// Paths places the agent on the host.
type Paths struct {
	Root     string `yaml:"root" json:"root"`         // host root: "/" in production
	StateDir string `yaml:"stateDir" json:"stateDir"` // "": {root}/var/lib/quantix/update
	// MinFreeMiB is what an update must leave free on every file system it
	// writes to (the state dir's, the install dirs'); 0 for no reserve.
	MinFreeMiB int `yaml:"minFreeMiB" json:"minFreeMiB"`
}

// Component is where one updatable component is installed and how its
// service is restarted and checked.
type Component struct {
	Dir           string   `yaml:"dir" json:"dir"` // relative to paths.root
	Service       string   `yaml:"service" json:"service"`
	Health        []string `yaml:"health" json:"health"` // argv; exit 0 = healthy
	HealthTimeout Duration `yaml:"healthTimeout" json:"healthTimeout"`
}

// Services says how OpenRC services are driven.
type Services struct {
	RCService      string   `yaml:"rcService" json:"rcService"`
	RestartTimeout Duration `yaml:"restartTimeout" json:"restartTimeout"`
}

// AB configures full-system updates; they are enabled when both slots are set.
type AB struct {
	Slots              Slots    `yaml:"slots" json:"slots"`
	GrubEnv            string   `yaml:"grubEnv" json:"grubEnv"`
	Cmdline            string   `yaml:"cmdline" json:"cmdline"`
	RebootCommand      []string `yaml:"rebootCommand" json:"rebootCommand"`
	MaintenanceTimeout Duration `yaml:"maintenanceTimeout" json:"maintenanceTimeout"`
	HealthCommand      []string `yaml:"healthCommand" json:"healthCommand"`
}

// Slots are the two system slots: block devices, or plain files in tests.
type Slots struct {
	A string `yaml:"a" json:"a"`
	B string `yaml:"b" json:"b"`
}

// HTTP configures the REST facade; an empty Listen disables it.
type HTTP struct {
	Listen    string   `yaml:"listen" json:"listen"`
	TokenFile string   `yaml:"tokenFile" json:"tokenFile"`
	Hosts     []string `yaml:"hosts" json:"hosts"`
	Origins   []string `yaml:"origins" json:"origins"`
	TLSCert   string   `yaml:"tlsCert" json:"tlsCert"`
	TLSKey    string   `yaml:"tlsKey" json:"tlsKey"`
}

// Default returns the configuration with every default filled in. It is not
// valid on its own: nodeId, updates.serverUrl and updates.publicKeys have no
// default.
func Default() Options {
	return Options{
		Log: Log{Format: "text", Level: "info"},
		Updates: Updates{
			Channel:       "dev",
			CheckInterval: Duration(time.Hour),
			Retries:       5,
			StallTimeout:  Duration(30 * time.Second),
		},
		Paths: Paths{Root: "/", MinFreeMiB: 256},
		Services: Services{
			RCService:      "rc-service",
			RestartTimeout: Duration(60 * time.Second),
		},
		AB: AB{
			Cmdline:            "/proc/cmdline",
			RebootCommand:      []string{"reboot"},
			MaintenanceTimeout: Duration(30 * time.Minute),
		},
		HTTP: HTTP{Listen: "127.0.0.1:8080"},
	}
}

// Load reads the file at path and returns it as Parse does.
func Load(path string) (Options, error) {
	data, err := readLimited(path)
	if err != nil {
		return Options{}, fmt.Errorf("load config: %w", err)
	}
	o, err := Parse(data)
	if err != nil {
		return Options{}, fmt.Errorf("load %s: %w", path, err)
	}
	return o, nil
}

// readLimited reads path, stopping one byte past MaxSize so that Parse can
// refuse an oversized file without reading all of it.
func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}

// Parse decodes data strictly over Default, fills in the defaults that depend
// on other keys, and validates the result.
func Parse(data []byte) (Options, error) {
	if len(data) > MaxSize {
		return Options{}, &KeyError{Err: fmt.Errorf("larger than %d bytes", MaxSize)}
	}
	o := Default()
	var file *ast.File
	err := safely(func() (err error) {
		file, err = parser.ParseBytes(data, 0)
		return err
	})
	if err != nil {
		return Options{}, decodeError(nil, err)
	}
	var body ast.Node
	for _, doc := range file.Docs {
		if doc == nil || doc.Body == nil {
			continue
		}
		if body != nil {
			return Options{}, &KeyError{Line: line(doc.Body.GetToken()), Err: errors.New("more than one YAML document")}
		}
		body = doc.Body
	}
	if body != nil {
		dec := yaml.NewDecoder(bytes.NewReader(nil), yaml.DisallowUnknownField())
		if err := safely(func() error { return dec.DecodeFromNode(body, &o) }); err != nil {
			return Options{}, decodeError(file, err)
		}
	}
	o.fill()
	if err := o.Validate(); err != nil {
		return Options{}, err
	}
	return o, nil
}

// safely runs a call into the YAML library, turning a panic into an error:
// the library has panicked on malformed input (a tag with no value in a
// list, found by FuzzParse), and a bad file must not crash the agent.
func safely(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &KeyError{Err: fmt.Errorf("malformed YAML: %v", r)}
		}
	}()
	return f()
}

// fill sets the defaults that depend on other keys or live in map entries.
func (o *Options) fill() {
	if o.NATS.Name == "" && o.NodeID != "" {
		o.NATS.Name = "qx-agent-" + o.NodeID
	}
	for name, c := range o.Components {
		if c.HealthTimeout == 0 {
			c.HealthTimeout = DefaultHealthTimeout
			o.Components[name] = c
		}
	}
}

// StateDir returns paths.stateDir, or {root}/var/lib/quantix/update when it
// is not set.
func (o *Options) StateDir() string {
	if o.Paths.StateDir != "" {
		return o.Paths.StateDir
	}
	return filepath.Join(o.Paths.Root, "var", "lib", "quantix", "update")
}

// ComponentDir returns the install directory of the named component on this
// host, or "" when no such component is configured.
func (o *Options) ComponentDir(name string) string {
	c, ok := o.Components[name]
	if !ok {
		return ""
	}
	return filepath.Join(o.Paths.Root, c.Dir)
}

// ABEnabled reports whether full-system (A/B) updates are configured.
func (o *Options) ABEnabled() bool {
	return o.AB.Slots.A != "" && o.AB.Slots.B != ""
}

// Token returns the REST bearer token read from http.tokenFile with
// surrounding white space trimmed, or "" when no token file is set. An empty
// token file is an error: it would otherwise turn authentication off.
func (o *Options) Token() (string, error) {
	path := o.HTTP.TokenFile
	if path == "" {
		return "", nil
	}
	data, err := readLimited(path)
	if err != nil {
		return "", fmt.Errorf("read token: %w", err)
	}
	if len(data) > MaxSize {
		return "", &KeyError{Key: "http.tokenFile", Err: fmt.Errorf("%s is larger than %d bytes", path, MaxSize)}
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", &KeyError{Key: "http.tokenFile", Err: fmt.Errorf("%s is empty", path)}
	}
	return tok, nil
}

// PublicKeys decodes updates.publicKeys.
func (o *Options) PublicKeys() ([]ed25519.PublicKey, error) {
	keys := make([]ed25519.PublicKey, 0, len(o.Updates.PublicKeys))
	var errs []error
	for i, s := range o.Updates.PublicKeys {
		k, err := decodePublicKey(s)
		if err != nil {
			errs = append(errs, &KeyError{Key: fmt.Sprintf("updates.publicKeys[%d]", i), Err: err})
			continue
		}
		keys = append(keys, k)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return keys, nil
}

func decodePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not standard base64: %w", err)
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("decodes to %d bytes, want %d (a raw ed25519 public key)", len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// KeyError is one configuration problem, tied to the key it is about.
// It wraps ErrInvalid and the underlying cause.
type KeyError struct {
	Key  string // dotted path such as "updates.checkInterval"; "" for the whole file
	Line int    // 1-based line in the file, 0 when not known
	Err  error
}

func (e *KeyError) Error() string {
	var b strings.Builder
	b.WriteString("config: ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	if e.Err != nil {
		b.WriteString(e.Err.Error())
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, " (line %d)", e.Line)
	}
	return b.String()
}

// Unwrap returns ErrInvalid and the cause, so both match errors.Is.
func (e *KeyError) Unwrap() []error { return []error{ErrInvalid, e.Err} }

// nodeError reports a problem with the value at node.
func nodeError(node ast.Node, err error) error {
	if node == nil {
		return &KeyError{Err: err}
	}
	return &KeyError{Key: keyPath(node.GetPath()), Line: line(node.GetToken()), Err: err}
}

// causeError keeps the YAML library's error for errors.As while showing
// only its message, without the source excerpt it formats by default.
type causeError struct {
	msg   string
	cause error
}

func (e *causeError) Error() string { return e.msg }
func (e *causeError) Unwrap() error { return e.cause }

// decodeError turns an error of the YAML library into a KeyError naming the
// key it is about, found by looking its token up in file.
func decodeError(file *ast.File, err error) error {
	var ke *KeyError
	if errors.As(err, &ke) {
		return ke
	}
	var ye yaml.Error
	if !errors.As(err, &ye) {
		return &KeyError{Err: err}
	}
	tok := ye.GetToken()
	msg := ye.GetMessage()
	var (
		uf *yaml.UnknownFieldError
		te *yaml.TypeError
	)
	switch {
	case errors.As(err, &uf):
		msg = "unknown key"
	case errors.As(err, &te) && te.DstType != nil:
		msg = "want " + kindName(te.DstType.Kind().String())
		if tok != nil {
			msg += fmt.Sprintf(", got %q", tok.Value)
		}
	}
	return &KeyError{Key: keyAt(file, tok), Line: line(tok), Err: &causeError{msg: msg, cause: err}}
}

// kindName says a reflect kind in YAML words.
func kindName(kind string) string {
	switch kind {
	case "bool":
		return "true or false"
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "string":
		return "a string"
	case "slice", "array":
		return "a list"
	case "map", "struct":
		return "a mapping"
	}
	return kind
}

// keyAt returns the key path of the deepest node of file carrying tok.
func keyAt(file *ast.File, tok *token.Token) (key string) {
	if file == nil || tok == nil {
		return ""
	}
	// Some node types dereference nil in GetToken; the line still tells
	// the reader where to look when the key cannot be named.
	defer func() {
		if recover() != nil {
			key = ""
		}
	}()
	f := &tokenFinder{tok: tok}
	for _, doc := range file.Docs {
		// Walk bodies, not documents: a document without "---" has no
		// start token and its GetToken dereferences nil.
		if doc != nil && doc.Body != nil {
			ast.Walk(f, doc.Body)
		}
	}
	if f.node == nil {
		return ""
	}
	return keyPath(f.node.GetPath())
}

type tokenFinder struct {
	tok  *token.Token
	node ast.Node
}

func (f *tokenFinder) Visit(n ast.Node) ast.Visitor {
	if n == nil {
		return nil
	}
	if n.GetToken() == f.tok {
		f.node = n // keep walking: a descendant is a closer match
	}
	return f
}

// keyPath turns a YAML path ("$.updates.checkInterval") into the dotted key
// the file's author wrote ("updates.checkInterval").
func keyPath(p string) string {
	p = strings.TrimPrefix(p, "$")
	return strings.TrimPrefix(p, ".")
}

func line(tok *token.Token) int {
	if tok == nil || tok.Position == nil {
		return 0
	}
	return tok.Position.Line
}
