package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/quantix-os/update-agent/internal/updatesrv"
)

func init() {
	commands["serve"] = command{
		synopsis: "--repo DIR [--http 127.0.0.1:9000] [--vms-per-node N] [--drain-interval D] [--max-unavailable K]",
		summary:  "serve a release repository as the Update Server",
		run:      cmdServe,
	}
}

// DefaultHTTP is the Update Server's default listen address (DESIGN.md section 4).
const DefaultHTTP = "127.0.0.1:9000"

func cmdServe(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "serve")
	o := serveOptions{Log: e.log}
	fs.StringVar(&o.Repo, "repo", "", "release repository directory, as written by release (required)")
	fs.StringVar(&o.HTTP, "http", DefaultHTTP, "HTTP listen address; port 0 picks a free port")
	nf := addNATSFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if o.Repo == "" {
		return usageError(fs, "--repo is required")
	}
	stopBus, err := startBus(ctx, e, nf, &o)
	if err != nil {
		return err
	}
	defer stopBus()
	return runServe(ctx, o)
}

// serveOptions configures runServe. The NATS and vDC parts of serve add
// their settings here and their handlers through Handlers.
type serveOptions struct {
	Repo string // release repository
	HTTP string // listen address
	Log  *slog.Logger
	// Handlers are mounted beside the Update Server on the same listener,
	// keyed by http.ServeMux pattern ("GET /api/v1/updates/hosts").
	Handlers map[string]http.Handler
	// ShutdownTimeout bounds the wait for requests in flight when ctx ends
	// (default 5s); downloads still running after it are cut.
	ShutdownTimeout time.Duration
}

// runServe serves HTTP until ctx ends, then shuts down gracefully. Once it
// listens it logs "update server listening on http://ADDR" with the real
// address, which scripts and tests read when the port was 0.
func runServe(ctx context.Context, o serveOptions) error {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 5 * time.Second
	}
	if fi, err := os.Stat(o.Repo); err != nil {
		return fmt.Errorf("repository: %w", err)
	} else if !fi.IsDir() {
		return fmt.Errorf("repository %s is not a directory", o.Repo)
	}

	mux := http.NewServeMux()
	mux.Handle("/", updatesrv.Handler(o.Repo, o.Log.With("component", "updatesrv")))
	for pattern, h := range o.Handlers {
		mux.Handle(pattern, h)
	}
	ln, err := net.Listen("tcp", o.HTTP)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.HTTP, err)
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(o.Log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	o.Log.Info("update server listening on http://"+ln.Addr().String(), "repo", o.Repo)

	select {
	case err := <-errc:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	o.Log.Info("update server shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout)
	defer cancel()
	err = srv.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		o.Log.Warn("requests still running after the shutdown timeout; closing them", "timeout", o.ShutdownTimeout)
		err = srv.Close()
	}
	if err != nil {
		return fmt.Errorf("http server shutdown: %w", err)
	}
	o.Log.Info("update server stopped")
	return nil
}
