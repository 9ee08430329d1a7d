// Package fetch is the agent's HTTP client to the Update Server: it fetches
// the signed release manifest of a channel and downloads artifacts into place,
// resuming broken transfers and checking every byte against the size and
// sha256 the manifest declares.
//
// The client never trusts what it fetches: SignedManifest returns raw bytes
// for the caller to verify, and Download refuses to rename a file into place
// unless its size and hash are right.
package fetch

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Sentinel errors; test them with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrBadPath  = errors.New("bad artifact path")
	ErrSize     = errors.New("size mismatch")
	ErrChecksum = errors.New("checksum mismatch")
	ErrTooLarge = errors.New("response too large")
	ErrServer   = errors.New("server error")
	ErrStalled  = errors.New("transfer stalled")
)

// apiPrefix is where the Update Server's API lives below the server URL
// (DESIGN.md section 4); artifact paths are relative to it.
const apiPrefix = "/api/v1/quantix-os/"

// Defaults for Options fields left zero.
const (
	DefaultRetries      = 5
	DefaultMinBackoff   = 200 * time.Millisecond
	DefaultMaxBackoff   = 10 * time.Second
	DefaultStallTimeout = 30 * time.Second
)

// Options tune a Client. The zero value is usable.
type Options struct {
	// HTTPClient sends the requests. nil: a client with dial, TLS and
	// response-header timeouts but no overall Timeout, which would cut long
	// downloads; a caller-supplied client should not set one either.
	HTTPClient *http.Client
	// Retries is how many attempts follow the first after a network error,
	// a 5xx answer or a stall. 0 means DefaultRetries; negative means none.
	// An attempt that got further into a download than any before it does not
	// count, so a flaky link that keeps making progress still finishes.
	Retries int
	// MinBackoff and MaxBackoff bound the exponential, jittered wait between
	// attempts (defaults 200ms and 10s).
	MinBackoff, MaxBackoff time.Duration
	// StallTimeout aborts an attempt when no byte arrives for this long
	// (default 30s); the attempt is then retried.
	StallTimeout time.Duration
	// Logger receives retries and restarts; nil discards.
	Logger *slog.Logger
}

// Client talks to one Update Server. It is safe for concurrent use, but two
// Downloads to the same destination at once are not supported.
type Client struct {
	base       *url.URL // {server}/api/v1/quantix-os/
	hc         *http.Client
	retries    int
	minBackoff time.Duration
	maxBackoff time.Duration
	stall      time.Duration
	log        *slog.Logger

	mu    sync.Mutex
	cache map[string]cachedManifest // by channel
}

type cachedManifest struct {
	etag string
	body []byte
}

// New returns a Client for the Update Server at serverURL (for example
// http://127.0.0.1:9000). Only http and https URLs with a host and no
// credentials, query or fragment are accepted.
func New(serverURL string, opts Options) (*Client, error) {
	u, err := url.Parse(serverURL)
	if err != nil {
		return nil, fmt.Errorf("fetch: server URL %q: %w", serverURL, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("fetch: server URL %q: scheme must be http or https", serverURL)
	case u.Host == "" || u.Opaque != "":
		return nil, fmt.Errorf("fetch: server URL %q: no host", serverURL)
	case u.User != nil:
		// Credentials in the URL would end up in every log line and error.
		return nil, fmt.Errorf("fetch: server URL %q: credentials in the URL are not supported", u.Redacted())
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Errorf("fetch: server URL %q: must not have a query or fragment", serverURL)
	}
	base := &url.URL{
		Scheme: u.Scheme,
		Host:   u.Host,
		// A path prefix is kept so the server may sit behind a reverse proxy.
		Path: strings.TrimRight(u.Path, "/") + apiPrefix,
	}

	c := &Client{
		base:       base,
		hc:         opts.HTTPClient,
		retries:    opts.Retries,
		minBackoff: opts.MinBackoff,
		maxBackoff: opts.MaxBackoff,
		stall:      opts.StallTimeout,
		log:        opts.Logger,
		cache:      make(map[string]cachedManifest),
	}
	if c.hc == nil {
		c.hc = defaultHTTPClient()
	}
	switch {
	case c.retries == 0:
		c.retries = DefaultRetries
	case c.retries < 0:
		c.retries = 0
	}
	if c.minBackoff <= 0 {
		c.minBackoff = DefaultMinBackoff
	}
	if c.maxBackoff <= 0 {
		c.maxBackoff = DefaultMaxBackoff
	}
	if c.maxBackoff < c.minBackoff {
		c.maxBackoff = c.minBackoff
	}
	if c.stall <= 0 {
		c.stall = DefaultStallTimeout
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

func defaultHTTPClient() *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConns:          16,
	}}
}

// StatusError is an HTTP answer the client did not want. It is wrapped
// together with ErrNotFound or ErrServer where those apply.
type StatusError struct {
	StatusCode int
	Code       string // the server's error code, from {"error":{"code","message"}}
	Message    string // the server's error message, or the start of a plain-text body
}

