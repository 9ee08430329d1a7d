// Command agent is the Quantix-OS node update agent: it takes update commands
// from vDC over NATS and from the host UI over REST, and keeps the host's
// components and system image current, safely.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/lmittmann/tint"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/quantix-os/update-agent/internal/api"
	"github.com/quantix-os/update-agent/internal/bus"
	"github.com/quantix-os/update-agent/internal/config"
	"github.com/quantix-os/update-agent/internal/engine"
	"github.com/quantix-os/update-agent/internal/fetch"
	"github.com/quantix-os/update-agent/internal/maintenance"
	"github.com/quantix-os/update-agent/internal/metrics"
	"github.com/quantix-os/update-agent/internal/ui"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "version" {
		fmt.Println("agent", version)
		return 0
	}
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "/etc/quantix/update-agent.yaml", "configuration file (YAML)")
	nodeID := fs.String("node-id", "", "override nodeId")
	root := fs.String("root", "", "override paths.root")
	stateDir := fs.String("state-dir", "", "override paths.stateDir")
	listen := fs.String("http-listen", "", "override http.listen (\"off\" disables the REST facade)")
	natsURL := fs.String("nats-url", "", "override nats.url (\"off\" runs standalone)")
	logFormat := fs.String("log-format", "", "override log.format: text or json")
	logLevel := fs.String("log-level", "", "override log.level")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "agent:", err)
		return 2
	}
	// Flags override the file.
	set := func(dst *string, v string) {
		switch {
		case v == "":
		case v == "off":
			*dst = ""
		default:
			*dst = v
		}
	}
	set(&cfg.NodeID, *nodeID)
	set(&cfg.Paths.Root, *root)
	set(&cfg.Paths.StateDir, *stateDir)
	set(&cfg.HTTP.Listen, *listen)
	set(&cfg.NATS.URL, *natsURL)
	set(&cfg.Log.Format, *logFormat)
	set(&cfg.Log.Level, *logLevel)
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, "agent:", err)
		return 2
	}
	log := newLogger(stderr, cfg.Log).With("node", cfg.NodeID)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg, log); err != nil {
		log.Error("agent stopped", "err", err)
		return 1
	}
	log.Info("agent stopped")
	return 0
}

func newLogger(w io.Writer, c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
	}
	return slog.New(tint.NewTextHandler(w, &tint.Options{Level: level, NoColor: !isTerminal(w)}))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// serve wires the engine, the REST facade and the bus, and runs them until ctx ends.
func serve(ctx context.Context, cfg config.Options, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	keys, err := cfg.PublicKeys()
	if err != nil {
		return err
	}
	client, err := fetch.New(cfg.Updates.ServerURL, fetch.Options{
		Retries: cfg.Updates.Retries, StallTimeout: cfg.Updates.StallTimeout.D(), Logger: log.With("component", "fetch"),
	})
	if err != nil {
		return err
	}
	comps := map[string]engine.Component{}
	for name, c := range cfg.Components {
		comps[name] = engine.Component{Dir: cfg.ComponentDir(name), Service: c.Service, Health: c.Health, HealthTimeout: c.HealthTimeout.D()}
	}
	var ab *engine.AB
	if cfg.ABEnabled() {
		ab = &engine.AB{
			Slots:   map[string]string{"a": cfg.AB.Slots.A, "b": cfg.AB.Slots.B},
			GrubEnv: cfg.AB.GrubEnv, Cmdline: cfg.AB.Cmdline, RebootCommand: cfg.AB.RebootCommand,
			MaintenanceTimeout: cfg.AB.MaintenanceTimeout.D(), HealthCommand: cfg.AB.HealthCommand,
		}
	}
	eng, err := engine.New(engine.Options{
		NodeID: cfg.NodeID, Root: cfg.Paths.Root, StateDir: cfg.StateDir(), Components: comps,
		RCService: cfg.Services.RCService, RestartTimeout: cfg.Services.RestartTimeout.D(), Keys: keys, Fetcher: client,
		ServerURL: cfg.Updates.ServerURL, Channel: cfg.Updates.Channel, AutoCheck: cfg.Updates.AutoCheck,
		AutoApply: cfg.Updates.AutoApply, CheckInterval: cfg.Updates.CheckInterval.D(), AgentVersion: version, Logger: log, AB: ab,
		SpaceReserve: int64(cfg.Paths.MinFreeMiB) << 20, Failpoint: failpointHook(log),
	})
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	var conn *bus.Conn
	if cfg.NATS.URL != "" {
		password := ""
		if cfg.NATS.PasswordFile != "" {
			b, err := os.ReadFile(cfg.NATS.PasswordFile)
			if err != nil {
				return fmt.Errorf("nats.passwordFile: %w", err)
			}
			password = strings.TrimSpace(string(b))
		}
		conn, err = bus.Connect(ctx, bus.Options{
			NodeID: cfg.NodeID, URL: cfg.NATS.URL, Creds: cfg.NATS.Creds, NkeySeed: cfg.NATS.NkeySeed,
			User: cfg.NATS.User, Password: password, TLSCA: cfg.NATS.TLS.CA, TLSCert: cfg.NATS.TLS.Cert,
			TLSKey: cfg.NATS.TLS.Key, TLSInsecure: cfg.NATS.TLS.InsecureSkipVerify, Name: cfg.NATS.Name,
			AgentVersion: version, BootSlot: eng.BootSlot, OnReconnect: eng.WakeOutbox, Logger: log.With("component", "bus"),
		})
		if err != nil {
			return err
		}
		defer conn.Close()
		// Events wait in the journal until the bus acks them.
		eng.SetPublisher(conn)
		eng.SetMaintainer(maintenance.New(conn.NATS(), cfg.NodeID, log))
	}
	if cfg.HTTP.Listen != "" {
		token, err := cfg.Token()
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", cfg.HTTP.Listen)
		if err != nil {
			return fmt.Errorf("http listen: %w", err)
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		m := metrics.New(eng, reg)
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.Run(ctx)
		}()
		srv := api.New(eng, api.Options{Token: token, Hosts: cfg.HTTP.Hosts, Origins: cfg.HTTP.Origins, Gatherer: reg, Page: ui.FS(), Logger: log.With("component", "api")})
		scheme := "http"
		if cfg.HTTP.TLSCert != "" {
			scheme = "https"
		}
		log.Info("http listening", "addr", ln.Addr().String(), "url", scheme+"://"+ln.Addr().String())
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ctx, ln, cfg.HTTP.TLSCert, cfg.HTTP.TLSKey); err != nil && !errors.Is(err, context.Canceled) {
				errc <- err
			}
		}()
	}
	eng.Start(ctx)
	if conn != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := conn.Serve(ctx, eng); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("bus: %w", err)
			}
		}()
	}
	log.Info("agent started", "version", version, "current", eng.CurrentVersion(), "channel", eng.Settings().Channel)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancel()
	wg.Wait()
	eng.Wait()
	return runErr
}
