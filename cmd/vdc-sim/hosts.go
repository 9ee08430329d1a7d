package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quantix-os/update-agent/internal/bus"
	"github.com/quantix-os/update-agent/internal/vdc"
	"github.com/quantix-os/update-agent/subjects"
)

func init() {
	commands["hosts"] = command{
		synopsis: "[--json] [--nats-url URL]",
		summary:  "list every node's latest state from the qx_nodes bucket",
		run:      runHosts,
	}
}

func runHosts(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "hosts")
	bf := addBusFlags(fs)
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c, closeBus, err := bf.dial()
	if err != nil {
		return err
	}
	defer closeBus()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	hosts, err := c.Hosts(ctx)
	if err != nil {
		return err
	}
	if bf.json {
		return printJSON(e.stdout, hosts)
	}
	return printHosts(e.stdout, hosts, time.Now())
}

// printHosts prints the table NODE VERSION STATUS PROGRESS LAST SEEN.
func printHosts(w io.Writer, hosts []subjects.NodeState, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tVERSION\tSTATUS\tPROGRESS\tLAST SEEN")
	for _, h := range hosts {
		progress := "-"
		if h.Progress != nil {
			progress = strconv.Itoa(*h.Progress) + "%"
		}
		status := string(h.Status)
		if h.Status == subjects.StatusError && h.Message != "" {
			status += " (" + h.Message + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", h.NodeID, dash(h.CurrentVersion), dash(status), progress, ago(h.UpdatedAt, now))
	}
	return tw.Flush()
}

// ago writes how long before now t was: "4s ago", "3m ago", "2h ago".
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := max(now.Sub(t), 0)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d/time.Hour))
	}
	return t.Local().Format("2006-01-02 15:04")
}

// natsOptions are serve's bus flags: vDC's side of the fleet.
type natsOptions struct {
	listen   string
	store    string
	url      string
	auth     *natsAuth
	replicas int

	// Limits of the event stream.
	eventsMaxAge   time.Duration
	eventsMaxBytes int64

	// The maintenance coordinator's simulated VMs.
	vmsPerNode     int
	drainInterval  time.Duration
	maxUnavailable int
}

func addNATSFlags(fs *flag.FlagSet) *natsOptions {
	n := &natsOptions{}
	fs.StringVar(&n.listen, "nats-listen", "127.0.0.1:4222", "embedded NATS server listen address; port 0 picks a free port")
	fs.StringVar(&n.store, "store", "", "JetStream store `DIR` of the embedded server (default: a temp dir removed at exit)")
	fs.StringVar(&n.url, "nats-url", "", "use the NATS server at `URL` instead of embedding one")
	n.auth = addAuthFlags(fs)
	fs.DurationVar(&n.eventsMaxAge, "events-max-age", bus.DefaultEventsMaxAge, "events older than this leave the QX_EVENTS stream; 0 keeps them")
	fs.Int64Var(&n.eventsMaxBytes, "events-max-bytes", bus.DefaultEventsMaxBytes, "the QX_EVENTS stream drops its oldest events past this many bytes; 0 for no limit")
	fs.IntVar(&n.replicas, "replicas", 1, "replicas of the event stream and node bucket (a clustered server)")
	fs.IntVar(&n.vmsPerNode, "vms-per-node", 3, "simulated VMs the maintenance coordinator drains from a node before it may reboot")
	fs.DurationVar(&n.drainInterval, "drain-interval", time.Second, "time one simulated VM takes to migrate away")
	fs.IntVar(&n.maxUnavailable, "max-unavailable", 1, "nodes allowed in maintenance at once; the others queue")
	return n
}

