package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/quantix-os/update-agent/internal/vdc"
	"github.com/quantix-os/update-agent/subjects"
)

func init() {
	commands["apply"] = command{
		synopsis: "--node N [--version V] [--components a,b] [--force-reboot] [--wait] [--json] [--nats-url URL]",
		summary:  "tell a node to install an update, and with --wait follow it to the end",
		run:      runApply,
	}
}

func runApply(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "apply")
	bf := addBusFlags(fs)
	node := fs.String("node", "", "node `N` to update (required)")
	version := fs.String("version", "", "release version to install (default: the channel's latest)")
	comps := fs.String("components", "", "comma-separated components to update (default: all that changed)")
	forceReboot := fs.Bool("force-reboot", false, "reboot as soon as a full-system update is written, instead of waiting in reboot_required")
	allowDowngrade := fs.Bool("allow-downgrade", false, "allow installing an older version than the node runs")
	opID := fs.String("operation-id", "", "operation `ID` (default: a new UUID); resending one is answered with the same Ack")
	wait := fs.Bool("wait", false, "follow the operation's events until it completes (exit 0) or fails (exit 1)")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the node's Ack")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := subjects.ValidNodeID(*node); err != nil {
		return usageError(fs, "--node: %v", err)
	}
	cmd := subjects.ApplyCommand{OperationID: *opID, Version: *version, ForceReboot: *forceReboot, AllowDowngrade: *allowDowngrade}
	for c := range strings.SplitSeq(*comps, ",") {
		if c = strings.TrimSpace(c); c != "" {
			cmd.Components = append(cmd.Components, c)
		}
	}
	c, closeBus, err := bf.dial()
	if err != nil {
		return err
	}
	defer closeBus()

	// Subscribe before sending, so no event of the operation can slip by.
	var sub *vdc.Subscription
	if *wait {
		if sub, err = c.Subscribe(ctx, *node, true); err != nil {
			return err
		}
		defer sub.Stop()
	}
	actx, cancel := context.WithTimeout(ctx, *timeout)
	ack, err := c.Apply(actx, *node, cmd)
	cancel()
	if err != nil {
		return err
	}
	if err := printAck(e.stdout, bf.json, *node, ack); err != nil {
		return err
	}
	if !ack.Accepted {
		return fmt.Errorf("node %s refused the update: %s", *node, ack.Reason)
	}
	if !*wait {
		return nil
	}
	return follow(ctx, e.stdout, sub, ack.OperationID, bf.json, isTerminal(e.stdout))
}

// printAck prints a node's answer to a command.
func printAck(w io.Writer, asJSON bool, node string, ack subjects.Ack) error {
	if asJSON {
		return json.NewEncoder(w).Encode(ack) // one line, so --wait's events can follow as JSON lines
	}
	verdict, op := "refused", ""
	if ack.Accepted {
		verdict = "accepted"
	}
	if ack.OperationID != "" {
		op = " operation " + ack.OperationID
	}
	line := "node " + node + " " + verdict + op
	if ack.Reason != "" {
		line += ": " + ack.Reason
	}
	_, err := fmt.Fprintln(w, line)
	return err
}

// errOperationFailed is returned when the followed operation ends other than completed.
var errOperationFailed = errors.New("operation did not complete")

// follow shows the events of operation op until one ends it: a live progress
// bar on a terminal, one line per event otherwise, or JSON lines.
func follow(ctx context.Context, w io.Writer, sub *vdc.Subscription, op string, asJSON, tty bool) error {
	bar := false // a progress bar is on the current line
	endBar := func() {
		if bar {
			fmt.Fprintln(w)
			bar = false
		}
	}
	defer endBar()
	for {
		ev, err := sub.Next(ctx)
		if errors.Is(err, context.Canceled) {
			endBar()
			return fmt.Errorf("stopped following operation %s (it goes on on the node)", op)
		}
		if err != nil {
			return err
		}
		u := ev.Update
		if ev.Agent != nil && !asJSON {
			// The node restarted (a full update reboots it): worth a line.
			endBar()
			fmt.Fprintln(w, formatEvent(ev))
			continue
		}
		if u == nil || u.OperationID != op {
			continue
		}
		switch {
		case asJSON:
			if err := json.NewEncoder(w).Encode(ev); err != nil {
				return err
			}
		case tty && u.Progress != nil && !u.Type.Terminal():
			fmt.Fprintf(w, "\r%s\x1b[K", progressLine(u))
			bar = true
		default:
			endBar()
			fmt.Fprintln(w, formatEvent(ev))
		}
		if u.Type.Terminal() {
			endBar()
			if u.Type == subjects.EventCompleted {
				return nil
			}
			msg := string(u.Type)
			if u.Message != "" {
				msg += ": " + u.Message
			}
			return fmt.Errorf("%w: operation %s %s", errOperationFailed, op, msg)
		}
	}
}

// progressLine draws "[#####     ]  52% downloading qx-node".
func progressLine(u *subjects.UpdateEvent) string {
	const width = 20
	p := min(max(*u.Progress, 0), 100)
	filled := p * width / 100
	s := fmt.Sprintf("[%s%s] %3d%% %s", strings.Repeat("#", filled), strings.Repeat(" ", width-filled), p, u.Status)
	if u.Component != "" {
		s += " " + u.Component
	}
	if u.BytesDone != nil && u.BytesTotal != nil && *u.BytesTotal > 0 {
		s += fmt.Sprintf(" (%s of %s)", humanSize(*u.BytesDone), humanSize(*u.BytesTotal))
	}
	return s
}
