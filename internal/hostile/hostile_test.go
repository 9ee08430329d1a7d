package hostile_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/quantix-os/update-agent/internal/engine"
	"github.com/quantix-os/update-agent/internal/fetch"
	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/internal/natstest"
	"github.com/quantix-os/update-agent/subjects"
)

// attack is one hostile input. By default it is the apply of the offered
// release after prep set the trap, which must be refused (synchronously
// with an error matching is, when set) with a message holding every want.
// run replaces that default for attacks over the bus or REST.
type attack struct {
	suite, name string
	mods        []func(*engine.Options)
	prep        func(w *world)
	is          error
	want        []string
	run         func(w *world)
}

// TestHostile runs the corpus; every case must be refused cleanly.
func TestHostile(t *testing.T) {
	// A payload limit above the contract's, so the agent itself has to
	// refuse an oversized message rather than the server.
	ns := natstest.Start(t, func(o *server.Options) { o.MaxPayload = 4 << 20 })
	natstest.Provision(t, ns.ClientURL())

	cases := corpus()
	if len(cases) < 40 {
		t.Errorf("the corpus has %d cases, want at least 40", len(cases))
	}
	type tally struct{ tried, passed int }
	var order []string
	suites := map[string]*tally{}
	tried, passed := 0, 0
	for i, c := range cases {
		if suites[c.suite] == nil {
			suites[c.suite] = &tally{}
			order = append(order, c.suite)
		}
		ran := false // a case -run filters out is neither tried nor passed
		ok := t.Run(c.suite+"/"+c.name, func(t *testing.T) {
			ran = true
			c.check(t, ns, fmt.Sprintf("node-%02d", i))
		})
		if !ran {
			continue
		}
		suites[c.suite].tried++
		tried++
		if ok {
			suites[c.suite].passed++
			passed++
		}
	}
	for _, s := range order {
		t.Logf("hostile %s: %d cases, %d refused cleanly", s, suites[s].tried, suites[s].passed)
	}
	t.Logf("hostile: %d cases, %d refused cleanly", tried, passed)
	if passed != tried {
		t.Errorf("%d of %d hostile cases were not refused cleanly", tried-passed, tried)
	}
}

// check runs the attack on a fresh host and asserts the refusal was clean.
func (a attack) check(t *testing.T, ns *server.Server, node string) {
	w := newWorld(t, ns, node, a.mods...)
	if a.prep != nil {
		a.prep(w)
	}
	before := w.snapshot()
	versions, current, settings := w.eng.Versions(), w.eng.CurrentVersion(), w.eng.Settings()
	hist := len(w.eng.History())

	if a.run != nil {
		a.run(w)
	} else {
		msg, refusal := w.attempt("op-hostile")
		if a.is != nil && !errors.Is(refusal, a.is) {
			t.Errorf("refusal %v, want one wrapping %q", refusal, a.is)
		}
		for _, s := range a.want {
			if !strings.Contains(msg, s) {
				t.Errorf("message %q does not name %q", msg, s)
			}
		}
		t.Logf("refused: %s", msg)
	}

	if d := diff(before, w.snapshot()); len(d) > 0 {
		t.Errorf("the host root or a sibling changed:\n  %s", strings.Join(d, "\n  "))
	}
	for _, dir := range []string{os.TempDir(), "/tmp"} {
		if _, err := os.Lstat(filepath.Join(dir, w.escapeMarker)); err == nil {
			os.Remove(filepath.Join(dir, w.escapeMarker))
			t.Errorf("an entry escaped to %s", filepath.Join(dir, w.escapeMarker))
		}
	}
	if v := w.eng.Versions(); !reflect.DeepEqual(v, versions) || w.eng.CurrentVersion() != current {
		t.Errorf("installed versions changed: %+v (%s) → %+v (%s)", versions, current, v, w.eng.CurrentVersion())
	}
	if s := w.eng.Settings(); s != settings {
		t.Errorf("settings changed: %+v → %+v", settings, s)
	}
	if w.eng.Done() != nil {
		t.Errorf("an operation is still running: %+v", w.eng.Status())
	}
	w.eng.Journal().View(func(s *journal.State) {
		if s.Op != nil {
			t.Errorf("an operation is left in the journal: %s (%s)", s.Op.ID, s.Op.Phase)
		}
	})
	for _, e := range w.eng.History()[hist:] {
		if e.Result != subjects.EventFailed && e.Result != subjects.EventCancelled {
			t.Errorf("history gained a %s entry: %+v", e.Result, e)
		}
	}
}

func corpus() []attack {
	var cs []attack
	cs = append(cs, manifestCases()...)
	cs = append(cs, artifactCases()...)
	cs = append(cs, archiveCases()...)
	cs = append(cs, busCases()...)
	cs = append(cs, restCases()...)
	return cs
}

// compact is the offered manifest as compact JSON, for byte-level tampering.
func (w *world) compact() []byte {
	w.t.Helper()
	b, err := json.Marshal(w.manifest())
	if err != nil {
		w.t.Fatal(err)
	}
	return b
}

// tamper publishes the offered manifest after a textual replacement, signed
// by the trusted key.
func tamper(old, repl string) func(w *world) {
	return func(w *world) {
		raw := w.compact()
		if !bytes.Contains(raw, []byte(old)) {
			w.t.Fatalf("manifest %s has no %s", raw, old)
		}
		w.publishRaw(bytes.Replace(raw, []byte(old), []byte(repl), 1))
	}
}

func setArtifact(name, path string) func(w *world) {
	return func(w *world) {
		w.resign(func(m *manifest.Manifest) {
			for i := range m.Components {
				if m.Components[i].Name == name {
					m.Components[i].Artifact = path
				}
			}
		})
	}
}

