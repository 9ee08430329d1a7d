package config

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// testKey returns a fixed ed25519 public key and its base64 form.
func testKey(t testing.TB, seed byte) (ed25519.PublicKey, string) {
	t.Helper()
	pub := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize)).Public().(ed25519.PublicKey)
	return pub, base64.StdEncoding.EncodeToString(pub)
}

// withKey replaces KEY in doc by a valid base64 public key.
func withKey(t testing.TB, doc string) []byte {
	_, k := testKey(t, 1)
	return []byte(strings.ReplaceAll(doc, "KEY", k))
}

const minimal = `
nodeId: node-a
updates:
  serverUrl: http://127.0.0.1:9000
  publicKeys: [KEY]
`

func TestParseMinimalGetsDefaults(t *testing.T) {
	pub, k := testKey(t, 1)
	o, err := Parse(withKey(t, minimal))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := Default()
	want.NodeID = "node-a"
	want.NATS.Name = "qx-agent-node-a"
	want.Updates.ServerURL = "http://127.0.0.1:9000"
	want.Updates.PublicKeys = []string{k}
	if !reflect.DeepEqual(o, want) {
		t.Errorf("Parse(minimal) =\n%+v\nwant\n%+v", o, want)
	}

	// Spot-check the defaults against the documented values, so a change to
	// Default itself is caught too.
	checks := []struct {
		name      string
		got, want any
	}{
		{"log.format", o.Log.Format, "text"},
		{"log.level", o.Log.Level, "info"},
		{"nats.url", o.NATS.URL, ""},
		{"updates.channel", o.Updates.Channel, "dev"},
		{"updates.autoCheck", o.Updates.AutoCheck, false},
		{"updates.autoApply", o.Updates.AutoApply, false},
		{"updates.checkInterval", o.Updates.CheckInterval.D(), time.Hour},
		{"updates.retries", o.Updates.Retries, 5},
		{"updates.stallTimeout", o.Updates.StallTimeout.D(), 30 * time.Second},
		{"paths.root", o.Paths.Root, "/"},
		{"paths.minFreeMiB", o.Paths.MinFreeMiB, 256},
		{"StateDir", o.StateDir(), "/var/lib/quantix/update"},
		{"services.rcService", o.Services.RCService, "rc-service"},
		{"services.restartTimeout", o.Services.RestartTimeout.D(), time.Minute},
		{"ab.cmdline", o.AB.Cmdline, "/proc/cmdline"},
		{"ab.rebootCommand", strings.Join(o.AB.RebootCommand, " "), "reboot"},
		{"ab.maintenanceTimeout", o.AB.MaintenanceTimeout.D(), 30 * time.Minute},
		{"ABEnabled", o.ABEnabled(), false},
		{"http.listen", o.HTTP.Listen, "127.0.0.1:8080"},
		{"components", len(o.Components), 0},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}

	keys, err := o.PublicKeys()
	if err != nil {
		t.Fatalf("PublicKeys: %v", err)
	}
	if len(keys) != 1 || !keys[0].Equal(pub) {
		t.Errorf("PublicKeys = %x, want [%x]", keys, pub)
	}
	tok, err := o.Token()
	if tok != "" || err != nil {
		t.Errorf("Token() = %q, %v; want \"\", nil without a token file", tok, err)
	}
}

func TestDefaultIsFresh(t *testing.T) {
	a := Default()
	a.AB.RebootCommand[0] = "changed"
	if b := Default(); b.AB.RebootCommand[0] != "reboot" {
		t.Errorf("Default shares its slices between calls: got %q", b.AB.RebootCommand[0])
	}
}

