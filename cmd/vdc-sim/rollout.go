package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"

	"github.com/quantix-os/update-agent/internal/semver"
	"github.com/quantix-os/update-agent/internal/vdc"
	"github.com/quantix-os/update-agent/subjects"
)

func init() {
	commands["rollout"] = command{
		synopsis: "--version V [--max-unavailable K] [--failure-threshold F] [--force-reboot] [--node-timeout D] [--json] [--nats-url URL]",
		summary:  "update the whole fleet to a version, K nodes at a time, halting after too many failures",
		run:      runRollout,
	}
}

// result is how one node's part of a rollout ended.
type result string

// The results of a rollout row. failed, rolled_back and cancelled are the
// node's terminal event; the others are the rollout's own.
const (
	resultCompleted      result = "completed"
	resultFailed         result = "failed"
	resultRolledBack     result = "rolled_back"
	resultCancelled      result = "cancelled"
	resultRefused        result = "refused"         // the node did not accept the apply
	resultRebootRequired result = "reboot_required" // image written, waits for a reboot (no --force-reboot)
	resultSkipped        result = "skipped"         // already at the version
	resultNotStarted     result = "not_started"     // the rollout halted or was stopped first
	resultInterrupted    result = "interrupted"     // vdc-sim stopped following; the node goes on
)

// failure reports whether r counts against the failure threshold.
func (r result) failure() bool {
	switch r {
	case resultFailed, resultRolledBack, resultCancelled, resultRefused:
		return true
	}
	return false
}

// rolloutNode is one row of the rollout: a node, what it ran before, and
// how its update ended.
type rolloutNode struct {
	NodeID          string    `json:"nodeId"`
	From            string    `json:"from"`
	To              string    `json:"to"`
	Result          result    `json:"result"`
	Message         string    `json:"message,omitempty"`
	OperationID     string    `json:"operationId,omitempty"`
	StartedAt       time.Time `json:"startedAt,omitzero"`
	FinishedAt      time.Time `json:"finishedAt,omitzero"`
	DurationSeconds float64   `json:"durationSeconds"`
}

// rolloutReport is the summary rollout prints, as a table or with --json.
type rolloutReport struct {
	Version          string        `json:"version"`
	MaxUnavailable   int           `json:"maxUnavailable"`
	FailureThreshold int           `json:"failureThreshold"`
	Halted           bool          `json:"halted"`
	Failures         int           `json:"failures"`
	Nodes            []rolloutNode `json:"nodes"`
}

// errHalted is returned when more nodes failed than the threshold allows.
var errHalted = errors.New("rollout halted")

func runRollout(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "rollout")
	bf := addBusFlags(fs)
	version := fs.String("version", "", "release version `V` to install on every node (required)")
	maxUnavail := fs.Int("max-unavailable", 1, "nodes updating at once, at most `K`")
	threshold := fs.Int("failure-threshold", 0, "halt once more than `F` nodes failed, rolled back, were cancelled or refused")
	forceReboot := fs.Bool("force-reboot", false, "reboot each node as soon as its full-system update is written and follow it through the reboot; without it such a node ends at reboot_required")
	nodeTimeout := fs.Duration("node-timeout", time.Hour, "give up following one node after this long")
	settle := fs.Duration("settle", time.Second, "fleet discovery: stop waiting for check answers once none came for this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case *version == "":
		return usageError(fs, "--version is required")
	case semver.Valid(*version) != nil:
		return usageError(fs, "--version: %v", semver.Valid(*version))
	case *maxUnavail < 1:
		return usageError(fs, "--max-unavailable %d: want 1 or more", *maxUnavail)
	case *threshold < 0:
		return usageError(fs, "--failure-threshold %d: want 0 or more", *threshold)
	case *nodeTimeout <= 0 || *settle <= 0:
		return usageError(fs, "--node-timeout and --settle must be positive")
	}
	c, closeBus, err := bf.dial()
	if err != nil {
		return err
	}
	defer closeBus()

	nodes, err := discover(ctx, c, *settle, e.log)
	if err != nil {
		return err
	}
	if len(nodes) == 0 {
		return errors.New("no nodes: the qx_nodes bucket is empty and no node answered a fleet check")
	}
	r := &rollout{c: c, version: *version, forceReboot: *forceReboot, nodeTimeout: *nodeTimeout, log: e.log}
	rep := r.run(ctx, nodes, *maxUnavail, *threshold)
	if bf.json {
		err = printJSON(e.stdout, rep)
	} else {
		err = printRollout(e.stdout, rep)
	}
	if err != nil {
		return err
	}
	switch {
	case rep.Halted:
		return fmt.Errorf("%w: %d node(s) failed, more than --failure-threshold %d", errHalted, rep.Failures, rep.FailureThreshold)
	case ctx.Err() != nil:
		return fmt.Errorf("rollout stopped: %w (started updates go on on their nodes)", ctx.Err())
	}
	return nil
}