func manifestCases() []attack {
	const s = "manifest"
	return []attack{
		{suite: s, name: "signed by an unknown key", is: manifest.ErrNoValidSignature,
			want: []string{"no signature is by a configured key", "no valid signature"},
			prep: func(w *world) { w.publish(envelope(w.t, w.oldRaw, w.unknownKey)) }},
		{suite: s, name: "bad signature over altered bytes", is: manifest.ErrNoValidSignature,
			want: []string{"signature by a configured key does not match the manifest bytes"},
			prep: func(w *world) {
				var env manifest.Signed
				if err := json.Unmarshal(w.originalEnvelope, &env); err != nil {
					w.t.Fatal(err)
				}
				altered := bytes.Replace(env.Signed, []byte(`"serial": 1,`), []byte(`"serial": 1000,`), 1)
				if bytes.Equal(altered, env.Signed) {
					w.t.Fatalf("manifest %s has no serial 1", env.Signed)
				}
				env.Signed = altered
				b, _ := json.Marshal(env)
				w.publish(b)
			}},
		{suite: s, name: "truncated signature", is: manifest.ErrNoValidSignature,
			want: []string{"does not match the manifest bytes"},
			prep: func(w *world) {
				var env manifest.Signed
				json.Unmarshal(w.originalEnvelope, &env)
				env.Signatures[0].Sig = env.Signatures[0].Sig[:10]
				b, _ := json.Marshal(env)
				w.publish(b)
			}},
		{suite: s, name: "no signatures", is: manifest.ErrNoValidSignature, want: []string{"envelope has no signatures"},
			prep: func(w *world) { w.publish(envelope(w.t, w.oldRaw)) }},
		{suite: s, name: "33 signatures", is: manifest.ErrMalformed, want: []string{"33 signatures, limit 32"},
			prep: func(w *world) {
				keys := make([]ed25519.PrivateKey, 33)
				for i := range keys {
					_, keys[i], _ = ed25519.GenerateKey(nil)
				}
				w.publish(envelope(w.t, w.oldRaw, keys...))
			}},
		{suite: s, name: "expired", is: manifest.ErrExpired, want: []string{"expired at"},
			prep: func(w *world) {
				w.resign(func(m *manifest.Manifest) {
					m.ExpiresAt = time.Now().Add(-24 * time.Hour).UTC().Truncate(time.Second)
					m.ReleasedAt = m.ExpiresAt.Add(-24 * time.Hour)
				})
			}},
		{suite: s, name: "lower serial (replayed old manifest)", is: manifest.ErrSerialRollback,
			want: []string{"serial 1 is lower than 7 already seen for channel dev"},
			prep: func(w *world) {
				w.resign(func(m *manifest.Manifest) { m.Serial = 7 })
				if _, err := w.eng.Check(context.Background(), subjects.CheckRequest{}); err != nil {
					w.t.Fatalf("check of serial 7: %v", err)
				}
				w.publish(w.originalEnvelope)
			}},
		{suite: s, name: "downgrade", is: manifest.ErrDowngrade, want: []string{"version 0.0.4 is older than installed 0.0.5"},
			prep: func(w *world) {
				w.resign(func(m *manifest.Manifest) {
					m.Version = "0.0.4"
					for i := range m.Components {
						m.Components[i].Version = "0.0.4"
					}
				})
			}},
		{suite: s, name: "minVersion above installed", is: manifest.ErrMinVersion,
			want: []string{"installed version 0.0.5 is older than minVersion 0.0.6"},
			prep: func(w *world) { w.resign(func(m *manifest.Manifest) { m.MinVersion = "0.0.6" }) }},
		{suite: s, name: "huge manifest (over 1 MiB)", is: manifest.ErrTooLarge, want: []string{"limit 1048576", "too large"},
			prep: func(w *world) {
				w.resign(func(m *manifest.Manifest) { m.ReleaseNotes = strings.Repeat("x", 1100<<10) })
			}},
		{suite: s, name: "endless manifest response", is: fetch.ErrTooLarge, want: []string{"response too large", "over 4194304 bytes"},
			prep: func(w *world) {
				w.hookManifest(func(rw http.ResponseWriter, r *http.Request) {
					rw.WriteHeader(http.StatusOK)
					chunk := bytes.Repeat([]byte(" "), 64<<10)
					for r.Context().Err() == nil {
						if _, err := rw.Write(chunk); err != nil {
							return
						}
					}
				})
			}},
		{suite: s, name: "malformed envelope JSON", is: manifest.ErrMalformed, want: []string{"signed envelope", "malformed"},
			prep: func(w *world) { w.publish(w.originalEnvelope[:len(w.originalEnvelope)/2]) }},
		{suite: s, name: "not JSON at all", is: manifest.ErrMalformed, want: []string{"invalid character '<'"},
			prep: func(w *world) { w.publish([]byte("<html><body>Welcome to nginx!</body></html>\n")) }},
		{suite: s, name: "malformed signed manifest", is: manifest.ErrMalformed, want: []string{"channel dev: manifest: unexpected EOF", "malformed"},
			prep: func(w *world) { w.publishRaw(w.compact()[:100]) }},
		{suite: s, name: "duplicate key", is: manifest.ErrDuplicateKey, want: []string{`key "version" appears twice`},
			prep: tamper(`"version":"0.0.6",`, `"version":"0.0.6","version":"9.9.9",`)},
		{suite: s, name: "duplicate key in the envelope", is: manifest.ErrDuplicateKey, want: []string{`key "signed" appears twice`},
			prep: func(w *world) {
				w.publish(bytes.Replace(w.originalEnvelope, []byte(`{"signed":`), []byte(`{"signed":"e30=","signed":`), 1))
			}},
		{suite: s, name: "unknown field", is: manifest.ErrMalformed, want: []string{`unknown field "evil"`},
			prep: tamper(`{"schema":1,`, `{"evil":true,"schema":1,`)},
		{suite: s, name: "unknown field in a component", is: manifest.ErrMalformed, want: []string{`unknown field "components[0].preinstall"`},
			prep: tamper(`{"name":"qx-console",`, `{"preinstall":"rm -rf /","name":"qx-console",`)},
		{suite: s, name: "key differing only in case", is: manifest.ErrMalformed, want: []string{`unknown field "Version"`},
			prep: tamper(`"version":"0.0.6",`, `"Version":"0.0.6",`)},
		{suite: s, name: "unknown field in the envelope", is: manifest.ErrMalformed, want: []string{`unknown field "keys"`},
			prep: func(w *world) {
				w.publish(bytes.Replace(w.originalEnvelope, []byte(`{"signed":`), []byte(`{"keys":[],"signed":`), 1))
			}},
		{suite: s, name: "trailing data after the envelope", is: manifest.ErrMalformed, want: []string{"data after the JSON object"},
			prep: func(w *world) { w.publish(append(bytes.TrimSpace(w.originalEnvelope), `{"signed":"e30="}`...)) }},
		{suite: s, name: "nested arrays", is: manifest.ErrMalformed, want: []string{"nested deeper than 3 levels"},
			prep: tamper(`"components":[`, `"components":[[[[]]],`)},
		{suite: s, name: "wrong product", is: manifest.ErrInvalid, want: []string{`product "other-os" is not "quantix-os"`},
			prep: func(w *world) { w.resign(func(m *manifest.Manifest) { m.Product = "other-os" }) }},
		{suite: s, name: "wrong channel", is: manifest.ErrWrongChannel, want: []string{`channel "beta" is not the configured channel "dev"`},
			prep: func(w *world) { w.resign(func(m *manifest.Manifest) { m.Channel = "beta" }) }},
		{suite: s, name: "artifact path with ..", is: manifest.ErrBadArtifactPath, want: []string{`has a ".." segment`},
			prep: setArtifact("qx-console", "releases/0.0.6/../../../../etc/shadow")},
		{suite: s, name: "artifact path with a scheme", is: manifest.ErrBadArtifactPath, want: []string{"has a scheme"},
			prep: setArtifact("qx-console", "https://evil.example/qx-console.tar.zst")},
		{suite: s, name: "absolute artifact path", is: manifest.ErrBadArtifactPath, want: []string{"absolute"},
			prep: setArtifact("qx-node", "/etc/shadow")},
		{suite: s, name: "percent-escaped artifact path", is: manifest.ErrBadArtifactPath, want: []string{`character '%' not allowed`},
			prep: setArtifact("qx-node", "releases/%2e%2e/%2e%2e/etc/shadow")},
		{suite: s, name: "negative size", is: manifest.ErrInvalid, want: []string{"size -1 is not positive"},
			prep: func(w *world) { w.resign(func(m *manifest.Manifest) { m.Components[0].Size = -1 }) }},
	}
}

