package hostile_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/quantix-os/update-agent/internal/api"
	"github.com/quantix-os/update-agent/internal/archive"
	"github.com/quantix-os/update-agent/internal/bus"
	"github.com/quantix-os/update-agent/internal/engine"
	"github.com/quantix-os/update-agent/internal/fetch"
	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/internal/qxtest"
	"github.com/quantix-os/update-agent/internal/release"
	"github.com/quantix-os/update-agent/internal/updatesrv"
	"github.com/quantix-os/update-agent/subjects"
)

// The host under attack runs installed at 0.0.5; the Update Server offers a
// correctly signed 0.0.6 until a case's prep replaces part of it.
const (
	channel   = "dev"
	installed = "0.0.5"
	offered   = "0.0.6"
	// token guards the REST facade's writes.
	token = "hostile-test-token"
	// canarySecret sits in the canary directory next to the host root.
	canarySecret = "canary: must never change\n"
)

// world is one host under attack, laid out so that every byte the agent may
// write outside its own state dir is under base:
//
//	base/host/root     the host root (components, versions.json, staging beside each install dir)
//	base/host/canary   a sibling of the root that escaping entries aim at
//	base/host/state    the agent's state dir (journal, downloads): the agent's own
//	base/tools         rc-service stand-in and the log of its calls
//	base/repo, src     the Update Server's release repository and sources
type world struct {
	t                        *testing.T
	node                     string
	base, root, canary       string
	state, repo, src, rcLog  string
	key                      ed25519.PrivateKey
	pub                      ed25519.PublicKey
	srv                      *httptest.Server
	ns                       *server.Server
	eng                      *engine.Engine
	events                   <-chan subjects.UpdateEvent
	stop                     chan struct{} // closed at cleanup: ends handlers that hold a request
	mu                       sync.Mutex
	onArtifact, onManifest   http.HandlerFunc   // hostile Update Server behaviour, when set
	natsConn                 *nats.Conn         // vDC's side, once busClient ran
	restURL                  string             // once rest ran
	unknownKey               ed25519.PrivateKey // a key the agent does not trust
	escapeMarker             string             // a name deep escapes aim at in the system temp dir
	originalEnvelope, oldRaw []byte
}

