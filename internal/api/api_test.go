package api

import (
	"errors"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quantix-os/update-agent/internal/engine"
	"github.com/quantix-os/update-agent/subjects"
)

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func sorted(ks ...string) []string {
	slices.Sort(ks)
	return ks
}

func TestRouteShapes(t *testing.T) {
	h := newHarness(t, Options{})
	tests := []struct {
		method, path, body string
		code               int
		keys               []string
	}{
		{"GET", "/healthz", "", 200, sorted("status")},
		{"GET", "/api/v1/updates/check", "", 200, sorted("nodeId", "available", "currentVersion", "latestVersion",
			"availableVersion", "channel", "components", "fullImageAvailable", "totalDownloadSize", "releaseNotes")},
		{"GET", "/api/v1/updates/check?refresh=true", "", 200, sorted("nodeId", "available", "currentVersion", "latestVersion",
			"availableVersion", "channel", "components", "fullImageAvailable", "totalDownloadSize", "releaseNotes")},
		{"GET", "/api/v1/updates/check?refresh=maybe", "", 400, sorted("error")},
		{"GET", "/api/v1/updates/current", "", 200, sorted("osVersion", "qxNode", "qxConsole", "hostUi", "currentVersion", "components")},
		{"GET", "/api/v1/updates/status", "", 200, sorted("nodeId", "status", "message", "progress", "operationId", "versions")},
		{"POST", "/api/v1/updates/apply", "", 202, sorted("status", "message", "operationId")},
		{"POST", "/api/v1/updates/apply", `{"operationId":"op-1","version":"0.0.6","forceReboot":true,"components":["qx-node"],"allowDowngrade":false}`, 202, sorted("status", "message", "operationId")},
		{"POST", "/api/v1/updates/cancel", "", 200, sorted("status", "operationId")},
		{"POST", "/api/v1/updates/cancel", `{"operationId":"op-1","reason":"operator"}`, 200, sorted("status", "operationId")},
		{"GET", "/api/v1/updates/config", "", 200, sorted("enabled", "serverUrl", "channel", "autoCheck", "autoApply", "checkInterval", "storageLocation")},
		{"PUT", "/api/v1/updates/config", `{"channel":"stable","autoApply":true}`, 200, sorted("enabled", "serverUrl", "channel", "autoCheck", "autoApply", "checkInterval", "storageLocation")},
		{"GET", "/api/v1/updates/history", "", 200, sorted("history")},
		{"GET", "/api/v1/nope", "", 404, sorted("error")},
		{"GET", "/healthz/", "", 404, sorted("error")},
		{"GET", "/api/v1/updates/apply", "", 405, sorted("error")},
		{"DELETE", "/api/v1/updates/config", "", 405, sorted("error")},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path+" "+tt.body, func(t *testing.T) {
			r := h.do(tt.method, tt.path, tt.body, nil)
			if r.code != tt.code {
				t.Fatalf("status %d, want %d: %s", r.code, tt.code, r.raw)
			}
			if got := keys(r.body); !slices.Equal(got, tt.keys) {
				t.Errorf("keys %v, want %v (%s)", got, tt.keys, r.raw)
			}
			if tt.code >= 400 {
				e := r.body["error"].(map[string]any)
				if got := keys(e); !slices.Equal(got, []string{"code", "message"}) {
					t.Errorf("error keys %v, want [code message]", got)
				}
				if e["message"] == "" {
					t.Error("empty error message")
				}
			}
		})
	}
}