// stallClient replaces the fetcher with one that gives up after a short
// stall and does not retry.
func stallClient(o *engine.Options) {
	c, err := fetch.New(o.ServerURL, fetch.Options{Retries: -1, StallTimeout: 300 * time.Millisecond})
	if err != nil {
		panic(err) // o.ServerURL is the test server's, which New accepts
	}
	o.Fetcher = c
}

func artifactCases() []attack {
	const s = "artifact"
	var sent atomic.Int64
	var handlerDone chan struct{}
	return []attack{
		{suite: s, name: "wrong hash", want: []string{"sha256 mismatch", "checksum mismatch", "qx-console"},
			prep: func(w *world) {
				p := w.artifactFile("qx-console")
				b, _ := os.ReadFile(p)
				b[len(b)/2] ^= 0xff
				writeFile(w.t, p, string(b), 0o644)
			}},
		{suite: s, name: "wrong size declared", want: []string{"want", "size mismatch", "qx-console"},
			prep: func(w *world) { w.resign(func(m *manifest.Manifest) { m.Components[0].Size-- }) }},
		{suite: s, name: "truncated on the server", want: []string{"size mismatch", "qx-console"},
			prep: func(w *world) {
				p := w.artifactFile("qx-console")
				b, _ := os.ReadFile(p)
				writeFile(w.t, p, string(b[:len(b)-7]), 0o644)
			}},
		{suite: s, name: "connection cut mid-body", want: []string{"unexpected EOF", "qx-console"},
			prep: func(w *world) {
				size := w.artifactSize("qx-console")
				w.hookArtifacts(func(rw http.ResponseWriter, r *http.Request) {
					rw.Header().Set("Content-Length", fmt.Sprint(size))
					rw.WriteHeader(http.StatusOK)
					rw.Write(make([]byte, size/2))
					rw.(http.Flusher).Flush()
					conn, _, err := http.NewResponseController(rw).Hijack()
					if err == nil {
						conn.Close()
					}
				})
			}},
		{suite: s, name: "endless stream",
			prep: func(w *world) {
				handlerDone = make(chan struct{})
				sent.Store(0)
				w.hookArtifacts(func(rw http.ResponseWriter, r *http.Request) {
					defer close(handlerDone)
					rw.WriteHeader(http.StatusOK) // no Content-Length: chunked, never ending
					chunk := bytes.Repeat([]byte("A"), 32<<10)
					for {
						n, err := rw.Write(chunk)
						sent.Add(int64(n))
						if err != nil {
							return
						}
						rw.(http.Flusher).Flush()
					}
				})
			},
			run: func(w *world) {
				msg, _ := w.attempt("op-endless")
				if !strings.Contains(msg, "server sent more than") || !strings.Contains(msg, "size mismatch") {
					w.t.Errorf("message %q does not name the overlong stream", msg)
				}
				select {
				case <-handlerDone:
				case <-time.After(10 * time.Second):
					w.t.Fatalf("the endless handler still writes %d bytes after the agent gave up", sent.Load())
				}
				// Loopback socket buffers take a few MiB before the write fails; an
				// agent reading on would have taken far more.
				if n := sent.Load(); n > 64<<20 {
					w.t.Errorf("the server could push %d bytes", n)
				}
				limit := w.artifactSize("qx-console")
				filepath.WalkDir(w.state, func(p string, d os.DirEntry, err error) error {
					if err == nil && !d.IsDir() && strings.Contains(p, "downloads") {
						if fi, _ := d.Info(); fi != nil && fi.Size() > limit {
							w.t.Errorf("%s holds %d bytes, more than the declared %d", p, fi.Size(), limit)
						}
					}
					return nil
				})
				w.t.Logf("refused: %s (server pushed %d bytes before its write failed)", msg, sent.Load())
			}},
		{suite: s, name: "slow stream (stall)", mods: []func(*engine.Options){stallClient},
			want: []string{"transfer stalled", "no data for 300ms", "qx-console"},
			prep: func(w *world) {
				size := w.artifactSize("qx-console")
				w.hookArtifacts(func(rw http.ResponseWriter, r *http.Request) {
					rw.Header().Set("Content-Length", fmt.Sprint(size))
					rw.WriteHeader(http.StatusOK)
					rw.Write([]byte("partial"))
					rw.(http.Flusher).Flush()
					select {
					case <-r.Context().Done():
					case <-w.stop:
					}
				})
			}},
		{suite: s, name: "missing on the server", want: []string{"not found", "qx-console"},
			prep: func(w *world) { os.Remove(w.artifactFile("qx-console")) }},
		{suite: s, name: "server errors", want: []string{"giving up after 2 attempts", "HTTP 500"},
			prep: func(w *world) {
				w.hookArtifacts(func(rw http.ResponseWriter, r *http.Request) {
					http.Error(rw, "disk on fire", http.StatusInternalServerError)
				})
			}},
	}
}