func writeFile(t testing.TB, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// newWorld builds the host, releases 0.0.6, serves it and starts the engine.
func newWorld(t *testing.T, ns *server.Server, node string, mods ...func(*engine.Options)) *world {
	t.Helper()
	w := &world{t: t, node: node, base: t.TempDir(), ns: ns, stop: make(chan struct{})}
	w.root = filepath.Join(w.base, "host", "root")
	w.canary = filepath.Join(w.base, "host", "canary")
	w.state = filepath.Join(w.base, "host", "state")
	w.repo = filepath.Join(w.base, "repo")
	w.src = filepath.Join(w.base, "src")
	w.rcLog = filepath.Join(w.base, "tools", "rc.log")
	w.escapeMarker = "qx-hostile-escape-" + node + "-" + fmt.Sprint(os.Getpid())

	writeFile(t, filepath.Join(w.root, engine.VersionsFile),
		`{"os":"0.0.5","components":{"qx-node":"0.0.5","qx-console":"0.0.5"}}`, 0o644)
	writeFile(t, filepath.Join(w.root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n", 0o644)
	for _, c := range []string{"qx-node", "qx-console"} {
		writeFile(t, filepath.Join(w.root, "opt/quantix", c, "bin", c), "old "+c+"\n", 0o755)
		writeFile(t, filepath.Join(w.root, "opt/quantix", c, "VERSION"), installed+"\n", 0o644)
		writeFile(t, filepath.Join(w.src, c, "bin", c), "new "+c+"\n", 0o755)
		writeFile(t, filepath.Join(w.src, c, "VERSION"), offered+"\n", 0o644)
	}
	writeFile(t, filepath.Join(w.canary, "secret"), canarySecret, 0o600)
	rc := filepath.Join(w.base, "tools", "rc-service")
	writeFile(t, rc, "#!/bin/sh\necho \"$*\" >>"+w.rcLog+"\n", 0o755)

	var err error
	if w.pub, w.key, err = ed25519.GenerateKey(nil); err != nil {
		t.Fatal(err)
	}
	if _, w.unknownKey, err = ed25519.GenerateKey(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := release.Create(context.Background(), release.Spec{
		Repo: w.repo, Channel: channel, Version: offered, Key: w.key,
		Components: map[string]string{"qx-node": filepath.Join(w.src, "qx-node"), "qx-console": filepath.Join(w.src, "qx-console")},
	}); err != nil {
		t.Fatalf("release %s: %v", offered, err)
	}
	w.originalEnvelope = w.readRepo("channels/dev/manifest.signed.json")
	w.oldRaw = w.readRepo("channels/dev/manifest.json")

	inner := updatesrv.Handler(w.repo, nil)
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		art, man := w.onArtifact, w.onManifest
		w.mu.Unlock()
		switch {
		case art != nil && strings.Contains(r.URL.Path, "/releases/"):
			art(rw, r)
		case man != nil && strings.HasSuffix(r.URL.Path, "/manifest/signed"):
			man(rw, r)
		default:
			inner.ServeHTTP(rw, r)
		}
	}))
	// Cleanups run last first: the engine stops, then held handlers are
	// let go, then the server closes.
	t.Cleanup(w.srv.Close)
	t.Cleanup(func() { close(w.stop) })

	client, err := fetch.New(w.srv.URL, fetch.Options{Retries: 1, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, StallTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	o := engine.Options{
		NodeID: node, Root: w.root, StateDir: w.state, RCService: rc, Keys: []ed25519.PublicKey{w.pub}, Fetcher: client,
		ServerURL: w.srv.URL, Channel: channel, CheckInterval: time.Hour,
		Components: map[string]engine.Component{
			"qx-node":    {Dir: filepath.Join(w.root, "opt/quantix/qx-node"), Service: "qx-node"},
			"qx-console": {Dir: filepath.Join(w.root, "opt/quantix/qx-console"), Service: "qx-console"},
		},
	}
	for _, m := range mods {
		m(&o)
	}
	w.eng, err = engine.New(o)
	if err != nil {
		t.Fatalf("engine.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ev, unsub := w.eng.Subscribe()
	w.events = ev
	w.eng.Start(ctx)
	t.Cleanup(func() { cancel(); unsub(); w.eng.Wait() })
	return w
}

func (w *world) readRepo(rel string) []byte {
	w.t.Helper()
	b, err := os.ReadFile(filepath.Join(w.repo, rel))
	if err != nil {
		w.t.Fatal(err)
	}
	return b
}

func (w *world) hookArtifacts(h http.HandlerFunc) {
	w.mu.Lock()
	w.onArtifact = h
	w.mu.Unlock()
}

func (w *world) hookManifest(h http.HandlerFunc) {
	w.mu.Lock()
	w.onManifest = h
	w.mu.Unlock()
}

// manifest is the channel's current manifest as the release tool wrote it.
func (w *world) manifest() *manifest.Manifest {
	w.t.Helper()
	m, err := release.Channel(w.repo, channel)
	if err != nil {
		w.t.Fatal(err)
	}
	return m
}

// envelope signs raw exactly as given (a hostile signer holding a key does
// not run manifest.Sign's checks) with each key.
func envelope(t testing.TB, raw []byte, keys ...ed25519.PrivateKey) []byte {
	t.Helper()
	env := manifest.Signed{Signed: raw, Signatures: []manifest.Signature{}}
	for _, k := range keys {
		env.Signatures = append(env.Signatures, manifest.Signature{KeyID: manifest.KeyID(k.Public().(ed25519.PublicKey)), Sig: ed25519.Sign(k, raw)})
	}
	b, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// publish makes the Update Server serve env as the channel's signed manifest.
func (w *world) publish(env []byte) {
	w.t.Helper()
	writeFile(w.t, filepath.Join(w.repo, "channels/dev/manifest.signed.json"), string(env), 0o644)
}

// publishRaw publishes manifest bytes signed by the trusted key.
func (w *world) publishRaw(raw []byte) {
	w.t.Helper()
	writeFile(w.t, filepath.Join(w.repo, "channels/dev/manifest.json"), string(raw), 0o644)
	w.publish(envelope(w.t, raw, w.key))
}

// resign changes the manifest through fn and publishes it signed by the
// trusted key, valid or not.
func (w *world) resign(fn func(m *manifest.Manifest)) {
	w.t.Helper()
	m := w.manifest()
	fn(m)
	raw, err := json.Marshal(m)
	if err != nil {
		w.t.Fatal(err)
	}
	w.publishRaw(raw)
}

// replaceArtifact serves data as component name's artifact under a manifest
// whose size and hash match it, so only the content is hostile; rawSize > 0
// also sets the declared uncompressed size.
func (w *world) replaceArtifact(name string, data []byte, rawSize int64) {
	w.t.Helper()
	w.resign(func(m *manifest.Manifest) {
		for i := range m.Components {
			c := &m.Components[i]
			if c.Name != name {
				continue
			}
			writeFile(w.t, filepath.Join(w.repo, c.Artifact), string(data), 0o644)
			sum := sha256.Sum256(data)
			c.SHA256, c.Size = hex.EncodeToString(sum[:]), int64(len(data))
			if rawSize > 0 {
				c.RawSize = rawSize
			}
		}
	})
}

// artifactFile is the repository file of component name's artifact.
func (w *world) artifactFile(name string) string {
	w.t.Helper()
	for _, c := range w.manifest().Components {
		if c.Name == name {
			return filepath.Join(w.repo, c.Artifact)
		}
	}
	w.t.Fatalf("no component %s", name)
	return ""
}

func (w *world) artifactSize(name string) int64 {
	for _, c := range w.manifest().Components {
		if c.Name == name {
			return c.Size
		}
	}
	return -1
}

// snapshot is every file, directory and link under base except the agent's
// state dir and the Update Server's side: path → type, mode and content hash.
// Modification times are left out: creating the staging dir beside an
// install dir touches its parent, and that is the one place writes may go.
func (w *world) snapshot() map[string]string {
	w.t.Helper()
	out := map[string]string{}
	skip := map[string]bool{w.state: true, w.repo: true, w.src: true}
	err := filepath.WalkDir(w.base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if skip[p] {
			return filepath.SkipDir
		}
		rel, _ := filepath.Rel(w.base, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			out[rel] = "symlink -> " + l
		case info.IsDir():
			out[rel] = fmt.Sprintf("dir %v", info.Mode())
		case info.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			out[rel] = fmt.Sprintf("file %v %d %x", info.Mode(), len(b), sum[:8])
		default:
			out[rel] = fmt.Sprintf("special %v", info.Mode())
		}
		return nil
	})
	if err != nil {
		w.t.Fatalf("snapshot: %v", err)
	}
	return out
}

// diff lists what differs between two snapshots.
func diff(before, after map[string]string) []string {
	var d []string
	for k, v := range before {
		if a, ok := after[k]; !ok {
			d = append(d, "removed "+k)
		} else if a != v {
			d = append(d, fmt.Sprintf("changed %s: %s → %s", k, v, a))
		}
	}
	for k, v := range after {
		if _, ok := before[k]; !ok {
			d = append(d, "appeared "+k+" ("+v+")")
		}
	}
	sort.Strings(d)
	return d
}

// terminal waits for the operation's terminal event.
func (w *world) terminal() subjects.UpdateEvent {
	w.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev := <-w.events:
			if ev.Type.Terminal() {
				return ev
			}
		case <-timeout:
			w.t.Fatalf("no terminal event within 30s; status %+v", w.eng.Status())
		}
	}
}

// attempt applies the offered release and returns why it did not happen:
// the synchronous refusal, or the message of the failed operation.
func (w *world) attempt(opID string) (msg string, refusal error) {
	w.t.Helper()
	ack, err := w.eng.Apply(context.Background(), subjects.ApplyCommand{OperationID: opID})
	if err != nil || !ack.Accepted {
		if ack.Accepted {
			w.t.Errorf("Apply returned %v with an accepted Ack", err)
		}
		if ack.Reason == "" {
			w.t.Errorf("refusal without a reason: %+v, %v", ack, err)
		}
		return ack.Reason, err
	}
	ev := w.terminal()
	if ev.Type != subjects.EventFailed || ev.Status != subjects.StatusError {
		w.t.Errorf("terminal event %s (%s: %s), want failed", ev.Type, ev.Status, ev.Message)
	}
	return ev.Message, nil
}

// busClient connects this host's agent to the bus (real bus.Conn serving the
// real engine) and returns vDC's connection, once the agent answers.
func (w *world) busClient() *nats.Conn {
	w.t.Helper()
	if w.natsConn != nil {
		return w.natsConn
	}
	c, err := bus.Connect(context.Background(), bus.Options{NodeID: w.node, URL: w.ns.ClientURL()})
	if err != nil {
		w.t.Fatalf("bus.Connect: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx, w.eng) }()
	w.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			w.t.Errorf("Serve: %v", err)
		}
		c.Close()
	})
	nc, err := nats.Connect(w.ns.ClientURL())
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(nc.Close)
	qxtest.WaitFor(w.t, 20*time.Second, w.node+" answering on the bus", func() bool {
		_, err := nc.Request(subjects.UpdateStatus(w.node), nil, time.Second)
		return err == nil
	})
	w.natsConn = nc
	return nc
}

// rest serves the real REST facade over this host's engine on a loopback
// listener and returns its base URL.
func (w *world) rest() string {
	w.t.Helper()
	if w.restURL != "" {
		return w.restURL
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		w.t.Fatal(err)
	}
	s := api.New(w.eng, api.Options{Token: token})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln, "", "") }()
	w.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			w.t.Errorf("api Serve: %v", err)
		}
	})
	w.restURL = "http://" + ln.Addr().String()
	return w.restURL
}

