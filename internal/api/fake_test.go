package api

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/quantix-os/update-agent/internal/engine"
	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/internal/qxtest"
	"github.com/quantix-os/update-agent/subjects"
)

// fake is a hand-written Updater whose answers the tests set.
type fake struct {
	mu          sync.Mutex
	checkReply  subjects.CheckReply
	checkErr    error
	lastCheck   subjects.CheckRequest
	applyAck    subjects.Ack
	applyErr    error
	lastApply   subjects.ApplyCommand
	cancelAck   subjects.Ack
	cancelErr   error
	lastCancel  subjects.CancelCommand
	status      subjects.StatusReport
	panicStatus bool
	current     string
	versions    subjects.Versions
	history     []journal.Entry
	settings    engine.Settings
	settingsErr error
	lastUpdate  engine.SettingsUpdate
	subs        map[chan subjects.UpdateEvent]bool
}

func newFake() *fake {
	return &fake{
		checkReply: subjects.CheckReply{
			NodeID: "node-a", Available: true, CurrentVersion: "0.0.5", AvailableVersion: "0.0.6", Channel: "dev",
			Components:        []subjects.ComponentUpdate{{Name: "qx-node", CurrentVersion: "0.0.5", NewVersion: "0.0.6", SizeBytes: 123}},
			TotalDownloadSize: 123, ReleaseNotes: "fixes",
		},
		applyAck:  subjects.Ack{Accepted: true, OperationID: "op-1"},
		cancelAck: subjects.Ack{Accepted: true, OperationID: "op-1"},
		status: subjects.StatusReport{NodeID: "node-a", Status: subjects.StatusDownloading, Message: "downloading qx-node",
			Progress:    &subjects.Progress{CurrentComponent: "qx-node", DownloadedBytes: 10, TotalBytes: 100, Percentage: 10},
			OperationID: "op-1", Versions: subjects.Versions{OS: "0.0.5", Components: map[string]string{"qx-node": "0.0.5"}}},
		current: "0.0.5",
		versions: subjects.Versions{OS: "0.0.5", Components: map[string]string{
			"qx-node": "0.0.5", "qx-console": "0.0.4", "host-ui": "0.0.3", "extra": "1.0.0"}},
		history: []journal.Entry{
			{OperationID: "op-old", Version: "0.0.4", Result: subjects.EventCompleted},
			{OperationID: "op-new", Version: "0.0.5", Result: subjects.EventFailed, Error: "boom"},
		},
		settings: engine.Settings{Enabled: true, ServerURL: "http://127.0.0.1:9000", Channel: "dev", AutoCheck: true,
			CheckInterval: "1h0m0s", StorageLocation: "local"},
		subs: map[chan subjects.UpdateEvent]bool{},
	}
}

func (f *fake) Check(_ context.Context, req subjects.CheckRequest) (subjects.CheckReply, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastCheck = req
	return f.checkReply, f.checkErr
}

func (f *fake) Apply(_ context.Context, cmd subjects.ApplyCommand) (subjects.Ack, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastApply = cmd
	return f.applyAck, f.applyErr
}

func (f *fake) Cancel(_ context.Context, cmd subjects.CancelCommand) (subjects.Ack, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastCancel = cmd
	return f.cancelAck, f.cancelErr
}

func (f *fake) Status() subjects.StatusReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.panicStatus {
		panic("status exploded")
	}
	return f.status
}

func (f *fake) CurrentVersion() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.current
}

func (f *fake) Versions() subjects.Versions {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.versions
}

func (f *fake) History() []journal.Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]journal.Entry(nil), f.history...)
}

func (f *fake) Settings() engine.Settings {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.settings
}

func (f *fake) UpdateSettings(u engine.SettingsUpdate) (engine.Settings, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastUpdate = u
	if f.settingsErr != nil {
		return engine.Settings{}, f.settingsErr
	}
	if u.Channel != nil {
		f.settings.Channel = *u.Channel
	}
	if u.AutoApply != nil {
		f.settings.AutoApply = *u.AutoApply
	}
	return f.settings, nil
}

func (f *fake) Subscribe() (<-chan subjects.UpdateEvent, func()) {
	ch := make(chan subjects.UpdateEvent, 16)
	f.mu.Lock()
	f.subs[ch] = true
	f.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			f.mu.Lock()
			delete(f.subs, ch)
			f.mu.Unlock()
		})
	}
}

func (f *fake) subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

func (f *fake) emit(ev subjects.UpdateEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.subs {
		ch <- ev
	}
}

func (f *fake) set(fn func(f *fake)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

type harness struct {
	t    *testing.T
	f    *fake
	s    *Server
	url  string
	logs *qxtest.SyncBuffer
}

func newHarness(t *testing.T, opts Options, configure ...func(*Server)) *harness {
	t.Helper()
	logs := &qxtest.SyncBuffer{}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	f := newFake()
	s := New(f, opts)
	for _, fn := range configure {
		fn(s)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return &harness{t: t, f: f, s: s, url: ts.URL, logs: logs}
}

// result is a decoded answer.
type result struct {
	code   int
	header http.Header
	raw    []byte
	body   map[string]any
}

// errCode is the error code of an error answer, "" if there is none.
func (r result) errCode() string {
	e, _ := r.body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// do sends a request; body, when not "", is sent as application/json unless
// hdr sets another Content-Type.
func (h *harness) do(method, path, body string, hdr map[string]string) result {
	h.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, h.url+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		if v == "" {
			req.Header.Del(k)
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	r := result{code: resp.StatusCode, header: resp.Header, raw: raw}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			h.t.Fatalf("%s %s: decode %q: %v", method, path, raw, err)
		}
	}
	return r
}

// sseEvent is one server-sent event as read off the wire.
type sseEvent struct {
	id, event, data string
	comment         bool
}

// readEvent reads the next event (or comment block) from r.
func readEvent(r *bufio.Reader) (sseEvent, error) {
	var ev sseEvent
	seen := false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return ev, err
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if seen {
				return ev, nil
			}
			continue
		}
		seen = true
		switch {
		case strings.HasPrefix(line, ":"):
			ev.comment = true
		case strings.HasPrefix(line, "id: "):
			ev.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			ev.event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			ev.data = strings.TrimPrefix(line, "data: ")
		}
	}
}
