package metrics

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/quantix-os/update-agent/internal/engine"
	"github.com/quantix-os/update-agent/internal/fetch"
	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/internal/qxtest"
	"github.com/quantix-os/update-agent/internal/release"
	"github.com/quantix-os/update-agent/internal/updatesrv"
	"github.com/quantix-os/update-agent/subjects"
)

// host is a temp root at 0.0.5 with qx-node and qx-console, a signed
// release 0.0.6 on the real Update Server, a stand-in rc-service, a real
// engine, and its metrics on a fresh registry.
type host struct {
	t      *testing.T
	dir    string
	repo   string
	key    ed25519.PrivateKey
	srv    *httptest.Server
	rc     string
	eng    *engine.Engine
	reg    *prometheus.Registry
	m      *Metrics
	events <-chan subjects.UpdateEvent
}

func writeFile(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func newHost(t *testing.T, mods ...func(*engine.Options)) *host {
	t.Helper()
	h := &host{t: t, dir: t.TempDir()}
	root := filepath.Join(h.dir, "root")
	h.repo = filepath.Join(h.dir, "repo")
	writeFile(t, filepath.Join(root, engine.VersionsFile), `{"os":"0.0.5","components":{"qx-node":"0.0.5","qx-console":"0.0.5"}}`, 0o644)
	srcs := map[string]string{}
	for _, c := range []string{"qx-node", "qx-console"} {
		writeFile(t, filepath.Join(root, "opt/quantix", c, "VERSION"), "0.0.5\n", 0o644)
		writeFile(t, filepath.Join(h.dir, "src", c, "VERSION"), "0.0.6\n", 0o644)
		writeFile(t, filepath.Join(h.dir, "src", c, "bin", c), "new "+c+"\n", 0o755)
		srcs[c] = filepath.Join(h.dir, "src", c)
	}
	pub, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	h.key = key
	if _, err := release.Create(context.Background(), release.Spec{
		Repo: h.repo, Channel: "dev", Version: "0.0.6", Notes: "notes", Key: key, Components: srcs,
	}); err != nil {
		t.Fatal(err)
	}
	h.srv = httptest.NewServer(updatesrv.Handler(h.repo, nil))
	t.Cleanup(h.srv.Close)
	h.rc = filepath.Join(h.dir, "rc-service")
	writeFile(t, h.rc, "#!/bin/sh\nexit 0\n", 0o755)
	client, err := fetch.New(h.srv.URL, fetch.Options{Retries: -1, StallTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	opts := engine.Options{
		NodeID: "node-a", Root: root, StateDir: filepath.Join(h.dir, "state"), RCService: h.rc,
		Keys: []ed25519.PublicKey{pub}, Fetcher: client, ServerURL: h.srv.URL, Channel: "dev",
		Components: map[string]engine.Component{
			"qx-node":    {Dir: filepath.Join(root, "opt/quantix/qx-node"), Service: "qx-node"},
			"qx-console": {Dir: filepath.Join(root, "opt/quantix/qx-console"), Service: "qx-console"},
		},
	}
	for _, mod := range mods {
		mod(&opts)
	}
	h.eng, err = engine.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// start registers the metrics, starts them and the engine; pre runs on the
// engine before it starts.
func (h *host) start(pre func(*engine.Engine)) {
	h.t.Helper()
	h.reg = prometheus.NewRegistry()
	h.m = New(h.eng, h.reg)
	events, unsub := h.eng.Subscribe()
	h.events = events
	if pre != nil {
		pre(h.eng)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.m.Run(ctx)
	}()
	h.eng.Start(ctx)
	h.t.Cleanup(func() {
		cancel()
		unsub()
		h.eng.Wait()
		<-done
	})
}

// apply runs an update to its terminal event.
func (h *host) apply(id string) subjects.UpdateEvent {
	h.t.Helper()
	ack, err := h.eng.Apply(context.Background(), subjects.ApplyCommand{OperationID: id})
	if err != nil || !ack.Accepted {
		h.t.Fatalf("Apply = %+v, %v", ack, err)
	}
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev := <-h.events:
			if ev.Type.Terminal() {
				return ev
			}
		case <-timeout:
			h.t.Fatalf("no terminal event; status %+v", h.eng.Status())
		}
	}
}

// scrape gathers the registry: metric name → label string → value (a
// histogram's value is its sample count).
func scrape(t *testing.T, reg *prometheus.Registry) map[string]map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]map[string]float64{}
	for _, mf := range mfs {
		series := map[string]float64{}
		for _, m := range mf.GetMetric() {
			series[labels(m)] = value(mf.GetType(), m)
		}
		out[mf.GetName()] = series
	}
	return out
}

func labels(m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	return strings.Join(parts, ",")
}

func value(typ dto.MetricType, m *dto.Metric) float64 {
	switch typ {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_HISTOGRAM:
		return float64(m.GetHistogram().GetSampleCount())
	default:
		return m.GetGauge().GetValue()
	}
}