// archiveCase serves the archive build returns as qx-console's artifact,
// with a manifest matching its bytes; the declared rawSize is the tar's
// length unless build says otherwise.
func archiveCase(name string, want []string, build func(w *world) (zstd []byte, rawSize int64)) attack {
	return attack{suite: "archive", name: name, want: want, prep: func(w *world) {
		z, raw := build(w)
		w.replaceArtifact("qx-console", z, raw)
	}}
}

// tarCase is archiveCase for a tar of entries compressed as a release would be.
func tarCase(name string, want []string, entries func(w *world) []entry) attack {
	return archiveCase(name, want, func(w *world) ([]byte, int64) {
		raw := rawTar(false, entries(w)...)
		return zst(w.t, raw), int64(len(raw))
	})
}

func archiveCases() []attack {
	unsafe := "unsafe path"
	escape := "symlink escapes the tree"
	special := "special file not allowed"
	return []attack{
		tarCase("entry with ..", []string{`entry "../../../../canary/pwned"`, unsafe, `".." in name`},
			func(w *world) []entry {
				return []entry{reg("bin/qx-console", "x"), reg("../../../../canary/pwned", "pwned")}
			}),
		tarCase("entry with .. to the system temp dir", []string{unsafe, `".." in name`},
			func(w *world) []entry { return []entry{reg(strings.Repeat("../", 24)+"tmp/"+w.escapeMarker, "pwned")} }),
		tarCase("absolute entry name", []string{unsafe, "absolute name"},
			func(w *world) []entry { return []entry{reg("/tmp/"+w.escapeMarker, "pwned")} }),
		tarCase("absolute entry name into the canary", []string{unsafe, "absolute name"},
			func(w *world) []entry { return []entry{reg(filepath.Join(w.canary, "secret"), "pwned")} }),
		tarCase("symlink escape", []string{`entry "lnk"`, escape, "climbs above the root"},
			func(w *world) []entry { return []entry{symlink("lnk", "../../../../canary")} }),
		tarCase("absolute symlink", []string{escape, "absolute target"},
			func(w *world) []entry { return []entry{symlink("lnk", w.canary)} }),
		tarCase("symlink with .. after a name", []string{escape, `".." after a name`},
			func(w *world) []entry {
				return []entry{dirEntry("bin/"), symlink("up", "bin/../../../../../canary")}
			}),
		tarCase("escaping symlink then write through it", []string{escape},
			func(w *world) []entry {
				return []entry{symlink("lnk", "../../../../canary"), reg("lnk/secret", "pwned")}
			}),
		tarCase("in-tree symlink then write through it", []string{`entry "lnk/x"`, unsafe, `parent "lnk" is a symlink`},
			func(w *world) []entry {
				return []entry{dirEntry("sub/"), symlink("lnk", "sub"), reg("lnk/x", "through")}
			}),
		tarCase("symlink to . then write through it", []string{`entry "self/self/x"`, unsafe, `parent "self" is a symlink`},
			func(w *world) []entry {
				return []entry{symlink("self", "."), reg("self/self/x", "through")}
			}),
		tarCase("file replacing a symlink", []string{`entry "lnk"`, "duplicate entry"},
			func(w *world) []entry { return []entry{dirEntry("bin/"), symlink("lnk", "bin"), reg("lnk", "x")} }),
		tarCase("hard link out of the tree", []string{`entry "h"`, "hard links are not allowed"},
			func(w *world) []entry {
				return []entry{{name: "h", typ: tar.TypeLink, mode: 0o644, link: filepath.Join(w.canary, "secret")}}
			}),
		tarCase("relative hard link escape", []string{"hard links are not allowed"},
			func(w *world) []entry {
				return []entry{{name: "h", typ: tar.TypeLink, mode: 0o644, link: "../../../../canary/secret"}}
			}),
		tarCase("character device", []string{`entry "null"`, special, `type '3'`},
			func(w *world) []entry { return []entry{{name: "null", typ: tar.TypeChar, mode: 0o666}} }),
		tarCase("block device", []string{special, `type '4'`},
			func(w *world) []entry { return []entry{{name: "sda", typ: tar.TypeBlock, mode: 0o660}} }),
		tarCase("fifo", []string{special, `type '6'`},
			func(w *world) []entry { return []entry{{name: "pipe", typ: tar.TypeFifo, mode: 0o644}} }),
		tarCase("setuid bit", []string{`entry "bin/su"`, "setuid, setgid or sticky bit not allowed", "04755"},
			func(w *world) []entry {
				return []entry{{name: "bin/su", typ: tar.TypeReg, mode: 0o4755, size: -1, body: "#!/bin/sh\n"}}
			}),
		tarCase("setgid bit", []string{"setuid, setgid or sticky bit not allowed", "02755"},
			func(w *world) []entry {
				return []entry{{name: "bin/sg", typ: tar.TypeReg, mode: 0o2755, size: -1, body: "x"}}
			}),
		tarCase("sticky directory", []string{"setuid, setgid or sticky bit not allowed", "01777"},
			func(w *world) []entry { return []entry{{name: "tmp/", typ: tar.TypeDir, mode: 0o1777}} }),
		tarCase("GNU sparse entry", []string{`entry "sparse"`, special, `type 'S'`},
			func(w *world) []entry {
				return []entry{{name: "sparse", typ: 'S', mode: 0o644, size: -1, body: "0123456789", gnuMagic: true}}
			}),
		tarCase("PAX sparse entry", []string{`entry "sparse"`, special, "sparse file"},
			func(w *world) []entry {
				e := reg("sparse", "0123456789")
				e.pax = [][2]string{{"GNU.sparse.size", "1073741824"}, {"GNU.sparse.numblocks", "1"}, {"GNU.sparse.map", "0,10"}}
				return []entry{e}
			}),
		tarCase("duplicate entry", []string{`entry "VERSION"`, "duplicate entry"},
			func(w *world) []entry { return []entry{reg("VERSION", "0.0.6\n"), reg("VERSION", "9.9.9\n")} }),
		archiveCase("zstd bomb (1 GiB of zeros)", []string{"exceeds size cap"},
			func(w *world) ([]byte, int64) {
				z, n := bomb(1 << 30)
				if len(z) > 64<<10 {
					w.t.Fatalf("bomb is %d bytes", len(z))
				}
				return z, int64(n)
			}),
		archiveCase("declared entry size over 4 GiB", []string{`entry "huge"`, "declared size 5368709120", "exceeds size cap"},
			func(w *world) ([]byte, int64) {
				raw := rawTar(true, entry{name: "huge", typ: tar.TypeReg, mode: 0o644, size: 5 << 30, body: strings.Repeat("h", 512)})
				return zst(w.t, raw), int64(len(raw))
			}),
		archiveCase("declared entry size over 4 GiB, generous manifest", []string{`entry "huge"`, "corrupt archive", "unexpected EOF"},
			func(w *world) ([]byte, int64) {
				raw := rawTar(true, entry{name: "huge", typ: tar.TypeReg, mode: 0o644, size: 5 << 30, body: strings.Repeat("h", 512)})
				return zst(w.t, raw), 6 << 30
			}),
		archiveCase("tar without its end blocks", []string{"corrupt archive", "no end-of-archive marker"},
			func(w *world) ([]byte, int64) {
				raw := rawTar(true, reg("VERSION", "0.0.6\n"))
				return zst(w.t, raw), int64(len(raw))
			}),
		archiveCase("zstd window over the limit", []string{"corrupt archive", "window"},
			func(w *world) ([]byte, int64) {
				return zstdBlock(zstdFrame(31), 0, []byte("0123456789"), 0, true), 10
			}),
		archiveCase("not zstd at all", []string{"corrupt archive", "magic"},
			func(w *world) ([]byte, int64) { return []byte("PK\x03\x04 this is a zip file, not a tar.zst"), 100 }),
	}
}