func TestRouteValues(t *testing.T) {
	h := newHarness(t, Options{})

	r := h.do("GET", "/api/v1/updates/check?refresh=true", "", nil)
	if r.body["latestVersion"] != "0.0.6" || r.body["availableVersion"] != "0.0.6" || r.body["nodeId"] != "node-a" {
		t.Errorf("check: %s", r.raw)
	}
	comp := r.body["components"].([]any)[0].(map[string]any)
	if got := keys(comp); !slices.Equal(got, sorted("name", "currentVersion", "newVersion", "sizeBytes")) {
		t.Errorf("check component keys %v", got)
	}
	if !h.f.lastCheck.Refresh {
		t.Error("refresh=true not passed to Check")
	}

	r = h.do("GET", "/api/v1/updates/current", "", nil)
	if r.body["qxNode"] != "0.0.5" || r.body["qxConsole"] != "0.0.4" || r.body["hostUi"] != "0.0.3" ||
		r.body["osVersion"] != "0.0.5" || r.body["currentVersion"] != "0.0.5" {
		t.Errorf("current: %s", r.raw)
	}
	if c := r.body["components"].(map[string]any); c["extra"] != "1.0.0" {
		t.Errorf("current components: %v", c)
	}

	r = h.do("GET", "/api/v1/updates/status", "", nil)
	p := r.body["progress"].(map[string]any)
	if got := keys(p); !slices.Equal(got, sorted("currentComponent", "downloadedBytes", "totalBytes", "percentage")) {
		t.Errorf("progress keys %v", got)
	}
	if r.body["status"] != "downloading" {
		t.Errorf("status: %s", r.raw)
	}

	r = h.do("POST", "/api/v1/updates/apply", `{"operationId":"op-1","version":"0.0.6","forceReboot":true,"components":["qx-node"]}`, nil)
	if r.body["status"] != "started" || r.body["operationId"] != "op-1" {
		t.Errorf("apply: %s", r.raw)
	}
	if got := h.f.lastApply; got.OperationID != "op-1" || got.Version != "0.0.6" || !got.ForceReboot || !slices.Equal(got.Components, []string{"qx-node"}) {
		t.Errorf("apply command passed as %+v", got)
	}

	r = h.do("POST", "/api/v1/updates/cancel", `{"operationId":"op-1","reason":"operator"}`, nil)
	if r.body["status"] != "cancelling" || r.body["operationId"] != "op-1" || h.f.lastCancel.Reason != "operator" {
		t.Errorf("cancel: %s, command %+v", r.raw, h.f.lastCancel)
	}

	r = h.do("PUT", "/api/v1/updates/config", `{"channel":"stable"}`, nil)
	if r.body["channel"] != "stable" || h.f.lastUpdate.Channel == nil || h.f.lastUpdate.AutoCheck != nil {
		t.Errorf("config: %s, update %+v", r.raw, h.f.lastUpdate)
	}

	r = h.do("GET", "/api/v1/updates/history", "", nil)
	hist := r.body["history"].([]any)
	if len(hist) != 2 || hist[0].(map[string]any)["operationId"] != "op-new" {
		t.Errorf("history not newest first: %s", r.raw)
	}
	if len(h.f.History()) != 2 || h.f.History()[0].OperationID != "op-old" {
		t.Error("history reversal changed the engine's slice")
	}
}

func TestEmptyCollectionsAreNotNull(t *testing.T) {
	h := newHarness(t, Options{})
	h.f.set(func(f *fake) {
		f.history = nil
		f.versions = subjects.Versions{OS: "1"}
		f.checkReply = subjects.CheckReply{NodeID: "n", CurrentVersion: "1", Channel: "dev"}
	})
	for path, want := range map[string]string{
		"/api/v1/updates/history": `"history":[]`,
		"/api/v1/updates/current": `"components":{}`,
		"/api/v1/updates/check":   `"components":[]`,
	} {
		if r := h.do("GET", path, "", nil); !strings.Contains(string(r.raw), want) {
			t.Errorf("GET %s = %s, want it to contain %s", path, r.raw, want)
		}
	}
	r := h.do("GET", "/api/v1/updates/check", "", nil)
	if _, ok := r.body["latestVersion"]; ok {
		t.Errorf("latestVersion present with no update: %s", r.raw)
	}
}