func TestLoadFull(t *testing.T) {
	o, err := Load(filepath.Join("testdata", "full.yaml"))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"nodeId", o.NodeID, "node_B-7"},
		{"log.format", o.Log.Format, "json"},
		{"log.level", o.Log.Level, "debug"},
		{"nats.url", o.NATS.URL, "nats://10.0.0.1:4222, tls://10.0.0.2:4222"},
		{"nats.creds", o.NATS.Creds, "/etc/quantix/agent.creds"},
		{"nats.tls.ca", o.NATS.TLS.CA, "/etc/quantix/ca.pem"},
		{"nats.tls.key", o.NATS.TLS.Key, "/etc/quantix/client-key.pem"},
		{"nats.name", o.NATS.Name, "agent-b7"},
		{"updates.serverUrl", o.Updates.ServerURL, "https://updates.example.net/"},
		{"updates.channel", o.Updates.Channel, "stable-1.2"},
		{"updates.autoApply", o.Updates.AutoApply, true},
		{"updates.checkInterval", o.Updates.CheckInterval.D(), 15 * time.Minute},
		{"updates.publicKeys", len(o.Updates.PublicKeys), 2},
		{"updates.retries", o.Updates.Retries, 0},
		{"updates.stallTimeout", o.Updates.StallTimeout.D(), 2 * time.Minute},
		{"StateDir", o.StateDir(), "/var/lib/qx-test"},
		{"paths.minFreeMiB", o.Paths.MinFreeMiB, 512},
		{"ComponentDir(qx-node)", o.ComponentDir("qx-node"), "/srv/host/opt/quantix/qx-node"},
		{"ComponentDir(qx-ui)", o.ComponentDir("qx-ui"), "/srv/host/usr/share/quantix/ui"},
		{"ComponentDir(unknown)", o.ComponentDir("nope"), ""},
		{"components.qx-node.service", o.Components["qx-node"].Service, "qx-node"},
		{"components.qx-node.health", strings.Join(o.Components["qx-node"].Health, " "), "/usr/bin/qx-node --health"},
		{"components.qx-node.healthTimeout", o.Components["qx-node"].HealthTimeout.D(), 45 * time.Second},
		{"components.qx-ui.healthTimeout", o.Components["qx-ui"].HealthTimeout, DefaultHealthTimeout},
		{"services.rcService", o.Services.RCService, "/sbin/rc-service"},
		{"services.restartTimeout", o.Services.RestartTimeout.D(), 90 * time.Second},
		{"ABEnabled", o.ABEnabled(), true},
		{"ab.grubEnv", o.AB.GrubEnv, "/boot/grub/grubenv"},
		{"ab.rebootCommand", strings.Join(o.AB.RebootCommand, " "), "/sbin/reboot -f"},
		{"ab.maintenanceTimeout", o.AB.MaintenanceTimeout.D(), 90 * time.Minute},
		{"ab.healthCommand", strings.Join(o.AB.HealthCommand, " "), "/usr/bin/qx-selftest"},
		{"http.listen", o.HTTP.Listen, "[::1]:8443"},
		{"http.hosts", strings.Join(o.HTTP.Hosts, ","), "node-b7.example.net"},
		{"http.tlsKey", o.HTTP.TLSKey, "/etc/quantix/http-key.pem"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	keys, err := o.PublicKeys()
	if err != nil || len(keys) != 2 {
		t.Fatalf("PublicKeys = %d keys, %v; want 2, nil", len(keys), err)
	}
	for i, seed := range []byte{1, 2} {
		if want, _ := testKey(t, seed); !keys[i].Equal(want) {
			t.Errorf("key %d = %x, want %x", i, keys[i], want)
		}
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string // substrings of the error, the key's name first
	}{
		{"unknown top-level key", minimal + "bogus: 1\n", []string{`config: bogus: unknown key (line 6)`}},
		{"unknown nested key", `
nodeId: node-a
updates:
  serverUrl: http://127.0.0.1:9000
  publicKeys: [KEY]
  chekInterval: 5m
`, []string{"updates.chekInterval", "unknown key", "(line 6)"}},
		{"unknown key in flow mapping", minimal + "nats: {tls: {ca: x, crt: y}}\n", []string{"nats.tls.crt", "unknown key"}},
		{"unknown key in component", minimal + `
components:
  qx-node:
    dir: opt/qx-node
    restart: always
`, []string{"components.qx-node.restart", "unknown key", "(line 10)"}},
		{"key at the wrong level", minimal + "serverUrl: http://x\n", []string{"serverUrl: unknown key"}},
		{"nodeId with a dot", strings.Replace(minimal, "node-a", "a.b", 1), []string{"nodeId", "invalid node id", `"a.b"`}},
		{"nodeId empty", strings.Replace(minimal, "node-a", `""`, 1), []string{"nodeId", "empty"}},
		{"nodeId missing", strings.Replace(minimal, "nodeId: node-a", "", 1), []string{"nodeId", "empty"}},
		{"nodeId 65 characters", strings.Replace(minimal, "node-a", strings.Repeat("n", 65), 1), []string{"nodeId", "65 characters"}},
		{"nodeId wildcard", strings.Replace(minimal, "node-a", `">"`, 1), []string{"nodeId"}},
		{"bad duration", minimal + "services: {restartTimeout: 5x}\n", []string{`config: services.restartTimeout: time: unknown unit "x" in duration "5x" (line 6)`}},
		{"bad checkInterval", `
nodeId: node-a
updates:
  serverUrl: http://127.0.0.1:9000
  publicKeys: [KEY]
  checkInterval: often
`, []string{`config: updates.checkInterval: time: invalid duration "often" (line 6)`}},
		{"duration as a number", minimal + "ab: {maintenanceTimeout: 3600}\n", []string{"ab.maintenanceTimeout", "want a duration"}},
		{"duration negative", minimal + "services: {restartTimeout: -1s}\n", []string{"services.restartTimeout", "above zero"}},
		{"checkInterval too short", `
nodeId: node-a
updates:
  serverUrl: http://127.0.0.1:9000
  publicKeys: [KEY]
  checkInterval: 5s
`, []string{"updates.checkInterval", "minimum"}},
		{"bad component healthTimeout", minimal + `
components:
  qx-node: {dir: opt/qx-node, healthTimeout: soon}
`, []string{"components.qx-node.healthTimeout", "invalid duration"}},
		{"integer as string", `
nodeId: node-a
updates:
  serverUrl: http://127.0.0.1:9000
  publicKeys: [KEY]
  retries: many
`, []string{"updates.retries", "want an integer", `"many"`}},
		{"bool as string", `
nodeId: node-a
updates:
  serverUrl: http://127.0.0.1:9000
  publicKeys: [KEY]
  autoCheck: sometimes
`, []string{"updates.autoCheck", "want true or false"}},
		{"list as scalar", minimal + "http: {hosts: example.net}\n", []string{"http.hosts"}},
		{"autoApply without autoCheck", `
nodeId: node-a
updates:
  serverUrl: http://127.0.0.1:9000
  publicKeys: [KEY]
  autoApply: true
`, []string{"updates.autoApply", "updates.autoCheck"}},
		{"public key not base64", `
nodeId: node-a
updates:
  serverUrl: http://127.0.0.1:9000
  publicKeys: [KEY, "not base64!"]
`, []string{"updates.publicKeys[1]", "base64"}},
		{"public key wrong length", `
nodeId: node-a
updates:
  serverUrl: http://127.0.0.1:9000
  publicKeys: ["` + base64.StdEncoding.EncodeToString(make([]byte, 16)) + `"]
`, []string{"updates.publicKeys[0]", "16 bytes, want 32"}},
		{"public keys missing", `
nodeId: node-a
updates:
  serverUrl: http://127.0.0.1:9000
`, []string{"updates.publicKeys", "required"}},
		{"serverUrl missing", `
nodeId: node-a
updates:
  publicKeys: [KEY]
`, []string{"updates.serverUrl", "required"}},
		{"serverUrl scheme", strings.Replace(minimal, "http://127.0.0.1:9000", "ftp://127.0.0.1", 1), []string{"updates.serverUrl", "http or https"}},
		{"serverUrl no host", strings.Replace(minimal, "http://127.0.0.1:9000", "http:///x", 1), []string{"updates.serverUrl", "no host"}},
		{"bad channel", `
nodeId: node-a
updates:
  serverUrl: http://127.0.0.1:9000
  publicKeys: [KEY]
  channel: Stable!
`, []string{"updates.channel", `"Stable!"`}},
		{"component dir with ..", minimal + `
components:
  qx-node: {dir: opt/../../etc}
`, []string{"components.qx-node.dir", `".."`}},
		{"component dir absolute", minimal + `
components:
  qx-node: {dir: /opt/qx-node}
`, []string{"components.qx-node.dir", "absolute"}},
		{"component dir missing", minimal + `
components:
  qx-node: {service: qx-node}
`, []string{"components.qx-node.dir", "required"}},
		{"component dir is root", minimal + `
components:
  qx-node: {dir: ./}
`, []string{"components.qx-node.dir", "paths.root itself"}},
		{"component name", minimal + `
components:
  QX_Node: {dir: opt/x}
`, []string{"components.QX_Node", "component name"}},
		{"component service option", minimal + `
components:
  qx-node: {dir: opt/x, service: --all}
`, []string{"components.qx-node.service"}},
		{"component health empty program", minimal + `
components:
  qx-node: {dir: opt/x, health: [""]}
`, []string{"components.qx-node.health", "empty"}},
		{"nats tls cert without key", minimal + "nats: {tls: {cert: /etc/c.pem}}\n", []string{"nats.tls.key", "required when nats.tls.cert"}},
		{"nats tls key without cert", minimal + "nats: {tls: {key: /etc/k.pem}}\n", []string{"nats.tls.cert", "required when nats.tls.key"}},
		{"nats creds and nkey", minimal + "nats: {creds: /a, nkeySeed: /b}\n", []string{"nats.nkeySeed", "nats.creds"}},
		{"nats password without user", minimal + "nats: {passwordFile: /p}\n", []string{"nats.passwordFile", "nats.user"}},
		{"nats url scheme", minimal + "nats: {url: 'nats://a:4222,http://b:4222'}\n", []string{"nats.url", `"http"`}},
		{"slots.a without slots.b", minimal + "ab: {slots: {a: /dev/vda2}, grubEnv: /boot/grub/grubenv}\n", []string{"ab.slots.b", "required when ab.slots.a"}},
		{"slots relative", minimal + "ab: {slots: {a: vda2, b: /dev/vda3}, grubEnv: /boot/grub/grubenv}\n", []string{"ab.slots.a", "absolute"}},
		{"slots equal", minimal + "ab: {slots: {a: /dev/vda2, b: /dev/vda2}, grubEnv: /g}\n", []string{"ab.slots.b", "same as ab.slots.a"}},
		{"grubEnv missing with slots", minimal + "ab: {slots: {a: /dev/vda2, b: /dev/vda3}}\n", []string{"ab.grubEnv", "required when ab.slots"}},
		{"rebootCommand empty with slots", minimal + "ab: {slots: {a: /a, b: /b}, grubEnv: /g, rebootCommand: []}\n", []string{"ab.rebootCommand", "required"}},
		{"http tlsCert without tlsKey", minimal + "http: {tlsCert: /c.pem}\n", []string{"http.tlsKey", "required when http.tlsCert"}},
		{"http listen", minimal + "http: {listen: localhost}\n", []string{"http.listen", "host:port"}},
		{"http listen port", minimal + "http: {listen: ':99999'}\n", []string{"http.listen", "port"}},
		{"http host", minimal + "http: {hosts: [ok.example, 'a/b']}\n", []string{"http.hosts[1]"}},
		{"http origin", minimal + "http: {origins: ['https://ui.example:8443', 'ui.example', 'https://ui.example/path', 'null']}\n",
			[]string{"http.origins[1]", "http.origins[2]", "http.origins[3]", "not an origin"}},
		{"log level", minimal + "log: {level: verbose}\n", []string{"log.level", `"verbose"`, "debug, info, warn, error"}},
		{"log format", minimal + "log: {format: xml}\n", []string{"log.format", `"xml"`}},
		{"paths root relative", minimal + "paths: {root: host}\n", []string{"paths.root", "absolute"}},
		{"paths stateDir relative", minimal + "paths: {stateDir: var/lib}\n", []string{"paths.stateDir", "absolute"}},
		{"paths minFreeMiB negative", minimal + "paths: {minFreeMiB: -1}\n", []string{"paths.minFreeMiB", "negative"}},
		{"every problem reported", `
nodeId: a.b
log: {format: xml}
updates:
  publicKeys: [KEY]
http: {tlsKey: /k}
`, []string{"nodeId", "log.format", "updates.serverUrl", "http.tlsCert"}},
		{"duplicate key", minimal + "log: {level: info}\nlog: {level: debug}\n", []string{`"log" already defined`}},
		{"two documents", minimal + "---\nnodeId: node-b\n", []string{"more than one YAML document"}},
		{"syntax error", "nodeId: [unclosed\n", []string{"config: "}},
		{"not a mapping", "- nodeId\n", []string{"config: "}},
		{"YAML library panic", "updates:\n  publicKeys:\n  -\ncomponents:\n  A:\n    health: !0\n0", []string{"malformed YAML"}},
		{"empty file", "", []string{"nodeId", "updates.serverUrl", "updates.publicKeys"}},
		{"too large", minimal + "#" + strings.Repeat("x", MaxSize) + "\n", []string{"larger than"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(withKey(t, tt.doc))
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			t.Log(err)
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseNodeIDSentinel(t *testing.T) {
	_, err := Parse(withKey(t, strings.Replace(minimal, "node-a", "a.b", 1)))
	if !errors.Is(err, ErrInvalidNodeID) {
		t.Errorf("errors.Is(%v, ErrInvalidNodeID) = false", err)
	}
	var ke *KeyError
	if !errors.As(err, &ke) || ke.Key != "nodeId" {
		t.Errorf("errors.As(%v, *KeyError) did not give key nodeId (got %+v)", err, ke)
	}
}

func TestValidNodeID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"node-a", true},
		{"N_1", true},
		{strings.Repeat("x", 64), true},
		{"", false},
		{strings.Repeat("x", 65), false},
		{"a.b", false},
		{"a b", false},
		{"a*", false},
		{"a>", false},
		{"nöde", false},
	}
	for _, tt := range tests {
		err := ValidNodeID(tt.id)
		if (err == nil) != tt.ok {
			t.Errorf("ValidNodeID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidNodeID) {
			t.Errorf("ValidNodeID(%q) = %v, not ErrInvalidNodeID", tt.id, err)
		}
	}
}

func TestValidateDefault(t *testing.T) {
	o := Default()
	err := o.Validate()
	for _, key := range []string{"nodeId", "updates.serverUrl", "updates.publicKeys"} {
		if err == nil || !strings.Contains(err.Error(), "config: "+key+": ") {
			t.Errorf("Validate(Default()) = %v, want a problem with %s", err, key)
		}
	}
	// Nothing else: every default is valid on its own.
	if n := strings.Count(err.Error(), "\n") + 1; n != 3 {
		t.Errorf("Validate(Default()) reported %d problems, want 3:\n%v", n, err)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(filepath.Join(dir, "missing.yaml"))
	if !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrInvalid) {
		t.Errorf("Load(missing) = %v, want fs.ErrNotExist and not ErrInvalid", err)
	}

	path := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(path, withKey(t, minimal+"bogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(path)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("Load(bad) = %v, want ErrInvalid naming %s and bogus", err, path)
	}

	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, bytes.Repeat([]byte("# padding\n"), MaxSize/10+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("Load(big) = %v, want a size error", err)
	}
}

func TestToken(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		file    string
		want    string
		wantErr error
	}{
		{"no file configured", "", "", nil},
		{"trimmed", write("tok", "  s3cret\n"), "s3cret", nil},
		{"empty", write("empty", " \n"), "", ErrInvalid},
		{"missing", filepath.Join(dir, "nope"), "", fs.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := Default()
			o.HTTP.TokenFile = tt.file
			got, err := o.Token()
			if got != tt.want {
				t.Errorf("Token() = %q, want %q", got, tt.want)
			}
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Token() error = %v, want %v", err, tt.wantErr)
			}
			if errors.Is(tt.wantErr, ErrInvalid) && !strings.Contains(err.Error(), "http.tokenFile") {
				t.Errorf("Token() error %q does not name http.tokenFile", err)
			}
		})
	}
}