// startBus brings up serve's vDC side: the embedded NATS server (unless
// --nats-url), the QX_EVENTS stream and qx_nodes bucket, a log of every
// event, the maintenance coordinator, and the hosts REST API added to o's
// handlers. It logs "nats listening on URL" once all of it answers. stop
// undoes it, after the HTTP server stopped.
func startBus(ctx context.Context, e *env, n *natsOptions, o *serveOptions) (stop func(), err error) {
	switch {
	case n.replicas < 1:
		return nil, fmt.Errorf("--replicas %d: want 1 or more", n.replicas)
	case n.vmsPerNode < 0:
		return nil, fmt.Errorf("--vms-per-node %d: want 0 or more", n.vmsPerNode)
	case n.drainInterval <= 0:
		return nil, fmt.Errorf("--drain-interval %s: want a positive duration", n.drainInterval)
	case n.maxUnavailable < 1:
		return nil, fmt.Errorf("--max-unavailable %d: want 1 or more", n.maxUnavailable)
	case n.eventsMaxAge < 0:
		return nil, fmt.Errorf("--events-max-age %s: want 0 or more", n.eventsMaxAge)
	case n.eventsMaxBytes < 0:
		return nil, fmt.Errorf("--events-max-bytes %d: want 0 or more", n.eventsMaxBytes)
	case n.url == "" && n.auth.set():
		return nil, errors.New("--creds, --nkey, --user and --password-file need --nats-url: the embedded server has no authentication")
	}
	authOpts, err := n.auth.options()
	if err != nil {
		return nil, err
	}
	log := e.log.With("component", "vdc")
	var undo []func()
	undoAll := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	stop = undoAll
	defer func() {
		// A failed start returns a nil stop: undo here, with the local copy.
		if err != nil {
			undoAll()
		}
	}()

	url := n.url
	if url == "" {
		store := n.store
		if store == "" {
			if store, err = os.MkdirTemp("", "vdc-sim-nats-"); err != nil {
				return nil, fmt.Errorf("nats store: %w", err)
			}
			undo = append(undo, func() { os.RemoveAll(store) })
		}
		var s *server.Server
		if s, err = vdc.StartServer(n.listen, store, e.log.With("component", "nats")); err != nil {
			return nil, err
		}
		undo = append(undo, func() { s.Shutdown(); s.WaitForShutdown() })
		url = s.ClientURL()
		// "nats listening" (and "using nats server") wait for the
		// coordinator below: scripts take them to mean nodes can be served.
		defer func() {
			if err == nil {
				e.log.Info("nats listening on "+url, "store", store)
			}
		}()
	}

	nc, err := nats.Connect(url, append(authOpts, nats.Name("vdc-sim serve"), nats.MaxReconnects(-1))...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", redactURLs(url), err)
	}
	undo = append(undo, nc.Close)
	if n.url != "" {
		defer func() {
			if err == nil {
				e.log.Info("using nats server " + redactURLs(n.url))
			}
		}()
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream on %s: %w", url, err)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := bus.Provision(pctx, js, bus.Storage{Replicas: n.replicas, MaxAge: n.eventsMaxAge, MaxBytes: n.eventsMaxBytes}); err != nil {
		return nil, err
	}
	c, err := vdc.NewClient(nc)
	if err != nil {
		return nil, err
	}

	lctx, stopLog := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { vdc.LogEvents(lctx, c, log) })
	undo = append(undo, func() { stopLog(); wg.Wait() })

	coord := vdc.NewCoordinator(nc, vdc.CoordinatorOptions{
		VMsPerNode: n.vmsPerNode, DrainInterval: n.drainInterval, MaxUnavailable: n.maxUnavailable, Logger: e.log,
	})
	cctx, stopCoord := context.WithCancel(ctx)
	coordDone := make(chan struct{})
	var coordErr error
	go func() {
		defer close(coordDone)
		coordErr = coord.Run(cctx)
	}()
	undo = append(undo, func() { stopCoord(); <-coordDone })
	if err := awaitCoordinator(ctx, nc, coordDone, &coordErr); err != nil {
		return nil, err
	}
	log.Info("maintenance coordinator running", "vmsPerNode", n.vmsPerNode, "drainInterval", n.drainInterval, "maxUnavailable", n.maxUnavailable)

	rest := vdc.RESTHandler(c, log)
	if o.Handlers == nil {
		o.Handlers = map[string]http.Handler{}
	}
	// Method-less patterns, so the REST handler answers 405 for a wrong method itself.
	o.Handlers["/api/v1/updates/hosts"] = rest
	o.Handlers["/api/v1/updates/hosts/"] = rest
	return stop, nil
}

// awaitCoordinator returns once the maintenance coordinator answers on nc: a
// status request for a node it does not know gets its "unknown maintenance"
// reply and changes nothing. Run subscribes in its own goroutine, and only an
// answer proves the server has its subscription.
func awaitCoordinator(ctx context.Context, nc *nats.Conn, done <-chan struct{}, runErr *error) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	probe := subjects.VDCMaintenanceStatus("vdc-sim")
	for {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		_, err := nc.RequestWithContext(rctx, probe, []byte(`{}`))
		rcancel()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			if *runErr != nil {
				return *runErr
			}
			return errors.New("maintenance coordinator stopped at start")
		case <-ctx.Done():
			return fmt.Errorf("maintenance coordinator: not answering on %s: %w", probe, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// redactURLs hides the passwords of a comma-separated list of NATS URLs, for logs.
func redactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}