// busRequest sends data on subject to the agent and returns the reply.
func (w *world) busRequest(subject string, data []byte) *nats.Msg {
	w.t.Helper()
	m, err := w.busClient().Request(subject, data, 5*time.Second)
	if err != nil {
		w.t.Fatalf("request %s: %v", subject, err)
	}
	return m
}

// badAck sends a command the agent must refuse and checks the Ack names
// the cause; badRequest says the refusal is a 400 of the bus itself (the
// payload did not decode), else the engine's.
func (w *world) badAck(subject string, data []byte, badRequest bool, want ...string) subjects.Ack {
	w.t.Helper()
	m := w.busRequest(subject, data)
	var ack subjects.Ack
	if err := subjects.Decode(m.Data, &ack); err != nil {
		w.t.Fatalf("reply %q is not an Ack: %v", m.Data, err)
	}
	if ack.Accepted {
		w.t.Errorf("accepted: %s", m.Data)
	}
	for _, s := range want {
		if !strings.Contains(ack.Reason, s) {
			w.t.Errorf("reason %q does not name %q", ack.Reason, s)
		}
	}
	code := m.Header.Get(micro.ErrorCodeHeader)
	if badRequest && code != "400" {
		w.t.Errorf("error code header %q, want 400", code)
	}
	if !badRequest && code != "" {
		w.t.Errorf("error code header %q on an engine refusal", code)
	}
	w.t.Logf("refused: %s", ack.Reason)
	return ack
}

