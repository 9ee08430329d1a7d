// Package api is the agent's REST facade for the host UI: the update routes
// of DESIGN.md section 7 (check, current, status, apply, cancel, config,
// history, a server-sent event stream), /healthz, /metrics and the Updates
// page at /.
//
// It drives the engine through Updater, declared here so the facade can be
// tested with a fake. Because the facade listens on the host, it guards
// itself: a Host allow-list against DNS rebinding, an Origin check and a
// JSON content type on writes against cross-site requests, an optional
// bearer token on writes, capped bodies, and security headers everywhere.
package api

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quantix-os/update-agent/internal/engine"
	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/subjects"
)

// Updater is what the facade needs of the update engine.
type Updater interface {
	Check(ctx context.Context, req subjects.CheckRequest) (subjects.CheckReply, error)
	// Apply refuses with Ack{Accepted: false, Reason} and an error wrapping
	// engine.ErrBusy, ErrNothingToApply, ErrInvalidRequest or the check's failure.
	Apply(ctx context.Context, cmd subjects.ApplyCommand) (subjects.Ack, error)
	// Cancel returns an error wrapping engine.ErrNoOperation when nothing runs.
	Cancel(ctx context.Context, cmd subjects.CancelCommand) (subjects.Ack, error)
	Status() subjects.StatusReport
	CurrentVersion() string
	Versions() subjects.Versions
	History() []journal.Entry // oldest first
	Settings() engine.Settings
	// UpdateSettings returns an error wrapping engine.ErrInvalidSettings on bad input.
	UpdateSettings(u engine.SettingsUpdate) (engine.Settings, error)
	Subscribe() (events <-chan subjects.UpdateEvent, cancel func())
}

// Options configure a Server.
type Options struct {
	// Token, when set, is required as "Authorization: Bearer <token>" on POST and PUT.
	Token string
	// Hosts are host names (no port) accepted in the Host header besides
	// localhost, 127.0.0.1, ::1 and the listen host: the names the host UI is
	// reached by.
	Hosts []string
	// Origins are the origins (scheme://host[:port]) of pages besides the
	// facade's own that may change this host, such as the host UI when it
	// is served by another program. New skips any that is not an origin;
	// the agent's config refuses them first.
	Origins []string
	// Gatherer is served at /metrics; nil means prometheus.DefaultGatherer.
	Gatherer prometheus.Gatherer
	// Page is the Updates page: index.html at its root, served at /, and the
	// files it loads under assets/, served at /assets/ (the Content-Security-Policy
	// forbids inline scripts and styles). Nil: / answers 404.
	Page fs.FS
	// Logger receives one record per request; nil discards.
	Logger *slog.Logger
}

// Route is one route of the facade.
type Route struct {
	Method string
	Path   string
}

// Routes are every route the facade serves, as gin spells them; a test holds
// the router to this list so documentation generated from it stays true.
var Routes = []Route{
	{http.MethodGet, "/"},
	{http.MethodGet, "/assets/*file"},
	{http.MethodGet, "/healthz"},
	{http.MethodGet, "/metrics"},
	{http.MethodGet, "/api/v1/updates/check"},
	{http.MethodGet, "/api/v1/updates/current"},
	{http.MethodGet, "/api/v1/updates/status"},
	{http.MethodPost, "/api/v1/updates/apply"},
	{http.MethodPost, "/api/v1/updates/cancel"},
	{http.MethodGet, "/api/v1/updates/config"},
	{http.MethodPut, "/api/v1/updates/config"},
	{http.MethodGet, "/api/v1/updates/history"},
	{http.MethodGet, "/api/v1/updates/events"},
}

// Limits and timings.
const (
	// MaxBodyBytes caps a request body; the largest legitimate one is a few hundred bytes.
	MaxBodyBytes = 64 << 10
	// ShutdownTimeout bounds the graceful part of Serve's shutdown.
	ShutdownTimeout = 5 * time.Second
	// HeartbeatInterval is how often an idle event stream sends a comment, so
	// proxies and browsers keep it open and a gone client is noticed.
	HeartbeatInterval = 15 * time.Second
)

var ginModeOnce sync.Once

