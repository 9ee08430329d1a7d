package ui_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/quantix-os/update-agent/internal/api"
	"github.com/quantix-os/update-agent/internal/engine"
	"github.com/quantix-os/update-agent/internal/fetch"
	"github.com/quantix-os/update-agent/internal/release"
	"github.com/quantix-os/update-agent/internal/ui"
	"github.com/quantix-os/update-agent/internal/updatesrv"
	"github.com/quantix-os/update-agent/subjects"
)

// screenshotsEnv names a directory that also receives the screenshots
// (docs/screenshots is made with it).
const screenshotsEnv = "QX_UPDATE_SCREENSHOTS"

const token = "s3cret-page-token"

// stand is everything behind the page: a release repository on the real
// Update Server (its artifact downloads slowed on demand), a host root at
// 0.0.5 with a stand-in rc-service, a real engine, and the real REST facade
// serving ui.FS(), all on 127.0.0.1.
type stand struct {
	t          *testing.T
	dir        string
	repo       string
	key        ed25519.PrivateKey
	eng        *engine.Engine
	url        string // the facade
	slow       atomic.Bool
	streamDown atomic.Bool // the event stream answers 503
}

func writeFile(t *testing.T, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
}

// slowWriter sends a response in small pieces, so a download takes long
// enough for the page to show its progress.
type slowWriter struct {
	http.ResponseWriter
	ctx context.Context
}

const (
	slowChunk = 16 << 10
	slowPause = 50 * time.Millisecond
)

func (w slowWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := min(len(p), slowChunk)
		m, err := w.ResponseWriter.Write(p[:c])
		n += m
		if err != nil {
			return n, err
		}
		w.ResponseWriter.(http.Flusher).Flush()
		p = p[c:]
		select {
		case <-time.After(slowPause):
		case <-w.ctx.Done():
			return n, w.ctx.Err()
		}
	}
	return n, nil
}

func newStand(t *testing.T) *stand {
	t.Helper()
	s := &stand{t: t, dir: t.TempDir()}
	root := filepath.Join(s.dir, "root")
	s.repo = filepath.Join(s.dir, "repo")
	writeFile(t, filepath.Join(root, engine.VersionsFile),
		[]byte(`{"os":"0.0.5","components":{"qx-node":"0.0.5","qx-console":"0.0.5","host-ui":"0.0.5"}}`), 0o644)
	for _, c := range []string{"qx-node", "qx-console"} {
		writeFile(t, filepath.Join(root, "opt/quantix", c, "VERSION"), []byte("0.0.5\n"), 0o644)
	}
	pub, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	s.key = key
	s.release("0.0.5", 0) // what the host runs: a check finds it up to date

	updates := updatesrv.Handler(s.repo, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.slow.Load() && strings.Contains(r.URL.Path, "/releases/") {
			w = slowWriter{w, r.Context()}
		}
		updates.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)

	rc := filepath.Join(s.dir, "rc-service")
	writeFile(t, rc, []byte("#!/bin/sh\necho \"$*\" >>"+filepath.Join(s.dir, "rc.log")+"\n"), 0o755)
	client, err := fetch.New(srv.URL, fetch.Options{Retries: -1, StallTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s.eng, err = engine.New(engine.Options{
		NodeID: "node-a", Root: root, StateDir: filepath.Join(s.dir, "state"), RCService: rc,
		Keys: []ed25519.PublicKey{pub}, Fetcher: client, ServerURL: srv.URL, Channel: "dev", CheckInterval: time.Hour,
		Components: map[string]engine.Component{
			"qx-node":    {Dir: filepath.Join(root, "opt/quantix/qx-node"), Service: "qx-node"},
			"qx-console": {Dir: filepath.Join(root, "opt/quantix/qx-console"), Service: "qx-console"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.eng.Start(ctx)
	t.Cleanup(func() { cancel(); s.eng.Wait() })

	facade := api.New(s.eng, api.Options{Token: token, Page: ui.FS()}).Handler()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.streamDown.Load() && r.URL.Path == "/api/v1/updates/events" {
			http.Error(w, "stream down for the test", http.StatusServiceUnavailable)
			return
		}
		facade.ServeHTTP(w, r)
	})}
	go hs.Serve(ln)
	// Close, not Shutdown: the page's event stream never ends by itself.
	t.Cleanup(func() { hs.Close() })
	s.url = "http://" + ln.Addr().String()
	return s
}

// release publishes version on channel dev; with blob > 0 each component
// carries that many random (incompressible) bytes, so its download is slow.
func (s *stand) release(version string, blob int) {
	s.t.Helper()
	comps := map[string]string{}
	for _, c := range []string{"qx-node", "qx-console"} {
		src := filepath.Join(s.dir, "src", version, c)
		writeFile(s.t, filepath.Join(src, "VERSION"), []byte(version+"\n"), 0o644)
		writeFile(s.t, filepath.Join(src, "bin", c), []byte("#!/bin/sh\necho "+c+" "+version+"\n"), 0o755)
		if blob > 0 {
			b := make([]byte, blob)
			rand.Read(b)
			writeFile(s.t, filepath.Join(src, "lib", "blob"), b, 0o644)
		}
		comps[c] = src
	}
	_, err := release.Create(context.Background(), release.Spec{
		Repo: s.repo, Channel: "dev", Version: version, Key: s.key, Components: comps,
		Notes: "Quantix-OS " + version + ":\n- faster VM live migration\n- qx-console: clearer storage alerts",
	})
	if err != nil {
		s.t.Fatalf("release %s: %v", version, err)
	}
}

// corrupt flips a byte of an artifact after it was signed.
func (s *stand) corrupt(version, component string) {
	s.t.Helper()
	p := filepath.Join(s.repo, "releases", version, component+"-"+version+".tar.zst")
	b, err := os.ReadFile(p)
	if err != nil {
		s.t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	writeFile(s.t, p, b, 0o644)
}

// chromium finds Debian's chromium; the test fails without it (CI installs it).
func chromium(t *testing.T) string {
	t.Helper()
	if fi, err := os.Stat("/usr/bin/chromium"); err == nil && !fi.IsDir() {
		return "/usr/bin/chromium"
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	t.Fatal("chromium not found: install Debian's chromium (apt-get install chromium)")
	return ""
}

// browser is a headless chromium tab, with the page's console kept.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu      sync.Mutex
	console []chromedp.ConsoleMessage
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1100, 900),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancelTab(); cancelAlloc() })
	// The first Do starts the browser; its life is ctx's, with no deadline.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	b := &browser{t: t, ctx: ctx}
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.console = append(b.console, m)
			b.mu.Unlock()
		}
	}()
	return b
}