func (e *StatusError) Error() string {
	s := fmt.Sprintf("HTTP %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	if e.Code != "" {
		s += ": " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// statusError reads (a bounded part of) resp's body and describes the answer.
func statusError(resp *http.Response) *StatusError {
	e := &StatusError{StatusCode: resp.StatusCode}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var doc struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &doc) == nil && (doc.Error.Code != "" || doc.Error.Message != "") {
		e.Code = printable(doc.Error.Code, 100)
		e.Message = printable(doc.Error.Message, 300)
		return e
	}
	e.Message = printable(string(b), 200)
	return e
}

// printable keeps server-supplied text safe to put in an error: one line of
// printable characters, at most max bytes.
func printable(s string, max int) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return -1
		}
		return r
	}, strings.TrimSpace(s))
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

// classify turns a non-2xx answer into an error: 404 → ErrNotFound, 5xx →
// ErrServer (retryable), anything else permanent.
func classify(resp *http.Response) error {
	se := statusError(resp)
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%w: %w", ErrNotFound, se)
	case resp.StatusCode >= 500:
		return temporary{fmt.Errorf("%w: %w", ErrServer, se)}
	default:
		return se
	}
}

// temporary marks an attempt's error as worth another attempt.
type temporary struct{ err error }

func (t temporary) Error() string { return t.err.Error() }
func (t temporary) Unwrap() error { return t.err }

// attemptFunc makes one attempt. advanced reports that it got further than
// any attempt before it, which refills the retry budget.
type attemptFunc func(ctx context.Context) (advanced bool, err error)

// retry runs fn until it succeeds, fails for good, or the retry budget is
// spent, and names what was fetched in the error.
func (c *Client) retry(ctx context.Context, what string, fn attemptFunc) error {
	failures, attempts := 0, 0
	for {
		attempts++
		advanced, err := fn(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("fetch %s: %w", what, ctx.Err())
		}
		var t temporary
		if !errors.As(err, &t) {
			return fmt.Errorf("fetch %s: %w", what, err)
		}
		if advanced {
			failures = 0
		}
		failures++
		if failures > c.retries {
			if attempts == 1 {
				return fmt.Errorf("fetch %s: %w", what, t.err)
			}
			return fmt.Errorf("fetch %s: giving up after %d attempts: %w", what, attempts, t.err)
		}
		wait := c.backoff(failures)
		c.log.Info("fetch: retrying", "what", what, "attempt", attempts, "err", t.err, "wait", wait)
		tm := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			tm.Stop()
			return fmt.Errorf("fetch %s: %w", what, ctx.Err())
		case <-tm.C:
		}
	}
}

// backoff is the wait before retry n (1-based): min·2^(n-1) capped at max,
// with jitter over its upper half so a fleet does not retry in lockstep.
func (c *Client) backoff(n int) time.Duration {
	d := c.minBackoff
	for i := 1; i < n && d < c.maxBackoff; i++ {
		d *= 2
	}
	d = min(d, c.maxBackoff)
	return d/2 + rand.N(d/2+1)
}

// transportError wraps an error from sending a request or reading its body.
// The caller's own cancellation is final; a certificate problem will not
// fix itself; anything else is worth another attempt.
func (c *Client) transportError(ctx, actx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if context.Cause(actx) == ErrStalled {
		return temporary{fmt.Errorf("%w: no data for %v", ErrStalled, c.stall)}
	}
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) {
		return err
	}
	return temporary{err}
}

// watchdog cancels an attempt's context with ErrStalled when it has been
// armed for longer than the stall timeout. It is armed only while waiting for
// the server, so time spent writing to disk does not count as a stall.
type watchdog struct {
	t *time.Timer
	d time.Duration
}

func (w *watchdog) arm()   { w.t.Reset(w.d) }
func (w *watchdog) pause() { w.t.Stop() }

// attempt returns the context for one attempt, its watchdog (armed), and a
// function that releases both.
func (c *Client) attempt(ctx context.Context) (context.Context, *watchdog, func()) {
	actx, cancel := context.WithCancelCause(ctx)
	w := &watchdog{d: c.stall}
	w.t = time.AfterFunc(c.stall, func() { cancel(ErrStalled) })
	return actx, w, func() { w.t.Stop(); cancel(context.Canceled) }
}

// send performs req under the watchdog; the watchdog stays paused after.
func (c *Client) send(req *http.Request, w *watchdog) (*http.Response, error) {
	w.arm()
	defer w.pause()
	return c.hc.Do(req)
}

// stallReader arms the watchdog around each Read of a response body.
type stallReader struct {
	r io.Reader
	w *watchdog
}

func (s stallReader) Read(p []byte) (int, error) {
	s.w.arm()
	defer s.w.pause()
	return s.r.Read(p)
}