func TestPublicKeysNamesIndex(t *testing.T) {
	_, k := testKey(t, 1)
	o := Default()
	o.Updates.PublicKeys = []string{k, "AAAA"}
	keys, err := o.PublicKeys()
	if keys != nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "updates.publicKeys[1]") {
		t.Errorf("PublicKeys() = %v, %v; want nil and an error naming updates.publicKeys[1]", keys, err)
	}
}

func TestDuration(t *testing.T) {
	d := Duration(90 * time.Minute)
	j, err := json.Marshal(struct{ D Duration }{d})
	if err != nil || string(j) != `{"D":"1h30m0s"}` {
		t.Errorf("json.Marshal = %s, %v; want {\"D\":\"1h30m0s\"}", j, err)
	}
	var back struct{ D Duration }
	if err := json.Unmarshal(j, &back); err != nil || back.D != d {
		t.Errorf("json.Unmarshal(%s) = %v, %v; want %v", j, back.D, err, d)
	}
	if err := json.Unmarshal([]byte(`{"D":5}`), &back); err == nil {
		t.Error("json.Unmarshal of a number succeeded, want an error")
	}
	var u Duration
	if err := u.UnmarshalText([]byte("250ms")); err != nil || u.D() != 250*time.Millisecond {
		t.Errorf("UnmarshalText(250ms) = %v, %v", u, err)
	}
	if err := u.UnmarshalText([]byte("5x")); err == nil {
		t.Error("UnmarshalText(5x) succeeded, want an error")
	}
	if v, err := d.MarshalYAML(); err != nil || v != "1h30m0s" {
		t.Errorf("MarshalYAML = %v, %v; want 1h30m0s", v, err)
	}
}

func FuzzParse(f *testing.F) {
	full, err := os.ReadFile(filepath.Join("testdata", "full.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(full)
	f.Add(withKey(f, minimal))
	f.Add(withKey(f, minimal+"bogus: 1\n"))
	f.Add(withKey(f, minimal+"components: {x: {dir: a, healthTimeout: 1s}}\nab: {slots: {a: /a}}\n"))
	f.Add([]byte("a: &x [*x, *x]\n"))
	f.Add([]byte("nodeId: !!binary aGk=\n---\n? [a]\n: b\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if err := o.Validate(); err != nil {
			t.Errorf("Parse accepted a config that Validate refuses: %v", err)
		}
	})
}