func TestEngineErrors(t *testing.T) {
	tests := []struct {
		name       string
		method     string
		path, body string
		set        func(f *fake)
		code       int
		errCode    string
		message    string
	}{
		{"apply busy", "POST", "/api/v1/updates/apply", "", func(f *fake) {
			f.applyAck = subjects.Ack{OperationID: "op-2", Reason: "operation op-1 is in progress"}
			f.applyErr = fmt.Errorf("operation op-1 is in progress: %w", engine.ErrBusy)
		}, 409, CodeBusy, "operation op-1 is in progress"},
		{"apply nothing", "POST", "/api/v1/updates/apply", "", func(f *fake) {
			f.applyAck = subjects.Ack{OperationID: "op-2", Reason: "version 0.0.5 is already installed"}
			f.applyErr = fmt.Errorf("x: %w", engine.ErrNothingToApply)
		}, 409, CodeNothingToApply, "version 0.0.5 is already installed"},
		{"apply invalid", "POST", "/api/v1/updates/apply", `{"components":["nope"]}`, func(f *fake) {
			f.applyAck = subjects.Ack{OperationID: "op-2", Reason: `component "nope" is not configured`}
			f.applyErr = fmt.Errorf("x: %w", engine.ErrInvalidRequest)
		}, 400, CodeInvalidRequest, `component "nope" is not configured`},
		{"apply check fails", "POST", "/api/v1/updates/apply", "", func(f *fake) {
			f.applyAck = subjects.Ack{OperationID: "op-2"}
			f.applyErr = errors.New("check channel dev: connection refused")
		}, 502, CodeCheckFailed, "check channel dev: connection refused"},
		{"apply replayed refusal", "POST", "/api/v1/updates/apply", `{"operationId":"op-2"}`, func(f *fake) {
			f.applyAck = subjects.Ack{OperationID: "op-2", Reason: "it was busy"}
		}, 409, CodeRefused, "it was busy"},
		{"cancel nothing runs", "POST", "/api/v1/updates/cancel", "", func(f *fake) {
			f.cancelAck = subjects.Ack{Reason: "cancel: no update in progress"}
			f.cancelErr = fmt.Errorf("cancel: %w", engine.ErrNoOperation)
		}, 409, CodeNoOperation, "cancel: no update in progress"},
		{"cancel journal fails", "POST", "/api/v1/updates/cancel", "", func(f *fake) {
			f.cancelAck = subjects.Ack{}
			f.cancelErr = errors.New("cancel: disk full")
		}, 500, CodeInternal, "cancel: disk full"},
		{"check fails", "GET", "/api/v1/updates/check", "", func(f *fake) {
			f.checkErr = errors.New("check channel dev: signature invalid")
		}, 502, CodeCheckFailed, "check channel dev: signature invalid"},
		{"check reply error", "GET", "/api/v1/updates/check", "", func(f *fake) {
			f.checkReply.Error = "manifest expired"
		}, 502, CodeCheckFailed, "manifest expired"},
		{"invalid settings", "PUT", "/api/v1/updates/config", `{"checkInterval":"1s"}`, func(f *fake) {
			f.settingsErr = fmt.Errorf("checkInterval 1s: must be at least 10s: %w", engine.ErrInvalidSettings)
		}, 400, CodeInvalidSettings, "checkInterval 1s: must be at least 10s: invalid settings"},
		{"settings not saved", "PUT", "/api/v1/updates/config", `{"channel":"dev"}`, func(f *fake) {
			f.settingsErr = errors.New("save settings: disk full")
		}, 500, CodeInternal, "save settings: disk full"},
		{"apply unknown field", "POST", "/api/v1/updates/apply", `{"operationID":"x","bogus":1}`, nil, 400, CodeInvalidRequest, ""},
		{"apply trailing data", "POST", "/api/v1/updates/apply", `{} {}`, nil, 400, CodeInvalidRequest, "request body: data after the JSON object"},
		{"apply wrong type", "POST", "/api/v1/updates/apply", `{"forceReboot":"yes"}`, nil, 400, CodeInvalidRequest, ""},
		{"cancel unknown field", "POST", "/api/v1/updates/cancel", `{"why":"x"}`, nil, 400, CodeInvalidRequest, ""},
		{"config unknown field", "PUT", "/api/v1/updates/config", `{"serverUrl":"http://evil"}`, nil, 400, CodeInvalidRequest, ""},
		{"config not an object", "PUT", "/api/v1/updates/config", `[1]`, nil, 400, CodeInvalidRequest, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Options{})
			if tt.set != nil {
				h.f.set(tt.set)
			}
			r := h.do(tt.method, tt.path, tt.body, nil)
			if r.code != tt.code || r.errCode() != tt.errCode {
				t.Fatalf("got %d %q, want %d %q: %s", r.code, r.errCode(), tt.code, tt.errCode, r.raw)
			}
			msg := r.body["error"].(map[string]any)["message"].(string)
			if tt.message != "" && msg != tt.message {
				t.Errorf("message %q, want %q", msg, tt.message)
			}
			if msg == "" {
				t.Error("empty message")
			}
		})
	}
}