// restAnswer is a REST answer: status and, for errors, the error body.
type restAnswer struct {
	code int
	body map[string]any
	raw  string
}

func (a restAnswer) errCode() string {
	e, _ := a.body["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

func (a restAnswer) errMessage() string {
	e, _ := a.body["error"].(map[string]any)
	s, _ := e["message"].(string)
	return s
}

// call sends one request to the facade; hdr may set Host.
func (w *world) call(method, path, body string, hdr map[string]string) restAnswer {
	w.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, w.rest()+path, rd)
	if err != nil {
		w.t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := restAnswer{code: resp.StatusCode, raw: string(b)}
	_ = json.Unmarshal(b, &a.body)
	return a
}

// Archive building: entries are written as raw ustar headers so that
// anything a hostile packer could put in a tar can be expressed.

type entry struct {
	name     string
	typ      byte
	mode     int64
	size     int64 // declared; -1: the body's length
	body     string
	link     string
	pax      [][2]string // records of a PAX header written before this entry
	gnuMagic bool        // old GNU header (for 'S' sparse)
}

func reg(name, body string) entry {
	return entry{name: name, typ: tar.TypeReg, mode: 0o644, size: -1, body: body}
}
func dirEntry(name string) entry { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, target string) entry {
	return entry{name: name, typ: tar.TypeSymlink, mode: 0o777, link: target}
}

func pad(b []byte) []byte {
	if r := len(b) % 512; r != 0 {
		b = append(b, make([]byte, 512-r)...)
	}
	return b
}

// header is one raw 512-byte tar header with a valid checksum.
func header(e entry, size int64) []byte {
	h := make([]byte, 512)
	copy(h[0:100], e.name)
	copy(h[100:108], fmt.Sprintf("%07o\x00", e.mode))
	copy(h[108:116], "0000000\x00")
	copy(h[116:124], "0000000\x00")
	copy(h[124:136], fmt.Sprintf("%011o\x00", size))
	copy(h[136:148], fmt.Sprintf("%011o\x00", time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Unix()))
	h[156] = e.typ
	copy(h[157:257], e.link)
	if e.gnuMagic {
		copy(h[257:265], "ustar  \x00")
		// One sparse region (offset 0, 10 bytes) of a 1 GiB file.
		copy(h[386:398], fmt.Sprintf("%011o\x00", 0))
		copy(h[398:410], fmt.Sprintf("%011o\x00", 10))
		copy(h[483:495], fmt.Sprintf("%011o\x00", int64(1)<<30))
	} else {
		copy(h[257:263], "ustar\x00")
		copy(h[263:265], "00")
	}
	copy(h[148:156], "        ")
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

// paxRecords encodes PAX records ("%d key=value\n", the length counting itself).
func paxRecords(recs [][2]string) []byte {
	var out []byte
	for _, kv := range recs {
		rec := " " + kv[0] + "=" + kv[1] + "\n"
		n := len(rec) + 1
		for len(fmt.Sprint(n))+len(rec) != n {
			n++
		}
		out = append(out, fmt.Sprint(n)+rec...)
	}
	return out
}

// rawTar is the uncompressed tar of entries, with the end-of-archive blocks
// unless truncated.
func rawTar(truncated bool, entries ...entry) []byte {
	var out []byte
	for _, e := range entries {
		if len(e.pax) > 0 {
			recs := paxRecords(e.pax)
			out = append(out, header(entry{name: "PaxHeaders/" + e.name, typ: tar.TypeXHeader, mode: 0o644}, int64(len(recs)))...)
			out = append(out, pad(recs)...)
		}
		size := e.size
		if size < 0 {
			size = int64(len(e.body))
		}
		out = append(out, header(e, size)...)
		out = append(out, pad([]byte(e.body))...)
	}
	if !truncated {
		out = append(out, make([]byte, 1024)...)
	}
	return out
}

// zst compresses raw with the release tool's encoder.
func zst(t testing.TB, raw []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := archive.Compress(&b, bytes.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// zstdFrame starts a zstd frame by hand: magic, a descriptor with no content
// size or checksum, and a window of 2^windowLog bytes.
func zstdFrame(windowLog int) []byte {
	return []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, byte((windowLog - 10) << 3)}
}

// zstdBlock appends one block: raw (kind 0) with data, or RLE (kind 1) of n
// copies of data[0].
func zstdBlock(out []byte, kind int, data []byte, n int, last bool) []byte {
	size := len(data)
	if kind == 1 {
		size = n
		data = data[:1]
	}
	h := uint32(size)<<3 | uint32(kind)<<1
	if last {
		h |= 1
	}
	out = append(out, byte(h), byte(h>>8), byte(h>>16))
	return append(out, data...)
}

// bomb is a valid tar (one 1 KiB file and the end blocks) followed by
// total bytes of zeros, in RLE blocks: a few KiB that decompress to total.
func bomb(total int) (zstd []byte, tarLen int) {
	head := rawTar(false, entry{name: "bomb", typ: tar.TypeReg, mode: 0o644, size: 1024, body: strings.Repeat("B", 1024)})
	out := zstdBlock(zstdFrame(23), 0, head, 0, false)
	const block = 128 << 10
	for total > 0 {
		n := min(total, block)
		total -= n
		out = zstdBlock(out, 1, []byte{0}, n, total == 0)
	}
	return out, len(head)
}