func busCases() []attack {
	const s = "bus"
	apply := func(w *world) string { return subjects.UpdateApply(w.node) }
	replay := replayCase()
	replay.suite = s
	running := replayWhileRunning()
	running.suite = s
	return []attack{
		{suite: s, name: "malformed JSON", run: func(w *world) {
			w.badAck(apply(w), []byte(`{"operationId":"op-1","forceReboot":`), true, "bad request: apply command", "malformed message")
		}},
		{suite: s, name: "unknown field", run: func(w *world) {
			w.badAck(apply(w), []byte(`{"operationId":"op-1","forceReboot":false,"runAs":"root"}`), true, `unknown field "runAs"`)
		}},
		{suite: s, name: "wrong type", run: func(w *world) {
			w.badAck(apply(w), []byte(`{"operationId":7}`), true, "cannot unmarshal number", "operationId")
		}},
		{suite: s, name: "two JSON values", run: func(w *world) {
			w.badAck(apply(w), []byte(`{"operationId":"a"} {"operationId":"b"}`), true, "trailing data after JSON value")
		}},
		{suite: s, name: "oversized message", run: func(w *world) {
			big := append([]byte(`{"operationId":"op-big","forceReboot":false,"version":"`), bytes.Repeat([]byte("9"), 3<<19)...)
			big = append(big, `"}`...)
			w.badAck(apply(w), big, true, fmt.Sprintf("%d bytes exceeds %d", len(big), subjects.MaxPayload))
		}},
		{suite: s, name: "operationId that is not a token", run: func(w *world) {
			w.badAck(apply(w), []byte(`{"operationId":"../../etc/passwd","forceReboot":false}`), false,
				`operationId "../../etc/passwd": must be 1-128 of A-Za-z0-9._:-`)
		}},
		{suite: s, name: "component that is a path", run: func(w *world) {
			w.badAck(apply(w), []byte(`{"operationId":"op-c","forceReboot":false,"components":["../../etc"]}`), false,
				`component "../../etc" is not configured on this host`)
		}},
		{suite: s, name: "malformed cancel and status", run: func(w *world) {
			w.badAck(subjects.UpdateCancel(w.node), []byte(`[1,2]`), true, "bad request: cancel command")
			m := w.busRequest(subjects.UpdateStatus(w.node), []byte("\x00\xff"))
			var st subjects.StatusReport
			if err := subjects.Decode(m.Data, &st); err != nil {
				w.t.Fatalf("status reply %q: %v", m.Data, err)
			}
			if st.Status != subjects.StatusError || !strings.Contains(st.Message, "bad request: status request") || st.Versions.OS != installed {
				w.t.Errorf("status reply %+v, want an error naming the request, with the versions", st)
			}
		}},
		{suite: s, name: "fleet check with a forged manifest", run: func(w *world) {
			req, _ := json.Marshal(subjects.CheckRequest{SignedManifest: envelope(w.t, w.compactWith(func(m *manifest.Manifest) { m.Serial = 99 }), w.unknownKey)})
			m := w.busRequest(subjects.FleetCheck(), req)
			var r subjects.CheckReply
			if err := subjects.Decode(m.Data, &r); err != nil {
				w.t.Fatalf("reply %q: %v", m.Data, err)
			}
			if r.Available || !strings.Contains(r.Error, "no valid signature") || r.NodeID != w.node {
				w.t.Errorf("reply %+v, want an error naming the signature", r)
			}
			w.eng.Journal().View(func(st *journal.State) {
				if st.Serials[channel] == 99 {
					w.t.Errorf("the forged manifest's serial was recorded")
				}
			})
			w.t.Logf("refused: %s", r.Error)
		}},
		{suite: s, name: "commands addressed to other nodes", run: misaddressed},
		replay,
		running,
	}
}

// compactWith is the offered manifest changed by fn, as compact JSON.
func (w *world) compactWith(fn func(m *manifest.Manifest)) []byte {
	m := w.manifest()
	fn(m)
	b, _ := json.Marshal(m)
	return b
}

// misaddressed checks that the agent subscribes to its own literal subjects
// and no pattern that could take another node's commands, and that commands
// on other nodes' or malformed subjects reach nobody.
func misaddressed(w *world) {
	nc := w.busClient()
	cz, err := w.ns.Connz(&server.ConnzOptions{Subscriptions: true})
	if err != nil {
		w.t.Fatal(err)
	}
	own := map[string]bool{subjects.UpdateCheck(w.node): true, subjects.UpdateApply(w.node): true,
		subjects.UpdateCancel(w.node): true, subjects.UpdateStatus(w.node): true, subjects.FleetCheck(): true}
	found := false
	for _, c := range cz.Conns {
		if c.Name != "qx-agent-"+w.node {
			continue
		}
		found = true
		for _, sub := range c.Subs {
			switch {
			case own[sub]:
			case strings.HasPrefix(sub, subjects.InboxPrefix(w.node)+"."):
				// Its own reply inbox.
			default:
				w.t.Errorf("agent %s subscribes to %q", w.node, sub)
			}
		}
	}
	if !found {
		w.t.Fatalf("agent connection not found on the server")
	}
	bad := []string{
		subjects.UpdateApply("node-zz"),
		subjects.UpdateApply(strings.ToUpper(w.node)),
		subjects.UpdateApply(w.node + "x"),
		"qx.v1.node.*.update.apply",
		"qx.v1.node." + w.node + ".update.apply.extra",
		"qx.v1.node." + w.node + ".update",
		"qx.v1.node." + w.node + ".*",
		"qx.v1.fleet.update.apply",
	}
	for i, subj := range bad {
		data := fmt.Appendf(nil, `{"operationId":"misaddressed-%d","forceReboot":false}`, i)
		m, err := nc.Request(subj, data, 500*time.Millisecond)
		if err == nil {
			w.t.Errorf("%s answered: %s", subj, m.Data)
			continue
		}
		if !errors.Is(err, nats.ErrNoResponders) {
			w.t.Errorf("%s: %v, want no responders", subj, err)
		}
		w.eng.Journal().View(func(s *journal.State) {
			if _, ok := s.FindAck(fmt.Sprintf("misaddressed-%d", i)); ok {
				w.t.Errorf("%s reached the engine", subj)
			}
		})
	}
	// The agent is alive: its own subject answers.
	if _, err := nc.Request(subjects.UpdateStatus(w.node), nil, 2*time.Second); err != nil {
		w.t.Errorf("own status subject: %v", err)
	}
	w.t.Logf("refused: %d misaddressed subjects had no responders; agent subscribes only to its own", len(bad))
}

