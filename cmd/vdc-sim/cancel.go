package main

import (
	"context"
	"fmt"
	"time"

	"github.com/quantix-os/update-agent/subjects"
)

func init() {
	commands["cancel"] = command{
		synopsis: "--node N [--operation-id ID] [--reason TEXT] [--json] [--nats-url URL]",
		summary:  "ask a node to stop the update it is running",
		run:      runCancel,
	}
}

func runCancel(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "cancel")
	bf := addBusFlags(fs)
	node := fs.String("node", "", "node `N` (required)")
	opID := fs.String("operation-id", "", "cancel only this operation `ID` (default: whichever runs)")
	reason := fs.String("reason", "cancelled by vdc-sim", "why, for the node's history")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the node's Ack")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := subjects.ValidNodeID(*node); err != nil {
		return usageError(fs, "--node: %v", err)
	}
	c, closeBus, err := bf.dial()
	if err != nil {
		return err
	}
	defer closeBus()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	ack, err := c.Cancel(ctx, *node, subjects.CancelCommand{OperationID: *opID, Reason: *reason})
	if err != nil {
		return err
	}
	if err := printAck(e.stdout, bf.json, *node, ack); err != nil {
		return err
	}
	if !ack.Accepted {
		return fmt.Errorf("node %s refused to cancel: %s", *node, ack.Reason)
	}
	return nil
}