func TestUpdateMetrics(t *testing.T) {
	h := newHost(t)
	h.start(nil)

	s := scrape(t, h.reg)
	if got := s["qx_update_status"]; got["status=idle"] != 1 || got["status=available"] != 0 || len(got) != 9 {
		t.Errorf("status before anything: %v", got)
	}
	want := map[string]float64{"component=os,version=0.0.5": 1, "component=qx-node,version=0.0.5": 1, "component=qx-console,version=0.0.5": 1}
	if got := s["qx_update_installed_info"]; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("installed before: %v, want %v", got, want)
	}
	if _, ok := s["qx_update_last_check_timestamp_seconds"]; ok {
		t.Error("last check time exported before any check")
	}
	if _, ok := s["qx_update_last_check_success"]; ok {
		t.Error("last check success exported before any check")
	}
	if got := s["qx_update_failures_total"]; len(got) != len(causes) {
		t.Errorf("failure series %v, want one per cause from the start", got)
	}

	before := time.Now()
	reply, err := h.eng.Check(context.Background(), subjects.CheckRequest{})
	if err != nil || !reply.Available {
		t.Fatalf("check: %+v, %v", reply, err)
	}
	s = scrape(t, h.reg)
	if got := s["qx_update_status"]["status=available"]; got != 1 {
		t.Errorf("status after check: %v", s["qx_update_status"])
	}
	if ts := s["qx_update_last_check_timestamp_seconds"][""]; ts < float64(before.Unix()) || ts > float64(time.Now().Unix()+1) {
		t.Errorf("last check time %v, want about %v", ts, before.Unix())
	}
	if got, ok := s["qx_update_last_check_success"][""]; !ok || got != 1 {
		t.Errorf("last check success = %v (present %v), want 1", got, ok)
	}

	ev := h.apply("op-1")
	if ev.Type != subjects.EventCompleted {
		t.Fatalf("update: %+v", ev)
	}
	// Run reads the events on its own goroutine.
	qxtest.WaitFor(t, 10*time.Second, "the download to be counted", func() bool {
		return scrape(t, h.reg)["qx_update_downloaded_bytes_total"][""] == float64(reply.TotalDownloadSize)
	})
	qxtest.WaitFor(t, 10*time.Second, "the duration to be observed", func() bool {
		return scrape(t, h.reg)["qx_update_install_duration_seconds"]["result=completed"] == 1
	})
	s = scrape(t, h.reg)
	if got := s["qx_update_status"]["status=complete"]; got != 1 {
		t.Errorf("status after update: %v", s["qx_update_status"])
	}
	want = map[string]float64{"component=os,version=0.0.6": 1, "component=qx-node,version=0.0.6": 1, "component=qx-console,version=0.0.6": 1}
	if got := s["qx_update_installed_info"]; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("installed after: %v, want %v", got, want)
	}
	for c, v := range s["qx_update_failures_total"] {
		if v != 0 {
			t.Errorf("failures %s = %v after a clean update", c, v)
		}
	}
	if got := s["qx_update_outbox_events"][""]; got != 0 {
		t.Errorf("outbox %v with no bus attached", got)
	}
	// The histogram's sum is the operation's span, which the history records.
	hist := h.eng.History()
	span := hist[len(hist)-1].FinishedAt.Sub(hist[len(hist)-1].StartedAt).Seconds()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "qx_update_install_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labels(m) == "result=completed" && (m.GetHistogram().GetSampleSum() < span-0.01 || m.GetHistogram().GetSampleSum() > span+1) {
				t.Errorf("duration sum %v, operation took %v", m.GetHistogram().GetSampleSum(), span)
			}
		}
	}

	mfs, err = h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if problems, err := promlint.NewWithMetricFamilies(mfs).Lint(); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func TestFailureCausesFromRealUpdates(t *testing.T) {
	tests := []struct {
		name  string
		mods  []func(*engine.Options)
		prep  func(h *host)
		cause string
		typ   subjects.EventType
	}{
		{name: "altered artifact", prep: func(h *host) {
			p := filepath.Join(h.repo, "releases/0.0.6/qx-console-0.0.6.tar.zst")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0xff
			writeFile(t, p, string(b), 0o644)
		}, cause: CauseChecksum, typ: subjects.EventFailed},
		{name: "truncated artifact", prep: func(h *host) {
			p := filepath.Join(h.repo, "releases/0.0.6/qx-node-0.0.6.tar.zst")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, p, string(b[:len(b)-5]), 0o644)
		}, cause: CauseSize, typ: subjects.EventFailed},
		{name: "service restart fails", prep: func(h *host) {
			writeFile(t, h.rc, "#!/bin/sh\n[ \"$1\" = qx-node ] && [ ! -e "+h.dir+"/once ] && touch "+h.dir+"/once && echo boom >&2 && exit 1\nexit 0\n", 0o755)
		}, cause: CauseRestart, typ: subjects.EventRolledBack},
		{name: "unhealthy", mods: []func(*engine.Options){func(o *engine.Options) {
			c := o.Components["qx-node"]
			c.Health, c.HealthTimeout = []string{"/bin/sh", "-c", "exit 3"}, 300*time.Millisecond
			o.Components["qx-node"] = c
		}}, cause: CauseHealth, typ: subjects.EventRolledBack},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHost(t, tt.mods...)
			h.start(nil)
			if tt.prep != nil {
				tt.prep(h)
			}
			ev := h.apply("op-bad")
			if ev.Type != tt.typ {
				t.Fatalf("terminal event %+v, want %s", ev, tt.typ)
			}
			if got := cause(ev.Message); got != tt.cause {
				t.Errorf("cause(%q) = %s, want %s", ev.Message, got, tt.cause)
			}
			qxtest.WaitFor(t, 10*time.Second, "the failure to be counted", func() bool {
				return scrape(t, h.reg)["qx_update_failures_total"]["cause="+tt.cause] == 1
			})
			for c, v := range scrape(t, h.reg)["qx_update_failures_total"] {
				if c != "cause="+tt.cause && v != 0 {
					t.Errorf("failures{%s} = %v", c, v)
				}
			}
			if n := scrape(t, h.reg)["qx_update_install_duration_seconds"]["result="+string(tt.typ)]; n != 1 {
				t.Errorf("duration observations for %s = %v", tt.typ, n)
			}
		})
	}
}