// replayCase installs the release once (op-first, before the snapshot) and
// is refused once (op-second, nothing to apply); replays of both, over NATS
// and REST, must get the same answers and do nothing.
func replayCase() attack {
	var first, second []byte
	return attack{name: "replayed operationIds after the work",
		prep: func(w *world) {
			first = w.busRequest(subjects.UpdateApply(w.node), []byte(`{"operationId":"op-first","forceReboot":false}`)).Data
			if ev := w.terminal(); ev.Type != subjects.EventCompleted {
				w.t.Fatalf("first apply: %+v", ev)
			}
			second = w.busRequest(subjects.UpdateApply(w.node), []byte(`{"operationId":"op-second","forceReboot":false}`)).Data
			if !strings.Contains(string(second), "nothing to apply") {
				w.t.Fatalf("second apply: %s", second)
			}
		},
		run: func(w *world) {
			for range 3 {
				if got := w.busRequest(subjects.UpdateApply(w.node), []byte(`{"operationId":"op-first","forceReboot":true}`)).Data; !bytes.Equal(got, first) {
					w.t.Errorf("replay of op-first = %s, first answer %s", got, first)
				}
				if got := w.busRequest(subjects.UpdateApply(w.node), []byte(`{"operationId":"op-second","forceReboot":false}`)).Data; !bytes.Equal(got, second) {
					w.t.Errorf("replay of op-second = %s, first answer %s", got, second)
				}
			}
			auth := map[string]string{"Authorization": "Bearer " + token, "Content-Type": "application/json"}
			if a := w.call("POST", "/api/v1/updates/apply", `{"operationId":"op-first"}`, auth); a.code != http.StatusAccepted || a.body["operationId"] != "op-first" {
				w.t.Errorf("REST replay of op-first = %d %s", a.code, a.raw)
			}
			var ack subjects.Ack
			json.Unmarshal(second, &ack)
			if a := w.call("POST", "/api/v1/updates/apply", `{"operationId":"op-second"}`, auth); a.code != http.StatusConflict || a.errMessage() != ack.Reason {
				w.t.Errorf("REST replay of op-second = %d %s, want 409 with %q", a.code, a.raw, ack.Reason)
			}
			if h := w.eng.History(); len(h) != 1 || h[0].OperationID != "op-first" {
				w.t.Errorf("history %+v, want the one operation op-first", h)
			}
			select {
			case ev := <-w.events:
				w.t.Errorf("a replay emitted %+v", ev)
			case <-time.After(100 * time.Millisecond):
			}
			w.t.Logf("refused: 8 replays answered with the first Acks, one operation in the history")
		}}
}

// replayWhileRunning holds the download, replays the running operation's id
// (same Ack) and another id (busy, and the same busy answer again), then
// cancels.
func replayWhileRunning() attack {
	return attack{name: "replayed operationIds while running",
		prep: func(w *world) {
			w.hookArtifacts(func(rw http.ResponseWriter, r *http.Request) {
				select {
				case <-r.Context().Done():
				case <-w.stop:
				}
			})
		},
		run: func(w *world) {
			first := w.busRequest(subjects.UpdateApply(w.node), []byte(`{"operationId":"op-run","forceReboot":false}`)).Data
			var ack subjects.Ack
			if json.Unmarshal(first, &ack); !ack.Accepted {
				w.t.Fatalf("apply = %s", first)
			}
			busy := w.badAck(subjects.UpdateApply(w.node), []byte(`{"operationId":"op-other","forceReboot":false}`), false, "operation op-run is in progress")
			for range 3 {
				if got := w.busRequest(subjects.UpdateApply(w.node), []byte(`{"operationId":"op-run","forceReboot":false}`)).Data; !bytes.Equal(got, first) {
					w.t.Errorf("replay of op-run = %s, first answer %s", got, first)
				}
				again := w.busRequest(subjects.UpdateApply(w.node), []byte(`{"operationId":"op-other","forceReboot":false}`)).Data
				var a subjects.Ack
				if json.Unmarshal(again, &a); a != busy {
					w.t.Errorf("replay of op-other = %s, first answer %+v", again, busy)
				}
			}
			if a := w.busRequest(subjects.UpdateCancel(w.node), []byte(`{"reason":"test over"}`)).Data; !strings.Contains(string(a), `"accepted":true`) {
				w.t.Fatalf("cancel = %s", a)
			}
			if ev := w.terminal(); ev.Type != subjects.EventCancelled || ev.OperationID != "op-run" {
				w.t.Errorf("terminal %+v, want op-run cancelled", ev)
			}
			if h := w.eng.History(); len(h) != 1 || h[0].OperationID != "op-run" {
				w.t.Errorf("history %+v, want the one operation op-run", h)
			}
		}}
}

