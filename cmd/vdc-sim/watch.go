package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/quantix-os/update-agent/internal/vdc"
	"github.com/quantix-os/update-agent/subjects"
)

func init() {
	commands["watch"] = command{
		synopsis: "[--node N] [--history] [--json] [--nats-url URL]",
		summary:  "print node events as they happen, until Ctrl-C",
		run:      runWatch,
	}
}

func runWatch(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "watch")
	bf := addBusFlags(fs)
	node := fs.String("node", "", "only node `N`'s events (default: every node)")
	history := fs.Bool("history", false, "start with every stored event instead of only new ones")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *node != "" && subjects.ValidNodeID(*node) != nil {
		return usageError(fs, "--node: %v", subjects.ValidNodeID(*node))
	}
	c, closeBus, err := bf.dial()
	if err != nil {
		return err
	}
	defer closeBus()
	p := newEventPrinter(e.stdout, bf.json)
	err = c.Watch(ctx, *node, !*history, p.print)
	if errors.Is(err, context.Canceled) {
		return nil // Ctrl-C: the normal end
	}
	return err
}

// eventPrinter prints events one per line, as text or JSON, and notes when a
// node's seq skips, which means events are missing from the stream.
type eventPrinter struct {
	w    io.Writer
	json bool
	enc  *json.Encoder
	last map[string]uint64 // node → last seq seen
}

func newEventPrinter(w io.Writer, asJSON bool) *eventPrinter {
	return &eventPrinter{w: w, json: asJSON, enc: json.NewEncoder(w), last: map[string]uint64{}}
}

func (p *eventPrinter) print(ev vdc.Event) error {
	if p.json {
		return p.enc.Encode(ev)
	}
	if gap := p.gap(ev); gap != "" {
		if _, err := fmt.Fprintln(p.w, gap); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintln(p.w, formatEvent(ev))
	return err
}

// gap describes a jump in ev's node seq since the last event seen of it.
func (p *eventPrinter) gap(ev vdc.Event) string {
	seq := ev.Seq()
	if seq == 0 {
		return ""
	}
	prev, seen := p.last[ev.NodeID]
	p.last[ev.NodeID] = seq
	if !seen || seq == prev+1 {
		return ""
	}
	if seq <= prev {
		return fmt.Sprintf("!! %s: seq %d again after %d (duplicate or agent state reset)", ev.NodeID, seq, prev)
	}
	return fmt.Sprintf("!! %s: %d event(s) missing between seq %d and %d", ev.NodeID, seq-prev-1, prev, seq)
}

// formatEvent writes an event on one line:
// "15:04:05 node-1 #12 progress downloading 52% qx-node 0.0.6 op=1b2c3d4e message".
func formatEvent(ev vdc.Event) string {
	var b strings.Builder
	if t := ev.Time(); !t.IsZero() {
		b.WriteString(t.Local().Format("15:04:05") + " ")
	}
	fmt.Fprintf(&b, "%s #%d ", dash(ev.NodeID), ev.Seq())
	switch {
	case ev.Update != nil:
		u := ev.Update
		fmt.Fprintf(&b, "%s %s", u.Type, u.Status)
		if u.Progress != nil {
			fmt.Fprintf(&b, " %d%%", *u.Progress)
		}
		for _, s := range []string{u.Component, u.Version} {
			if s != "" {
				b.WriteString(" " + s)
			}
		}
		if u.OperationID != "" {
			b.WriteString(" op=" + short(u.OperationID))
		}
		if u.Message != "" {
			b.WriteString(" " + u.Message)
		}
	case ev.Agent != nil:
		a := ev.Agent
		fmt.Fprintf(&b, "%s os=%s", a.Type, dash(a.Versions.OS))
		if a.BootSlot != "" {
			b.WriteString(" slot=" + a.BootSlot)
		}
	default:
		fmt.Fprintf(&b, "bad event on %s (stream seq %d): %s", ev.Subject, ev.StreamSeq, ev.Error)
	}
	return b.String()
}

// short trims a UUID to its first 8 characters for display.
func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