func TestToken(t *testing.T) {
	h := newHarness(t, Options{Token: "s3cret"})
	tests := []struct {
		name, auth string
		code       int
	}{
		{"missing", "", 401},
		{"wrong", "Bearer nope", 401},
		{"prefix of token", "Bearer s3cre", 401},
		{"wrong scheme", "Basic s3cret", 401},
		{"no scheme", "s3cret", 401},
		{"right", "Bearer s3cret", 202},
		{"scheme case", "bearer s3cret", 202},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.do("POST", "/api/v1/updates/apply", "", map[string]string{"Authorization": tt.auth})
			if r.code != tt.code {
				t.Fatalf("status %d, want %d: %s", r.code, tt.code, r.raw)
			}
			if tt.code == 401 {
				if r.errCode() != CodeUnauthorized {
					t.Errorf("code %q", r.errCode())
				}
				if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
				}
			}
		})
	}
	// PUT needs it too; GET does not.
	if r := h.do("PUT", "/api/v1/updates/config", `{}`, nil); r.code != 401 {
		t.Errorf("PUT without token: %d", r.code)
	}
	if r := h.do("GET", "/api/v1/updates/config", "", nil); r.code != 200 {
		t.Errorf("GET without token: %d", r.code)
	}
	if h.f.lastApply.OperationID != "" || h.f.lastUpdate.Channel != nil {
		t.Error("an unauthorized request reached the engine")
	}
}

func TestHostCheck(t *testing.T) {
	h := newHarness(t, Options{Hosts: []string{"QX-Node-1.lan"}})
	tests := []struct {
		host string
		code int
	}{
		{"evil.example", 403},
		{"evil.example:8080", 403},
		{"localhost.evil.example", 403},
		{"localhost", 200},
		{"localhost:8443", 200},
		{"127.0.0.1:1", 200},
		{"[::1]:8443", 200},
		{"qx-node-1.lan", 200},
		{"qx-node-1.lan.:80", 200},
		{"192.168.1.10:8443", 200}, // an address cannot be rebound
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			r := h.do("GET", "/api/v1/updates/status", "", map[string]string{"Host": tt.host})
			if r.code != tt.code {
				t.Fatalf("status %d, want %d: %s", r.code, tt.code, r.raw)
			}
			if tt.code == 403 && r.errCode() != CodeForbiddenHost {
				t.Errorf("code %q", r.errCode())
			}
		})
	}
	// Unknown routes are refused the same way: the check comes first.
	if r := h.do("GET", "/nope", "", map[string]string{"Host": "evil.example"}); r.errCode() != CodeForbiddenHost {
		t.Errorf("404 path from a foreign host: %d %q", r.code, r.errCode())
	}
}

func TestCrossOrigin(t *testing.T) {
	h := newHarness(t, Options{Hosts: []string{"qx-node-1.lan"}, Origins: []string{"https://QX-Node-1.lan", "not an origin"}})
	port := h.url[strings.LastIndex(h.url, ":")+1:]
	tests := []struct {
		origin string
		code   int
	}{
		{"http://evil.example", 403},
		{"null", 403},
		{"http://192.168.1.66", 403},             // another machine's page
		{"http://localhost:3000", 403},           // another program's page on this host
		{"http://127.0.0.1:" + port + "0", 403},  // a port that only starts like ours
		{"https://127.0.0.1:" + port, 403},       // another scheme
		{"http://qx-node-1.lan:" + port, 403},    // a name we serve, but the Host below is 127.0.0.1
		{"https://qx-node-1.lan:8443", 403},      // a listed origin's name on another port
		{"http://127.0.0.1:" + port + "/x", 403}, // not an origin
		{h.url, 202},                             // the page's own
		{"HTTP://127.0.0.1:" + port, 202},        // the same, in other case
		{"https://qx-node-1.lan", 202},           // listed
		{"https://qx-node-1.lan:443", 202},       // listed, port spelled out
		{"", 202},
	}
	for _, tt := range tests {
		t.Run(tt.origin, func(t *testing.T) {
			r := h.do("POST", "/api/v1/updates/apply", "", map[string]string{"Origin": tt.origin})
			if r.code != tt.code {
				t.Fatalf("status %d, want %d: %s", r.code, tt.code, r.raw)
			}
			if tt.code == 403 && r.errCode() != CodeCrossOrigin {
				t.Errorf("code %q", r.errCode())
			}
		})
	}
	// A read from a foreign origin's page is not a change; CORS keeps its answer from that page.
	if r := h.do("GET", "/api/v1/updates/status", "", map[string]string{"Origin": "http://evil.example"}); r.code != 200 {
		t.Errorf("GET with foreign Origin: %d", r.code)
	}
}