// discover returns every node of the fleet with the version it runs, sorted
// by node id: the nodes in the qx_nodes bucket, and those answering a fleet
// check (whose answer is fresher than the bucket's).
func discover(ctx context.Context, c *vdc.Client, settle time.Duration, log *slog.Logger) ([]rolloutNode, error) {
	byNode := map[string]string{}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	hosts, err := c.Hosts(hctx)
	cancel()
	if err != nil {
		// A server without the bucket still has the nodes that answer.
		log.Warn("rollout: reading the node bucket", "err", err)
	}
	for _, h := range hosts {
		byNode[h.NodeID] = h.CurrentVersion
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	replies, err := c.CheckAll(cctx, subjects.CheckRequest{}, settle)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("discover the fleet: %w", err)
	}
	for _, r := range replies {
		if subjects.ValidNodeID(r.NodeID) != nil {
			log.Warn("rollout: ignoring a malformed check answer", "err", r.Error)
			continue
		}
		if r.CurrentVersion != "" {
			byNode[r.NodeID] = r.CurrentVersion
		} else if _, ok := byNode[r.NodeID]; !ok {
			byNode[r.NodeID] = ""
		}
	}
	out := make([]rolloutNode, 0, len(byNode))
	for id, v := range byNode {
		out = append(out, rolloutNode{NodeID: id, From: v})
	}
	slices.SortFunc(out, func(a, b rolloutNode) int { return strings.Compare(a.NodeID, b.NodeID) })
	return out, nil
}

// rollout updates nodes to one version.
type rollout struct {
	c           *vdc.Client
	version     string
	forceReboot bool
	nodeTimeout time.Duration
	log         *slog.Logger
}

// run updates nodes, in their order, never more than k at once: a node
// starts as soon as another finished. Once more than f have failed it starts
// no more, follows those already started to their end, and reports the
// rest not started; so does ctx ending.
func (r *rollout) run(ctx context.Context, nodes []rolloutNode, k, f int) rolloutReport {
	rep := rolloutReport{Version: r.version, MaxUnavailable: k, FailureThreshold: f, Nodes: nodes}
	var todo []int
	for i := range rep.Nodes {
		n := &rep.Nodes[i]
		n.To = r.version
		if n.From == r.version {
			n.Result, n.Message = resultSkipped, "already at "+r.version
			continue
		}
		todo = append(todo, i)
	}
	r.log.Info("rollout", "version", r.version, "nodes", len(nodes), "toUpdate", len(todo), "maxUnavailable", k, "failureThreshold", f)

	// Each goroutine writes only its own row and hands it back on done.
	done := make(chan int)
	running := 0
	for len(todo) > 0 || running > 0 {
		if len(todo) > 0 && running < k && !rep.Halted && ctx.Err() == nil {
			i := todo[0]
			todo = todo[1:]
			running++
			go func() {
				r.update(ctx, &rep.Nodes[i])
				done <- i
			}()
			continue
		}
		if len(todo) > 0 && running == 0 {
			break // halted or stopped, and nothing left to wait for
		}
		n := &rep.Nodes[<-done]
		running--
		r.log.Info("rollout: node done", "node", n.NodeID, "result", n.Result, "duration", roundDuration(n.DurationSeconds), "message", n.Message)
		if n.Result.failure() {
			rep.Failures++
			if rep.Failures > f && !rep.Halted {
				rep.Halted = true
				r.log.Warn("rollout: halting", "failures", rep.Failures, "failureThreshold", f, "running", running)
			}
		}
	}
	for _, i := range todo {
		rep.Nodes[i].Result = resultNotStarted
		if rep.Halted {
			rep.Nodes[i].Message = "rollout halted"
		} else {
			rep.Nodes[i].Message = "rollout stopped"
		}
	}
	return rep
}

