package api

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quantix-os/update-agent/internal/qxtest"
	"github.com/quantix-os/update-agent/subjects"
)

// openStream connects to the event stream and returns its reader.
func openStream(t *testing.T, ctx context.Context, client *http.Client, url string) (*http.Response, *bufio.Reader) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", url+"/api/v1/updates/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("connect event stream: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("event stream: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return resp, bufio.NewReader(resp.Body)
}

func TestEventStream(t *testing.T) {
	h := newHarness(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, rd := openStream(t, ctx, http.DefaultClient, h.url)

	first, err := readEvent(rd)
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if first.event != "status" || json.Unmarshal([]byte(first.data), &st) != nil || st["status"] != "downloading" || st["nodeId"] != "node-a" {
		t.Fatalf("first event %+v", first)
	}

	qxtest.WaitFor(t, 5*time.Second, "a subscriber", func() bool { return h.f.subscribers() == 1 })
	pct := 40
	h.f.emit(subjects.UpdateEvent{ID: "e7", NodeID: "node-a", Seq: 7, Type: subjects.EventProgress, OperationID: "op-1",
		Status: subjects.StatusDownloading, Progress: &pct, Message: "line one\nline two"})
	h.f.emit(subjects.UpdateEvent{ID: "e8", NodeID: "node-a", Seq: 8, Type: subjects.EventCompleted, OperationID: "op-1",
		Status: subjects.StatusComplete, Version: "0.0.6"})
	for _, want := range []struct {
		seq string
		typ subjects.EventType
	}{{"7", subjects.EventProgress}, {"8", subjects.EventCompleted}} {
		ev, err := readEvent(rd)
		if err != nil {
			t.Fatal(err)
		}
		var got subjects.UpdateEvent
		if err := json.Unmarshal([]byte(ev.data), &got); err != nil {
			t.Fatalf("event data %q: %v", ev.data, err)
		}
		if ev.id != want.seq || ev.event != "update" || got.Type != want.typ || got.OperationID != "op-1" {
			t.Errorf("event %+v (%+v), want id %s type %s", ev, got, want.seq, want.typ)
		}
		if want.seq == "7" && got.Message != "line one\nline two" {
			t.Errorf("multi-line message came back as %q", got.Message)
		}
	}

	cancel()
	qxtest.WaitFor(t, 5*time.Second, "the subscription to end", func() bool { return h.f.subscribers() == 0 })
}

func TestEventStreamHeartbeat(t *testing.T) {
	h := newHarness(t, Options{}, func(s *Server) { s.heartbeat = 20 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, rd := openStream(t, ctx, http.DefaultClient, h.url)
	if ev, err := readEvent(rd); err != nil || ev.event != "status" {
		t.Fatalf("first event %+v %v", ev, err)
	}
	ev, err := readEvent(rd)
	if err != nil || !ev.comment || ev.event != "" {
		t.Fatalf("want a heartbeat comment, got %+v %v", ev, err)
	}
}

func TestEventStreamForeignHost(t *testing.T) {
	h := newHarness(t, Options{})
	r := h.do("GET", "/api/v1/updates/events", "", map[string]string{"Host": "evil.example"})
	if r.code != 403 || h.f.subscribers() != 0 {
		t.Errorf("got %d, %d subscribers", r.code, h.f.subscribers())
	}
}

// TestServeShutdownWithOpenStream: a client holding the event stream open
// must not hold the shutdown up.
func TestServeShutdownWithOpenStream(t *testing.T) {
	f := newFake()
	s := New(f, Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln, "", "") }()
	url := "http://" + ln.Addr().String()

	resp, rd := openStream(t, context.Background(), http.DefaultClient, url)
	if ev, err := readEvent(rd); err != nil || ev.event != "status" {
		t.Fatalf("first event %+v %v", ev, err)
	}
	qxtest.WaitFor(t, 5*time.Second, "a subscriber", func() bool { return f.subscribers() == 1 })

	start := time.Now()
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("shutdown took %s", d)
	}
	// The stream ended cleanly and the subscription was released.
	if _, err := io.ReadAll(resp.Body); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("stream end: %v", err)
	}
	if f.subscribers() != 0 {
		t.Error("subscription left open")
	}
	if _, err := http.Get(url + "/healthz"); err == nil {
		t.Error("still serving after shutdown")
	}
}

func TestServeTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	s := New(newFake(), Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln, certFile, keyFile) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := client.Get("https://" + ln.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil {
		t.Errorf("status %d, TLS %v", resp.StatusCode, resp.TLS != nil)
	}
}

func TestServeErrors(t *testing.T) {
	s := New(newFake(), Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = s.Serve(context.Background(), ln, "cert.pem", "")
	if err == nil || !strings.Contains(err.Error(), "both a certificate and a key") {
		t.Errorf("cert without key: %v", err)
	}
	ln.Close()
	if err := s.Serve(context.Background(), ln, "", ""); err == nil || !strings.Contains(err.Error(), "serve http") {
		t.Errorf("closed listener: %v", err)
	}
}

// TestStreamRefusedWhileClosing: a stream that starts after shutdown began
// is refused rather than left to block it.
func TestStreamRefusedWhileClosing(t *testing.T) {
	f := newFake()
	s := New(f, Options{})
	s.closeStreams()
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	resp, err := http.Get(ts.URL + "/api/v1/updates/events")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || f.subscribers() != 0 {
		t.Errorf("got %d, %d subscribers", resp.StatusCode, f.subscribers())
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns a
// pool that trusts it.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "qx-test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}