func TestBodyRules(t *testing.T) {
	h := newHarness(t, Options{})
	tests := []struct {
		name, body, ctype string
		code              int
		errCode           string
	}{
		{"form post", "operationId=x", "application/x-www-form-urlencoded", 415, CodeUnsupportedType},
		{"text plain", `{}`, "text/plain", 415, CodeUnsupportedType},
		{"no content type", `{}`, "", 415, CodeUnsupportedType},
		{"json with charset", `{}`, "application/json; charset=utf-8", 202, ""},
		{"too large", `{"operationId":"` + strings.Repeat("x", MaxBodyBytes) + `"}`, "application/json", 413, CodeBodyTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.do("POST", "/api/v1/updates/apply", tt.body, map[string]string{"Content-Type": tt.ctype})
			if r.code != tt.code || r.errCode() != tt.errCode {
				t.Fatalf("got %d %q, want %d %q: %s", r.code, r.errCode(), tt.code, tt.errCode, r.raw)
			}
		})
	}
}

func TestSecurityHeaders(t *testing.T) {
	h := newHarness(t, Options{Page: fstest.MapFS{"index.html": {Data: []byte("<!doctype html><title>Updates</title>")}}})
	for _, path := range []string{"/", "/healthz", "/api/v1/updates/status", "/nope"} {
		r := h.do("GET", path, "", nil)
		for k, want := range map[string]string{
			"X-Content-Type-Options": "nosniff",
			"X-Frame-Options":        "DENY",
		} {
			if got := r.header.Get(k); got != want {
				t.Errorf("GET %s: %s = %q, want %q", path, k, got, want)
			}
		}
		if csp := r.header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy %q", path, csp)
		}
	}
	if cc := h.do("GET", "/api/v1/updates/status", "", nil).header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("API Cache-Control %q", cc)
	}
}

func TestPage(t *testing.T) {
	page := fstest.MapFS{
		"index.html":       {Data: []byte("<!doctype html><title>Updates</title>")},
		"assets/app.js":    {Data: []byte("console.log(1)")},
		"assets/style.css": {Data: []byte("body{}")},
		"secret.txt":       {Data: []byte("not an asset")},
	}
	h := newHarness(t, Options{Page: page})
	tests := []struct {
		path  string
		code  int
		ctype string
		body  string
	}{
		{"/", 200, "text/html", "<title>Updates</title>"},
		{"/assets/app.js", 200, "text/javascript", "console.log(1)"},
		{"/assets/style.css", 200, "text/css", "body{}"},
		{"/assets/", 404, "application/json", CodeNotFound},
		{"/assets/../secret.txt", 404, "application/json", CodeNotFound},
		{"/assets/%2e%2e/secret.txt", 404, "application/json", CodeNotFound},
		{"/assets/missing.js", 404, "application/json", CodeNotFound},
		{"/index.html", 404, "application/json", CodeNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			r := h.do("GET", tt.path, "", nil)
			if r.code != tt.code || !strings.HasPrefix(r.header.Get("Content-Type"), tt.ctype) || !strings.Contains(string(r.raw), tt.body) {
				t.Fatalf("got %d %q %q, want %d %q containing %q", r.code, r.header.Get("Content-Type"), r.raw, tt.code, tt.ctype, tt.body)
			}
		})
	}

	none := newHarness(t, Options{})
	if r := none.do("GET", "/", "", nil); r.code != 404 || r.errCode() != CodeNotFound {
		t.Errorf("no page: %d %s", r.code, r.raw)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "qx_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	h := newHarness(t, Options{Gatherer: reg})
	r := h.do("GET", "/metrics", "", nil)
	if r.code != 200 || !strings.Contains(string(r.raw), "qx_test_total 3") {
		t.Errorf("metrics: %d %s", r.code, r.raw)
	}

	def := newHarness(t, Options{})
	if r := def.do("GET", "/metrics", "", nil); r.code != 200 || !strings.Contains(string(r.raw), "go_goroutines") {
		t.Errorf("default gatherer: %d", r.code)
	}
}