func TestCause(t *testing.T) {
	tests := []struct{ msg, want string }{
		{"download qx-console: sha256 mismatch: got ab, want cd: checksum mismatch", CauseChecksum},
		{"write slot b: " + "slot verification failed: read back", CauseChecksum},
		{"download qx-node: size mismatch: server sent 10 bytes, want 12", CauseSize},
		{"download image: size mismatch: server has 1 bytes, want 2", CauseSize},
		{"stage qx-console: extract: ../../x: unsafe path", CauseArchive},
		{"stage qx-console: big: exceeds size cap", CauseArchive},
		{"stage qx-console: open: no such file", CauseArchive},
		{"download qx-node: transfer stalled", CauseDownload},
		{"download qx-node: GET /x: 404 not found", CauseDownload},
		{"maintenance not ready after 10m0s", CauseMaintenance},
		{"disk space on /var/lib/quantix: the update needs 1.0 MiB there and keeps 256.0 MiB free, but 3.0 MiB is free: not enough free space", CauseDiskSpace},
		{"maintenance: request maintenance: no responders", CauseMaintenance},
		{"rolled back: install qx-node: health check qx-node failed: exit status 3: down", CauseHealth},
		{"rolled back: slot b booted but is unhealthy: exit status 1", CauseHealth},
		{"rolled back: trial boot of slot b failed: the host came back in slot a, still committed", CauseHealth},
		{"rolled back: install qx-console: /tmp/TestHealth1/rc-service qx-console restart: exit status 1: boom", CauseRestart},
		// A path that names another cause does not fool it.
		{"rolled back: install qx-console: /tmp/download-health/rc-service qx-console restart: exit status 1", CauseRestart},
		{"operation interrupted 3 times; giving up", CauseOther},
		{"state dir: no space left on device", CauseOther},
		{"", CauseOther},
	}
	for _, tt := range tests {
		if got := cause(tt.msg); got != tt.want {
			t.Errorf("cause(%q) = %s, want %s", tt.msg, got, tt.want)
		}
	}
}

// failingBus never acknowledges, so events pile up in the outbox.
type failingBus struct{}

func (failingBus) Publish(context.Context, journal.Pending) error { return errors.New("bus down") }

func TestOutboxAndFailedCheck(t *testing.T) {
	h := newHost(t)
	h.start(func(e *engine.Engine) { e.SetPublisher(failingBus{}) })
	h.srv.Close() // the Update Server is gone
	if _, err := h.eng.Check(context.Background(), subjects.CheckRequest{}); err == nil {
		t.Fatal("check against a stopped server succeeded")
	}
	s := scrape(t, h.reg)
	if got, ok := s["qx_update_last_check_success"][""]; !ok || got != 0 {
		t.Errorf("last check success = %v (present %v), want 0", got, ok)
	}
	if _, ok := s["qx_update_last_check_timestamp_seconds"][""]; !ok {
		t.Error("a failed check has no timestamp")
	}
	if s["qx_update_status"]["status=error"] != 1 {
		t.Errorf("status %v", s["qx_update_status"])
	}
	// An event that cannot reach the bus waits in the outbox.
	h.eng.EmitAgent("a")
	if got := scrape(t, h.reg)["qx_update_outbox_events"][""]; got < 1 {
		t.Errorf("outbox = %v, want the unsent event", got)
	}
}

func TestNilRegistererAndDoubleRegister(t *testing.T) {
	h := newHost(t)
	m := New(h.eng, nil) // not registered: nothing to collide with
	m.unsubscribe()
	reg := prometheus.NewRegistry()
	New(h.eng, reg).unsubscribe()
	defer func() {
		if recover() == nil {
			t.Error("registering twice did not panic")
		}
	}()
	New(h.eng, reg)
}