func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v\npage: %s", what, err, b.state())
	}
}

func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// text is an element's textContent.
func (b *browser) text(id string) string {
	b.t.Helper()
	return eval[string](b, fmt.Sprintf(`document.getElementById(%q).textContent.trim()`, id))
}

// state sums up the page for a failure message.
func (b *browser) state() string {
	ctx, cancel := context.WithTimeout(b.ctx, 3*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(() => {
		const t = id => (document.getElementById(id) || {}).textContent;
		return JSON.stringify({badge: t('status-badge'), message: t('status-message'), error: t('error-message'),
			action: t('action-message'), conn: t('conn'), os: t('ver-os'), progress: t('progress-text')});
	})()`))
	if err != nil {
		return "unreadable: " + err.Error()
	}
	return s
}

// waitFor polls a JavaScript condition in the page.
func (b *browser) waitFor(what, cond string, timeout time.Duration) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout+5*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](cond, chromedp.WithPollingTimeout(timeout), chromedp.WithPollingInterval(25*time.Millisecond)))
	if err != nil {
		b.t.Fatalf("waiting for %s: %v\npage: %s", what, err, b.state())
	}
}

func (b *browser) waitBadge(label string, timeout time.Duration) {
	b.t.Helper()
	b.waitFor("status "+label, fmt.Sprintf(`document.getElementById('status-badge').textContent === %q`, label), timeout)
}

// screenshot keeps a PNG of the whole page as a test artifact, and in
// $QX_UPDATE_SCREENSHOTS when set.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if len(png) < 8 || string(png[1:4]) != "PNG" {
		b.t.Fatalf("screenshot %s is not a PNG", name)
	}
	dirs := []string{b.t.ArtifactDir()}
	if d := os.Getenv(screenshotsEnv); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.t.Fatal(err)
		}
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, name+".png"), png, 0o644); err != nil {
			b.t.Fatal(err)
		}
	}
}

// settleBar gives the progress bar's width transition a moment to reach
// its value, so the screenshot shows what the text says. Only cosmetic: it
// does not fail.
func (b *browser) settleBar() {
	ctx, cancel := context.WithTimeout(b.ctx, 2*time.Second)
	defer cancel()
	chromedp.Run(ctx, chromedp.Poll[bool](`(() => {
		const bar = document.getElementById('progress'), fill = document.getElementById('progress-fill');
		const pct = fill.getBoundingClientRect().width / bar.getBoundingClientRect().width * 100;
		return Math.abs(pct - Number(bar.getAttribute('aria-valuenow'))) < 2;
	})()`, chromedp.WithPollingTimeout(time.Second), chromedp.WithPollingInterval(20*time.Millisecond)))
}

// pageState is what the progress watch reads each round.
type pageState struct {
	Badge    string `json:"badge"`
	ValueNow string `json:"valueNow"`
	Hidden   bool   `json:"hidden"`
}

func TestUpdatesPage(t *testing.T) {
	start := time.Now()
	s := newStand(t)
	b := newBrowser(t)

	// The page loads with what the host runs, and follows the stream.
	b.do("open the page", chromedp.Navigate(s.url+"/"))
	b.waitFor("the installed versions", `document.getElementById('ver-os').textContent === '0.0.5'`, 10*time.Second)
	b.waitFor("the event stream", `document.getElementById('conn').dataset.mode === 'live'`, 10*time.Second)
	for id, want := range map[string]string{"ver-qx-node": "0.0.5", "ver-qx-console": "0.0.5", "ver-host-ui": "0.0.5", "status-badge": "Idle", "node-id": "node-a"} {
		if got := b.text(id); got != want {
			t.Errorf("#%s = %q, want %q", id, got, want)
		}
	}
	if got := eval[string](b, `document.getElementById('set-server').value`); !strings.HasPrefix(got, "http://127.0.0.1:") {
		t.Errorf("server URL field = %q", got)
	}

	// Nothing newer yet.
	b.do("click Check", chromedp.Click(chromedp.ID("check-btn")))
	b.waitBadge("Up to Date", 10*time.Second)
	if eval[bool](b, `document.getElementById('apply-btn').disabled`) != true {
		t.Error("Apply is enabled with nothing to apply")
	}
	b.screenshot("up-to-date")

	// 0.0.6 is released: a check offers it, with its two components.
	s.release("0.0.6", 320<<10)
	b.do("click Check", chromedp.Click(chromedp.ID("check-btn")))
	b.waitBadge("Update Available", 10*time.Second)
	for id, want := range map[string]string{"available-version": "0.0.6", "component-count": "2"} {
		if got := b.text(id); got != want {
			t.Errorf("#%s = %q, want %q", id, got, want)
		}
	}
	if got := b.text("download-size"); !strings.HasSuffix(got, " KiB") {
		t.Errorf("download size %q, want it in KiB", got)
	}
	if got := b.text("release-notes"); !strings.Contains(got, "faster VM live migration") {
		t.Errorf("release notes %q", got)
	}
	if eval[bool](b, `document.getElementById('apply-btn').disabled`) {
		t.Fatal("Apply is disabled with an update available")
	}
	b.screenshot("available")

	// Apply: the facade wants the token first. Downloads are slow now, so
	// the progress bar has time to move; an observer keeps every value it
	// takes, and a marker shows the page is never reloaded.
	s.slow.Store(true)
	b.do("watch the progress bar", chromedp.Evaluate[chromedp.Void](`
		window.__qxSeen = [];
		window.__qxMarker = 'same-page';
		new MutationObserver(() => {
			const v = document.getElementById('progress').getAttribute('aria-valuenow');
			if (v !== null) window.__qxSeen.push(Number(v));
		}).observe(document.getElementById('progress'), {attributes: true, attributeFilter: ['aria-valuenow']});
	`))
	b.do("click Apply", chromedp.Click(chromedp.ID("apply-btn")))
	b.waitFor("the token prompt", `document.getElementById('token-dialog').open`, 10*time.Second)
	b.do("enter the token", chromedp.SendKeys(chromedp.ID("token-input"), token), chromedp.Click(chromedp.ID("token-submit")))

	var shot bool
	var seen []string
	deadline := time.Now().Add(25 * time.Second)
	for {
		st := eval[pageState](b, `({badge: document.getElementById('status-badge').textContent,
			valueNow: document.getElementById('progress').getAttribute('aria-valuenow') || '',
			hidden: document.getElementById('progress-panel').hidden})`)
		if !st.Hidden && st.ValueNow != "" && (len(seen) == 0 || seen[len(seen)-1] != st.ValueNow) {
			seen = append(seen, st.ValueNow)
		}
		if !shot && !st.Hidden && st.ValueNow != "" && st.ValueNow != "0" && st.ValueNow != "100" {
			b.settleBar()
			b.screenshot("downloading")
			shot = true
		}
		if st.Badge == "Complete" {
			break
		}
		if st.Badge == "Error" || time.Now().After(deadline) {
			t.Fatalf("update did not complete: %s", b.state())
		}
		time.Sleep(40 * time.Millisecond)
	}
	s.slow.Store(false)
	observed := eval[[]float64](b, `window.__qxSeen`)
	if !slices.ContainsFunc(observed, func(v float64) bool { return v > 0 && v < 100 }) {
		t.Errorf("aria-valuenow took %v (polled %v): never strictly between 0 and 100", observed, seen)
	}
	if !slices.IsSorted(observed) {
		t.Errorf("progress went backwards: %v", observed)
	}
	if !shot {
		t.Error("no screenshot of the download in progress")
	}
	t.Logf("progress values seen: %v", observed)
	if m := eval[string](b, `String(window.__qxMarker)`); m != "same-page" {
		t.Errorf("the page was reloaded (marker %q)", m)
	}
	if got := eval[string](b, `sessionStorage.getItem('qx-update-token')`); got != token {
		t.Errorf("token kept as %q", got)
	}
	b.waitFor("the new versions", `document.getElementById('ver-os').textContent === '0.0.6'`, 5*time.Second)
	b.waitFor("the history row", `document.getElementById('history-body').textContent.includes('0.0.5 → 0.0.6')`, 5*time.Second)
	if got := b.text("ver-qx-node"); got != "0.0.6" {
		t.Errorf("qx-node shows %q after the update", got)
	}
	if !eval[bool](b, `document.getElementById('progress-panel').hidden && document.getElementById('available').hidden`) {
		t.Error("progress or offer still shown after the update")
	}
	if got := b.text("history-body"); !strings.Contains(got, "Completed") {
		t.Errorf("history %q", got)
	}
	if s.eng.CurrentVersion() != "0.0.6" {
		t.Errorf("engine at %s", s.eng.CurrentVersion())
	}
	b.screenshot("complete")

	// 0.0.7 is altered after signing: the update fails verification and
	// the page shows the error with the engine's message.
	s.release("0.0.7", 0)
	s.corrupt("0.0.7", "qx-console")
	b.do("click Check", chromedp.Click(chromedp.ID("check-btn")))
	b.waitBadge("Update Available", 10*time.Second)
	b.do("click Apply", chromedp.Click(chromedp.ID("apply-btn")))
	b.waitBadge("Error", 15*time.Second)
	if eval[bool](b, `document.getElementById('error-panel').hidden`) {
		t.Error("error panel hidden in the error state")
	}
	if got := b.text("error-message"); !strings.Contains(got, "checksum mismatch") || !strings.Contains(got, "qx-console") {
		t.Errorf("error message %q, want the checksum failure of qx-console", got)
	}
	b.waitFor("the failed history row", `document.getElementById('history-body').textContent.includes('Failed')`, 5*time.Second)
	if got := b.text("ver-os"); got != "0.0.6" {
		t.Errorf("ver-os = %q after a failed update", got)
	}
	b.screenshot("error")

	// Settings: saved through PUT with the kept token.
	b.do("edit the interval", chromedp.SetValue(chromedp.ID("set-interval"), "30m"), chromedp.Click(chromedp.ID("save-settings")))
	b.waitFor("the save", `document.getElementById('settings-result').textContent === 'Settings saved.'`, 5*time.Second)
	if got := s.eng.Settings().CheckInterval; got != "30m0s" {
		t.Errorf("check interval %s after saving 30m", got)
	}
	b.do("enter a bad interval", chromedp.SetValue(chromedp.ID("set-interval"), "1s"), chromedp.Click(chromedp.ID("save-settings")))
	b.waitFor("the refusal", `document.getElementById('settings-result').dataset.kind === 'error'`, 5*time.Second)
	if got := b.text("settings-result"); !strings.Contains(got, "at least") {
		t.Errorf("refusal %q does not say why", got)
	}

	// Without the stream the page polls the status: a change the engine
	// makes reaches it within a couple of polls.
	s.streamDown.Store(true)
	b.do("reload without a stream", chromedp.Navigate(s.url+"/"))
	b.waitFor("polling mode", `document.getElementById('conn').dataset.mode === 'polling'`, 10*time.Second)
	b.waitBadge("Error", 5*time.Second)
	if _, err := s.eng.Check(context.Background(), subjects.CheckRequest{}); err != nil {
		t.Fatal(err)
	}
	b.waitBadge("Update Available", 6*time.Second)

	b.mu.Lock()
	for _, m := range b.console {
		text := m.String()
		if m.IsException() || strings.Contains(text, "Content Security Policy") || strings.Contains(text, "Refused to") {
			t.Errorf("page console: %s", text)
		} else {
			t.Logf("page console: %s", text)
		}
	}
	b.mu.Unlock()
	t.Logf("browser test took %s", time.Since(start).Round(time.Millisecond))
}