func TestPanicIsRecoveredAndLogged(t *testing.T) {
	h := newHarness(t, Options{})
	h.f.set(func(f *fake) { f.panicStatus = true })
	r := h.do("GET", "/api/v1/updates/status", "", nil)
	if r.code != 500 || r.errCode() != CodeInternal {
		t.Fatalf("got %d %s", r.code, r.raw)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "status exploded") || !strings.Contains(logs, `"status":500`) {
		t.Errorf("panic or its 500 not logged: %s", logs)
	}
	// The server still answers.
	if r := h.do("GET", "/healthz", "", nil); r.code != 200 {
		t.Errorf("after panic: %d", r.code)
	}
}

func TestRequestLog(t *testing.T) {
	h := newHarness(t, Options{Token: "s3cret"})
	h.do("POST", "/api/v1/updates/apply", "", map[string]string{"Authorization": "Bearer s3cret"})
	logs := h.logs.String()
	for _, want := range []string{`"msg":"http request"`, `"method":"POST"`, `"path":"/api/v1/updates/apply"`, `"status":202`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s: %s", want, logs)
		}
	}
	if strings.Contains(logs, "s3cret") {
		t.Error("the token was logged")
	}
}

func TestNilLogger(t *testing.T) {
	s := New(newFake(), Options{})
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/healthz", nil)
	req.Host = "localhost"
	s.Handler().ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Errorf("status %d", rec.Code)
	}
}

func TestMethodNotAllowedAllow(t *testing.T) {
	h := newHarness(t, Options{})
	r := h.do("POST", "/api/v1/updates/status", "", nil)
	if r.code != 405 || r.errCode() != CodeMethodNotAllowed || r.header.Get("Allow") != "GET" {
		t.Errorf("got %d %q Allow=%q", r.code, r.errCode(), r.header.Get("Allow"))
	}
}

// TestRoutes holds the router to the documented Routes.
func TestRoutes(t *testing.T) {
	s := New(newFake(), Options{})
	var got, want []string
	for _, r := range s.router.Routes() {
		got = append(got, r.Method+" "+r.Path)
	}
	for _, r := range Routes {
		want = append(want, r.Method+" "+r.Path)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("router serves\n%v\nRoutes documents\n%v", got, want)
	}
	var _ gin.RoutesInfo = s.router.Routes()
}

func TestHostAllowedListenHost(t *testing.T) {
	s := New(newFake(), Options{})
	if s.hostAllowed("qx-node-7:8443") {
		t.Fatal("unconfigured name allowed")
	}
	s.mu.Lock()
	s.hosts[normHost("QX-Node-7")] = true
	s.mu.Unlock()
	if !s.hostAllowed("qx-node-7:8443") {
		t.Error("listen host refused")
	}
	if s.hostAllowed("") {
		t.Error("empty Host allowed")
	}
}

// FuzzApplyBody feeds arbitrary bodies to POST /apply: the answer is one of
// the documented ones, never a 500, and always JSON.
func FuzzApplyBody(f *testing.F) {
	for _, seed := range []string{"", "{}", `{"operationId":"a","version":"1.2.3","forceReboot":true}`,
		`{"components":["qx-node",null]}`, `{"x":1}`, `{} []`, "\x00", `{"operationId":` + strings.Repeat("[", 1000)} {
		f.Add(seed)
	}
	s := New(newFake(), Options{})
	h := s.Handler()
	f.Fuzz(func(t *testing.T, body string) {
		req := httptest.NewRequest("POST", "/api/v1/updates/apply", strings.NewReader(body))
		req.Host = "localhost"
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case 202, 400, 413:
		default:
			t.Fatalf("body %q: status %d: %s", body, rec.Code, rec.Body)
		}
		if !strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
			t.Fatalf("body %q: content type %q", body, rec.Header().Get("Content-Type"))
		}
	})
}
