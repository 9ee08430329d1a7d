package main

import (
	"context"
	"time"

	"github.com/quantix-os/update-agent/subjects"
)

func init() {
	commands["events"] = command{
		synopsis: "[--node N] [--json] [--nats-url URL]",
		summary:  "print every stored event of a node (or all), oldest first, and exit",
		run:      runEvents,
	}
}

func runEvents(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "events")
	bf := addBusFlags(fs)
	node := fs.String("node", "", "node `N` (default: every node)")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
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
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	events, err := c.Events(ctx, *node)
	if err != nil {
		return err
	}
	if bf.json {
		return printJSON(e.stdout, events)
	}
	p := newEventPrinter(e.stdout, false)
	for _, ev := range events {
		if err := p.print(ev); err != nil {
			return err
		}
	}
	return nil
}