// Server is the REST facade. Its handler is safe for concurrent use.
type Server struct {
	u         Updater
	opts      Options
	log       *slog.Logger
	router    *gin.Engine
	tokenSum  [sha256.Size]byte
	heartbeat time.Duration

	mu      sync.Mutex
	hosts   map[string]bool        // allowed Host names, lower case, no port
	origins map[string]bool        // Options.Origins, normalized (see normOrigin)
	streams map[chan struct{}]bool // open event streams, closed on shutdown
	closing bool                   // shutting down: no new streams
}

// New returns a facade over u.
func New(u Updater, opts Options) *Server {
	// Release mode keeps gin from printing to stdout; the setting is global
	// to gin, so set it once.
	ginModeOnce.Do(func() { gin.SetMode(gin.ReleaseMode) })
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Gatherer == nil {
		opts.Gatherer = prometheus.DefaultGatherer
	}
	s := &Server{
		u:         u,
		opts:      opts,
		log:       log,
		heartbeat: HeartbeatInterval,
		hosts:     map[string]bool{"localhost": true, "127.0.0.1": true, "::1": true},
		streams:   map[chan struct{}]bool{},
	}
	if opts.Token != "" {
		s.tokenSum = sha256.Sum256([]byte(opts.Token))
	}
	for _, h := range opts.Hosts {
		s.hosts[normHost(h)] = true
	}
	s.origins = map[string]bool{}
	for _, o := range opts.Origins {
		if n, ok := normOrigin(o); ok {
			s.origins[n] = true
		}
	}
	s.router = s.routes()
	return s
}

// Handler is the facade's HTTP handler.
func (s *Server) Handler() http.Handler { return s.router }

// Serve serves on ln until ctx is done, then shuts down gracefully (5 s),
// closing the event streams first so they do not hold the shutdown up. When
// certFile and keyFile are set it serves TLS. It returns nil after a shutdown
// on ctx, else the error that stopped it.
func (s *Server) Serve(ctx context.Context, ln net.Listener, certFile, keyFile string) error {
	if (certFile == "") != (keyFile == "") {
		return fmt.Errorf("serve http on %s: TLS needs both a certificate and a key file (got cert %q, key %q)", ln.Addr(), certFile, keyFile)
	}
	if host, _, err := net.SplitHostPort(ln.Addr().String()); err == nil {
		if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
			s.mu.Lock()
			s.hosts[normHost(host)] = true
			s.mu.Unlock()
		}
	}
	s.mu.Lock()
	s.closing = false
	s.mu.Unlock()

	srv := &http.Server{
		Handler:           s.router,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		// No WriteTimeout: it would cut the event stream. Every other
		// response is small and written at once.
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	srv.RegisterOnShutdown(s.closeStreams)
	errc := make(chan error, 1)
	go func() {
		if certFile != "" {
			errc <- srv.ServeTLS(ln, certFile, keyFile)
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	s.log.Info("http listening", "addr", ln.Addr().String(), "tls", certFile != "")
	select {
	case err := <-errc:
		return fmt.Errorf("serve http on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		srv.Close()
		return fmt.Errorf("shut down http on %s: %w", ln.Addr(), err)
	}
	s.log.Info("http stopped", "addr", ln.Addr().String())
	return nil
}

// addStream registers an event stream; false when shutting down.
func (s *Server) addStream() (chan struct{}, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil, false
	}
	stop := make(chan struct{})
	s.streams[stop] = true
	return stop, true
}

func (s *Server) removeStream(stop chan struct{}) {
	s.mu.Lock()
	delete(s.streams, stop)
	s.mu.Unlock()
}

// closeStreams ends every open event stream and refuses new ones:
// http.Server.Shutdown waits for handlers, and a stream never ends by itself.
func (s *Server) closeStreams() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	for stop := range s.streams {
		close(stop)
		delete(s.streams, stop)
	}
}

// hostAllowed reports whether a Host header (or an Origin's host) names this
// server. IP literals are always accepted: DNS rebinding needs a name the
// attacker controls, and a host reached by address (listening on 0.0.0.0)
// must work without configuration.
func (s *Server) hostAllowed(hostport string) bool {
	h := normHost(hostport)
	if h == "" {
		return false
	}
	if net.ParseIP(h) != nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hosts[h]
}

// normHost strips the port and brackets and lower-cases a host.
func normHost(hostport string) string {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), ".")
	return strings.ToLower(h)
}
