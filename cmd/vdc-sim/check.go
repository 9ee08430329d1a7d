package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quantix-os/update-agent/internal/vdc"
	"github.com/quantix-os/update-agent/subjects"
)

func init() {
	commands["check"] = command{
		synopsis: "(--all | --node N) [--channel C] [--with-manifest [--server URL]] [--timeout D] [--json] [--nats-url URL]",
		summary:  "ask one node or the whole fleet whether an update is available",
		run:      runCheck,
	}
}

// defaultNATSURL is where the fleet commands find the bus: serve's default.
const defaultNATSURL = "nats://127.0.0.1:4222"

// busFlags are the flags of every command that talks to the fleet.
type busFlags struct {
	url  string
	json bool
	auth *natsAuth
}

func addBusFlags(fs *flag.FlagSet) *busFlags {
	b := &busFlags{}
	fs.StringVar(&b.url, "nats-url", defaultNATSURL, "NATS server `URL` of the fleet")
	fs.BoolVar(&b.json, "json", false, "print JSON instead of text")
	b.auth = addAuthFlags(fs)
	return b
}

// dial connects to the bus as vDC. The caller calls close when done.
func (b *busFlags) dial() (c *vdc.Client, closeFn func(), err error) {
	opts, err := b.auth.options()
	if err != nil {
		return nil, nil, err
	}
	opts = append(opts, nats.Name("vdc-sim"), nats.Timeout(5*time.Second))
	nc, err := nats.Connect(b.url, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", redactURLs(b.url), err)
	}
	c, err = vdc.NewClient(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return c, nc.Close, nil
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runCheck(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "check")
	bf := addBusFlags(fs)
	all := fs.Bool("all", false, "ask every node at once on the fleet subject")
	node := fs.String("node", "", "ask only node `N`")
	channel := fs.String("channel", "", "channel to check (default: each node's configured one)")
	refresh := fs.Bool("refresh", false, "make nodes fetch the manifest again instead of using their cache")
	withManifest := fs.Bool("with-manifest", false, "fetch the signed manifest once from --server and send it, so nodes need not contact the Update Server (needs --channel)")
	server := fs.String("server", "http://"+DefaultHTTP, "Update Server `URL` for --with-manifest")
	timeout := fs.Duration("timeout", 10*time.Second, "give up on answers after this long")
	settle := fs.Duration("settle", time.Second, "with --all: stop once no new answer came for this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case *all == (*node != ""):
		return usageError(fs, "give exactly one of --all and --node")
	case *node != "" && subjects.ValidNodeID(*node) != nil:
		return usageError(fs, "--node: %v", subjects.ValidNodeID(*node))
	case *withManifest && *channel == "":
		return usageError(fs, "--with-manifest needs --channel")
	case *timeout <= 0 || *settle <= 0:
		return usageError(fs, "--timeout and --settle must be positive")
	}
	c, closeBus, err := bf.dial()
	if err != nil {
		return err
	}
	defer closeBus()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	req := subjects.CheckRequest{Channel: *channel, Refresh: *refresh}
	if *withManifest {
		if req.SignedManifest, err = c.SignedManifest(ctx, *server, *channel); err != nil {
			return err
		}
	}

	if *node != "" {
		r, err := c.Check(ctx, *node, req)
		if err != nil {
			return err
		}
		if bf.json {
			err = printJSON(e.stdout, r)
		} else {
			err = printChecks(e.stdout, []subjects.CheckReply{r})
			if r.ReleaseNotes != "" {
				fmt.Fprintf(e.stdout, "\nrelease notes: %s\n", r.ReleaseNotes)
			}
		}
		if err == nil && r.Error != "" {
			err = fmt.Errorf("node %s: %s", r.NodeID, r.Error)
		}
		return err
	}

	replies, err := c.CheckAll(ctx, req, *settle)
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	if bf.json {
		return printJSON(e.stdout, replies)
	}
	if err := printChecks(e.stdout, replies); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%d nodes answered\n", len(replies))
	return nil
}

// printChecks prints one row per reply.
func printChecks(w io.Writer, replies []subjects.CheckReply) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tCURRENT\tAVAILABLE\tCOMPONENTS\tSIZE\tERROR")
	for _, r := range replies {
		avail := "-"
		if r.Available {
			avail = r.AvailableVersion
		}
		var comps []string
		for _, c := range r.Components {
			comps = append(comps, c.Name)
		}
		if r.FullImageAvailable {
			comps = append(comps, "(image)")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", dash(r.NodeID), dash(r.CurrentVersion), dash(avail),
			dash(strings.Join(comps, ",")), humanSize(r.TotalDownloadSize), dash(r.Error))
	}
	return tw.Flush()
}

// dash stands in for an empty table cell.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