// update applies the version to n's node and follows the operation's events
// to its end, filling in n.
func (r *rollout) update(ctx context.Context, n *rolloutNode) {
	n.StartedAt = time.Now()
	defer func() {
		n.FinishedAt = time.Now()
		n.DurationSeconds = n.FinishedAt.Sub(n.StartedAt).Seconds()
	}()
	end := func(res result, msg string) { n.Result, n.Message = res, msg }
	// fail ends n on an error of our own: the node's outcome is unknown.
	fail := func(err error) {
		if ctx.Err() != nil {
			end(resultInterrupted, "stopped before the outcome was known")
			return
		}
		end(resultFailed, err.Error())
	}
	r.log.Info("rollout: updating", "node", n.NodeID, "from", n.From, "to", r.version)

	// Subscribe before the apply, so no event of the operation slips by.
	sub, err := r.c.Subscribe(ctx, n.NodeID, true)
	if err != nil {
		fail(err)
		return
	}
	defer sub.Stop()
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	ack, err := r.c.Apply(actx, n.NodeID, subjects.ApplyCommand{OperationID: uuid.NewString(), Version: r.version, ForceReboot: r.forceReboot})
	cancel()
	if err != nil {
		fail(err)
		return
	}
	n.OperationID = ack.OperationID
	if !ack.Accepted {
		end(resultRefused, ack.Reason)
		return
	}

	fctx, cancel := context.WithTimeout(ctx, r.nodeTimeout)
	defer cancel()
	for {
		ev, err := sub.Next(fctx)
		switch {
		case err != nil && ctx.Err() == nil && fctx.Err() != nil:
			end(resultFailed, fmt.Sprintf("no outcome after --node-timeout %s", r.nodeTimeout))
			return
		case err != nil:
			fail(err)
			return
		}
		if ev.Agent != nil {
			r.log.Info("rollout: node came online", "node", n.NodeID, "os", ev.Agent.Versions.OS, "bootSlot", ev.Agent.BootSlot)
			continue
		}
		u := ev.Update
		if u == nil || u.OperationID != ack.OperationID {
			continue
		}
		if u.Type.Terminal() {
			end(result(u.Type), u.Message)
			return
		}
		if u.Type == subjects.EventProgress {
			continue
		}
		r.log.Info("rollout: node status", "node", n.NodeID, "status", u.Status, "message", u.Message)
		if u.Status == subjects.StatusRebootRequired && !r.forceReboot {
			// Nobody reboots it for us: the written image waits for the operator.
			end(resultRebootRequired, u.Message)
			return
		}
	}
}

// printRollout prints the summary table NODE FROM TO RESULT DURATION MESSAGE
// and a closing line of counts.
func printRollout(w io.Writer, rep rolloutReport) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tFROM\tTO\tRESULT\tDURATION\tMESSAGE")
	counts := map[result]int{}
	for _, n := range rep.Nodes {
		counts[n.Result]++
		dur := "-"
		if !n.StartedAt.IsZero() {
			dur = roundDuration(n.DurationSeconds).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.NodeID, dash(n.From), dash(n.To), n.Result, dur, dash(oneLine(n.Message)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var parts []string
	for _, r := range []result{resultCompleted, resultSkipped, resultRebootRequired, resultFailed, resultRolledBack,
		resultCancelled, resultRefused, resultInterrupted, resultNotStarted} {
		if counts[r] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[r], r))
		}
	}
	verdict := "done"
	if rep.Halted {
		verdict = fmt.Sprintf("HALTED after %d failure(s) (threshold %d)", rep.Failures, rep.FailureThreshold)
	}
	_, err := fmt.Fprintf(w, "rollout of %s %s: %s\n", rep.Version, verdict, strings.Join(parts, ", "))
	return err
}

// roundDuration keeps a duration readable: milliseconds under a second,
// tenths of a second above.
func roundDuration(seconds float64) time.Duration {
	d := time.Duration(seconds * float64(time.Second))
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(100 * time.Millisecond)
}

// oneLine keeps a table cell on its row.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
