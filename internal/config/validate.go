package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrInvalidNodeID is wrapped by ValidNodeID's errors.
var ErrInvalidNodeID = errors.New("invalid node id")

// ValidNodeID checks that id is 1 to 64 characters of A-Za-z0-9_-, so that it
// is exactly one NATS subject token (no '.', '*', '>' or white space).
func ValidNodeID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty (want 1 to 64 characters of A-Za-z0-9_-)", ErrInvalidNodeID)
	}
	if len(id) > 64 {
		return fmt.Errorf("%w: %d characters long (want 1 to 64 characters of A-Za-z0-9_-)", ErrInvalidNodeID, len(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("%w %q: character %q at %d (want 1 to 64 characters of A-Za-z0-9_-)", ErrInvalidNodeID, id, c, i)
		}
	}
	return nil
}

var (
	channelRE   = regexp.MustCompile(`^[a-z0-9._-]{1,32}$`)
	componentRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	// An OpenRC service is an init.d file name. It goes to rc-service as an
	// argument, so it must not start with '-' and be read as an option.
	serviceRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$`)
)

// minCheckInterval keeps automatic checks from hammering the Update Server.
const minCheckInterval = 10 * time.Second

// Validate checks every key, including the rules that tie keys together. It
// returns the errors.Join of every problem found, each a *KeyError naming
// its key and wrapping ErrInvalid.
func (o *Options) Validate() error {
	v := &validator{}
	v.check("nodeId", ValidNodeID(o.NodeID))
	v.oneOf("log.format", o.Log.Format, "text", "json")
	v.oneOf("log.level", o.Log.Level, "debug", "info", "warn", "error")
	o.validateNATS(v)
	o.validateUpdates(v)
	o.validatePaths(v)
	o.validateComponents(v)
	v.required("services.rcService", o.Services.RCService)
	v.positive("services.restartTimeout", o.Services.RestartTimeout)
	o.validateAB(v)
	o.validateHTTP(v)
	return errors.Join(v.errs...)
}

func (o *Options) validateNATS(v *validator) {
	n := &o.NATS
	if n.URL != "" {
		for i, u := range strings.Split(n.URL, ",") {
			v.check("nats.url", natsURL(strings.TrimSpace(u), i))
		}
	}
	if n.Creds != "" && n.NkeySeed != "" {
		v.add("nats.nkeySeed", "set together with nats.creds: use one or the other")
	}
	if n.PasswordFile != "" && n.User == "" {
		v.add("nats.passwordFile", "set without nats.user")
	}
	v.pair("nats.tls.cert", n.TLS.Cert, "nats.tls.key", n.TLS.Key)
}

func natsURL(s string, i int) error {
	if s == "" {
		return fmt.Errorf("server %d is empty", i+1)
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("server %d: %w", i+1, err)
	}
	switch u.Scheme {
	case "nats", "tls", "ws", "wss":
	default:
		return fmt.Errorf("server %q: scheme %q is not nats, tls, ws or wss", s, u.Scheme)
	}
	if u.Host == "" {
		return fmt.Errorf("server %q has no host", s)
	}
	return nil
}

func (o *Options) validateUpdates(v *validator) {
	u := &o.Updates
	if u.ServerURL == "" {
		v.add("updates.serverUrl", "required (the Update Server, such as http://127.0.0.1:9000)")
	} else if p, err := url.Parse(u.ServerURL); err != nil {
		v.check("updates.serverUrl", err)
	} else if p.Scheme != "http" && p.Scheme != "https" {
		v.add("updates.serverUrl", fmt.Sprintf("%q: scheme must be http or https", u.ServerURL))
	} else if p.Host == "" {
		v.add("updates.serverUrl", fmt.Sprintf("%q has no host", u.ServerURL))
	} else if p.RawQuery != "" || p.Fragment != "" {
		v.add("updates.serverUrl", fmt.Sprintf("%q: must not have a query or fragment", u.ServerURL))
	}
	if !channelRE.MatchString(u.Channel) {
		v.add("updates.channel", fmt.Sprintf("%q: want 1 to 32 characters of a-z0-9._-", u.Channel))
	}
	if u.AutoApply && !u.AutoCheck {
		v.add("updates.autoApply", "true requires updates.autoCheck: true")
	}
	if u.CheckInterval.D() < minCheckInterval {
		v.add("updates.checkInterval", fmt.Sprintf("%s is below the minimum %s", u.CheckInterval, minCheckInterval))
	}
	if len(u.PublicKeys) == 0 {
		v.add("updates.publicKeys", "required: at least one base64 ed25519 public key")
	}
	for i, s := range u.PublicKeys {
		if _, err := decodePublicKey(s); err != nil {
			v.check(fmt.Sprintf("updates.publicKeys[%d]", i), err)
		}
	}
	if o.Paths.MinFreeMiB < 0 {
		v.add("paths.minFreeMiB", fmt.Sprintf("%d is negative", o.Paths.MinFreeMiB))
	}
	if u.Retries < 0 {
		v.add("updates.retries", fmt.Sprintf("%d is negative", u.Retries))
	}
	v.positive("updates.stallTimeout", u.StallTimeout)
}

func (o *Options) validatePaths(v *validator) {
	if o.Paths.Root == "" {
		v.add("paths.root", "required (\"/\" on a host)")
	} else {
		v.absolute("paths.root", o.Paths.Root)
	}
	if o.Paths.StateDir != "" {
		v.absolute("paths.stateDir", o.Paths.StateDir)
	}
}

func (o *Options) validateComponents(v *validator) {
	// Sorted so the joined message is the same from run to run.
	for _, name := range slices.Sorted(maps.Keys(o.Components)) {
		c := o.Components[name]
		key := "components." + name
		if !componentRE.MatchString(name) {
			v.add(key, "bad component name: want [a-z0-9][a-z0-9._-]{0,63}")
		}
		v.check(key+".dir", relDir(c.Dir))
		if c.Service != "" && !serviceRE.MatchString(c.Service) {
			v.add(key+".service", fmt.Sprintf("%q is not an OpenRC service name", c.Service))
		}
		v.argv(key+".health", c.Health)
		v.positive(key+".healthTimeout", c.HealthTimeout)
	}
}

// relDir checks a component directory: relative to paths.root and inside it.
func relDir(dir string) error {
	switch {
	case dir == "":
		return errors.New("required: a directory relative to paths.root")
	case filepath.IsAbs(dir) || strings.HasPrefix(dir, "/"):
		return fmt.Errorf("%q is absolute: want a directory relative to paths.root", dir)
	case slices.Contains(strings.Split(filepath.ToSlash(dir), "/"), ".."):
		return fmt.Errorf("%q contains \"..\"", dir)
	case filepath.Clean(dir) == ".":
		return fmt.Errorf("%q is paths.root itself: want a directory below it", dir)
	}
	return nil
}

func (o *Options) validateAB(v *validator) {
	ab := &o.AB
	v.pair("ab.slots.a", ab.Slots.A, "ab.slots.b", ab.Slots.B)
	if ab.Slots.A != "" {
		v.absolute("ab.slots.a", ab.Slots.A)
	}
	if ab.Slots.B != "" {
		v.absolute("ab.slots.b", ab.Slots.B)
	}
	if ab.Slots.A != "" && filepath.Clean(ab.Slots.A) == filepath.Clean(ab.Slots.B) {
		v.add("ab.slots.b", fmt.Sprintf("%q is the same as ab.slots.a", ab.Slots.B))
	}
	if ab.GrubEnv != "" {
		v.absolute("ab.grubEnv", ab.GrubEnv)
	}
	v.positive("ab.maintenanceTimeout", ab.MaintenanceTimeout)
	v.argv("ab.healthCommand", ab.HealthCommand)
	if !o.ABEnabled() {
		v.argv("ab.rebootCommand", ab.RebootCommand)
		return
	}
	if ab.GrubEnv == "" {
		v.add("ab.grubEnv", "required when ab.slots are set (the GRUB environment block file)")
	}
	if ab.Cmdline == "" {
		v.add("ab.cmdline", "required when ab.slots are set")
	} else {
		v.absolute("ab.cmdline", ab.Cmdline)
	}
	if len(ab.RebootCommand) == 0 {
		v.add("ab.rebootCommand", "required when ab.slots are set")
	}
	v.argv("ab.rebootCommand", ab.RebootCommand)
}

func (o *Options) validateHTTP(v *validator) {
	h := &o.HTTP
	if h.Listen != "" {
		v.check("http.listen", listenAddr(h.Listen))
	}
	for i, host := range h.Hosts {
		if host == "" || strings.ContainsAny(host, " \t\r\n/\\@") {
			v.add(fmt.Sprintf("http.hosts[%d]", i), fmt.Sprintf("%q is not a host name", host))
		}
	}
	for i, o := range h.Origins {
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			v.add(fmt.Sprintf("http.origins[%d]", i), fmt.Sprintf("%q is not an origin: want http(s)://host[:port]", o))
		}
	}
	v.pair("http.tlsCert", h.TLSCert, "http.tlsKey", h.TLSKey)
}

func listenAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want host:port: %w", addr, err)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("%q: bad host %q", addr, host)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	return nil
}

// validator collects problems so that Validate reports them all at once.
type validator struct {
	errs []error
}

func (v *validator) check(key string, err error) {
	if err != nil {
		v.errs = append(v.errs, &KeyError{Key: key, Err: err})
	}
}

func (v *validator) add(key, msg string) {
	v.errs = append(v.errs, &KeyError{Key: key, Err: errors.New(msg)})
}

func (v *validator) required(key, s string) {
	if s == "" {
		v.add(key, "required")
	}
}

func (v *validator) oneOf(key, s string, allowed ...string) {
	if !slices.Contains(allowed, s) {
		v.add(key, fmt.Sprintf("%q: want one of %s", s, strings.Join(allowed, ", ")))
	}
}

func (v *validator) positive(key string, d Duration) {
	if d <= 0 {
		v.add(key, fmt.Sprintf("%s: want a duration above zero", d))
	}
}

func (v *validator) absolute(key, p string) {
	if !filepath.IsAbs(p) {
		v.add(key, fmt.Sprintf("%q: want an absolute path", p))
	}
}

// pair reports a key set without its partner (cert without key and so on).
func (v *validator) pair(keyA, a, keyB, b string) {
	switch {
	case a != "" && b == "":
		v.add(keyB, "required when "+keyA+" is set")
	case a == "" && b != "":
		v.add(keyA, "required when "+keyB+" is set")
	}
}

// argv checks an optional command line: when given, it names a program.
func (v *validator) argv(key string, argv []string) {
	if len(argv) > 0 && strings.TrimSpace(argv[0]) == "" {
		v.add(key, "the program (first element) is empty")
	}
}