func restCases() []attack {
	const s = "rest"
	const apply = "/api/v1/updates/apply"
	plain := map[string]string{"Content-Type": "application/json"}
	with := func(extra map[string]string) map[string]string {
		h := map[string]string{"Authorization": "Bearer " + token, "Content-Type": "application/json"}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	expect := func(w *world, a restAnswer, code int, errCode string, want ...string) {
		w.t.Helper()
		if a.code != code || a.errCode() != errCode {
			w.t.Errorf("answer %d %s, want %d %s", a.code, a.raw, code, errCode)
		}
		for _, s := range want {
			if !strings.Contains(a.errMessage(), s) {
				w.t.Errorf("message %q does not name %q", a.errMessage(), s)
			}
		}
		w.t.Logf("refused: %d %s: %s", a.code, a.errCode(), a.errMessage())
	}
	return []attack{
		{suite: s, name: "no token", run: func(w *world) {
			a := w.call("POST", apply, `{"operationId":"op-x"}`, plain)
			expect(w, a, 401, "unauthorized", "missing or wrong bearer token")
		}},
		{suite: s, name: "wrong token", run: func(w *world) {
			a := w.call("POST", apply, "", map[string]string{"Authorization": "Bearer " + token + "x"})
			expect(w, a, 401, "unauthorized", "missing or wrong bearer token")
		}},
		{suite: s, name: "token with the wrong scheme", run: func(w *world) {
			a := w.call("POST", apply, "", map[string]string{"Authorization": "Basic " + token})
			expect(w, a, 401, "unauthorized", "bearer token")
		}},
		{suite: s, name: "settings change without token", run: func(w *world) {
			a := w.call("PUT", "/api/v1/updates/config", `{"autoCheck":true,"autoApply":true}`, plain)
			expect(w, a, 401, "unauthorized", "bearer token")
		}},
		{suite: s, name: "foreign Host on a write", run: func(w *world) {
			a := w.call("POST", apply, "", with(map[string]string{"Host": "evil.example"}))
			expect(w, a, 403, "forbidden_host", `host "evil.example" is not served here`)
		}},
		{suite: s, name: "foreign Host on a read (DNS rebinding)", run: func(w *world) {
			a := w.call("GET", "/api/v1/updates/status", "", map[string]string{"Host": "evil.example:8080"})
			expect(w, a, 403, "forbidden_host", `host "evil.example:8080"`)
		}},
		{suite: s, name: "cross-origin POST", run: func(w *world) {
			a := w.call("POST", apply, `{}`, with(map[string]string{"Origin": "http://evil.example"}))
			expect(w, a, 403, "cross_origin", `origin "http://evil.example" may not change this host`)
		}},
		{suite: s, name: "POST from a sandboxed page (Origin null)", run: func(w *world) {
			a := w.call("POST", apply, "", with(map[string]string{"Origin": "null"}))
			expect(w, a, 403, "cross_origin", `origin "null"`)
		}},
		{suite: s, name: "POST from another machine's page", run: func(w *world) {
			a := w.call("POST", apply, "", with(map[string]string{"Origin": "http://192.168.1.66"}))
			expect(w, a, 403, "cross_origin", `origin "http://192.168.1.66"`)
		}},
		{suite: s, name: "cross-site form POST", run: func(w *world) {
			a := w.call("POST", apply, "operationId=op-x", with(map[string]string{"Content-Type": "text/plain"}))
			expect(w, a, 415, "unsupported_media_type", `content type "text/plain"`)
		}},
		{suite: s, name: "state change via GET", run: func(w *world) {
			for _, p := range []string{apply, "/api/v1/updates/cancel"} {
				a := w.call("GET", p+"?operationId=op-x", "", with(nil))
				expect(w, a, 405, "method_not_allowed", "method not allowed")
			}
			a := w.call("GET", "/api/v1/updates/config?channel=evil&autoCheck=true&autoApply=true", "", nil)
			if a.code != 200 || a.body["channel"] != channel || a.body["autoApply"] != false {
				w.t.Errorf("GET config with parameters = %d %s", a.code, a.raw)
			}
		}},
		{suite: s, name: "oversized body", run: func(w *world) {
			a := w.call("POST", apply, `{"version":"`+strings.Repeat("9", 70<<10)+`"}`, with(nil))
			expect(w, a, 413, "body_too_large", "request body exceeds 65536 bytes")
		}},
		{suite: s, name: "unknown field in the body", run: func(w *world) {
			a := w.call("POST", apply, `{"operationId":"op-x","script":"rm -rf /"}`, with(nil))
			expect(w, a, 400, "invalid_request", `unknown field "script"`)
		}},
		{suite: s, name: "invalid settings", run: func(w *world) {
			a := w.call("PUT", "/api/v1/updates/config", `{"checkInterval":"1ms","channel":"../../etc"}`, with(nil))
			expect(w, a, 400, "invalid_settings", `channel "../../etc"`)
		}},
	}
}

// TestArtifactsSharingAFileName: a valid signed manifest may put two
// components' artifacts in different directories under one file name. Each
// component must be installed from its own verified bytes, never from the
// other's download.
func TestArtifactsSharingAFileName(t *testing.T) {
	w := newWorld(t, natstest.Start(t), "node-share")
	w.resign(func(m *manifest.Manifest) {
		for i := range m.Components {
			c := &m.Components[i]
			b, err := os.ReadFile(filepath.Join(w.repo, c.Artifact))
			if err != nil {
				t.Fatal(err)
			}
			c.Artifact = "releases/" + offered + "-" + c.Name + "/payload.tar.zst"
			writeFile(t, filepath.Join(w.repo, c.Artifact), string(b), 0o644)
		}
	})
	ack, err := w.eng.Apply(context.Background(), subjects.ApplyCommand{OperationID: "op-share"})
	if err != nil || !ack.Accepted {
		t.Fatalf("Apply = %+v, %v", ack, err)
	}
	if ev := w.terminal(); ev.Type != subjects.EventCompleted {
		t.Fatalf("terminal event %+v", ev)
	}
	for _, c := range []string{"qx-node", "qx-console"} {
		b, err := os.ReadFile(filepath.Join(w.root, "opt/quantix", c, "bin", c))
		if err != nil || string(b) != "new "+c+"\n" {
			t.Errorf("%s installed %q, %v; want its own new tree", c, b, err)
		}
	}
}
