package vdc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quantix-os/update-agent/subjects"
)

// ErrNoAnswer reports a node that did not answer a request: nobody listens on
// its subject, or the answer did not come in time.
var ErrNoAnswer = errors.New("node did not answer")

const (
	// DefaultTimeout bounds a request whose context carries no deadline.
	DefaultTimeout = 10 * time.Second
	// DefaultSettle is how long CheckAll waits for one more reply when its
	// caller passes no positive wait.
	DefaultSettle = time.Second
)

// Client is vDC's view of the fleet over one NATS connection.
type Client struct {
	nc *nats.Conn
	js jetstream.JetStream

	// Timeout bounds each request, and a fleet check, whose context has no
	// deadline. NewClient sets DefaultTimeout.
	Timeout time.Duration
	// HTTP fetches the signed manifest; nil uses http.DefaultClient.
	HTTP *http.Client
}

// NewClient returns a Client speaking on nc, which the caller keeps and closes.
func NewClient(nc *nats.Conn) (*Client, error) {
	if nc == nil {
		return nil, errors.New("new vdc client: nil NATS connection")
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("new vdc client: jetstream: %w", err)
	}
	return &Client{nc: nc, js: js, Timeout: DefaultTimeout}, nil
}

// withDeadline gives ctx the client's timeout unless it already ends.
func (c *Client) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	d := c.Timeout
	if d <= 0 {
		d = DefaultTimeout
	}
	return context.WithTimeout(ctx, d)
}

// request sends req to node on subject and strictly decodes its answer into reply.
func (c *Client) request(ctx context.Context, op, node, subject string, req, reply any) error {
	if err := subjects.ValidNodeID(node); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("%s node %s: encode: %w", op, node, err)
	}
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	msg, err := c.nc.RequestWithContext(ctx, subject, data)
	switch {
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s node %s: %w: %w", op, node, ErrNoAnswer, err)
	case err != nil:
		return fmt.Errorf("%s node %s: %w", op, node, err)
	}
	if err := subjects.Decode(msg.Data, reply); err != nil {
		return fmt.Errorf("%s node %s: reply: %w", op, node, err)
	}
	return nil
}

// Check asks one node whether an update is available.
func (c *Client) Check(ctx context.Context, node string, req subjects.CheckRequest) (subjects.CheckReply, error) {
	var r subjects.CheckReply
	err := c.request(ctx, "check", node, subjects.UpdateCheck(node), req, &r)
	return r, err
}

// Apply asks node to install a release. An empty cmd.OperationID gets a new
// UUID; the Ack carries the one used.
func (c *Client) Apply(ctx context.Context, node string, cmd subjects.ApplyCommand) (subjects.Ack, error) {
	if cmd.OperationID == "" {
		cmd.OperationID = uuid.NewString()
	}
	var a subjects.Ack
	err := c.request(ctx, "apply", node, subjects.UpdateApply(node), cmd, &a)
	return a, err
}

// Cancel asks node to stop the operation in flight.
func (c *Client) Cancel(ctx context.Context, node string, cmd subjects.CancelCommand) (subjects.Ack, error) {
	var a subjects.Ack
	err := c.request(ctx, "cancel", node, subjects.UpdateCancel(node), cmd, &a)
	return a, err
}

// Status asks node for its StatusReport.
func (c *Client) Status(ctx context.Context, node string) (subjects.StatusReport, error) {
	var r subjects.StatusReport
	err := c.request(ctx, "status", node, subjects.UpdateStatus(node), struct{}{}, &r)
	return r, err
}

// CheckAll asks every node at once on the fleet subject and gathers the
// replies: it waits for the first until ctx ends (or the client's Timeout
// when ctx has no deadline), then stops once wait passes without a new one,
// or as soon as every node known in the qx_nodes bucket has answered. A reply
// that cannot be decoded is kept with its Error set, so a broken node shows.
// The replies are sorted by node id, one per node.
func (c *Client) CheckAll(ctx context.Context, req subjects.CheckRequest, wait time.Duration) ([]subjects.CheckReply, error) {
	data, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("fleet check: encode: %w", err)
	}
	if len(data) > subjects.MaxPayload {
		return nil, fmt.Errorf("fleet check: request of %d bytes exceeds %d", len(data), subjects.MaxPayload)
	}
	if wait <= 0 {
		wait = DefaultSettle
	}
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()

	known := c.knownNodes(ctx)

	inbox := c.nc.NewInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("fleet check: subscribe %s: %w", inbox, err)
	}
	defer sub.Unsubscribe()
	// Fleets answer in bursts; do not drop replies as a slow consumer.
	_ = sub.SetPendingLimits(-1, -1)
	if err := c.nc.PublishRequest(subjects.FleetCheck(), inbox, data); err != nil {
		return nil, fmt.Errorf("fleet check: publish: %w", err)
	}

	byNode := map[string]subjects.CheckReply{}
	var broken []subjects.CheckReply
	for {
		if len(known) > 0 && answeredAll(known, byNode) {
			break
		}
		next, stop := ctx, context.CancelFunc(func() {})
		if len(byNode)+len(broken) > 0 {
			next, stop = context.WithTimeout(ctx, wait)
		}
		msg, err := sub.NextMsgWithContext(next)
		stop()
		if err != nil {
			if ctx.Err() == context.Canceled {
				return sorted(byNode, broken), fmt.Errorf("fleet check: %w", ctx.Err())
			}
			break // quiet for wait, or the deadline: the fleet has answered
		}
		if len(msg.Data) == 0 && msg.Header.Get("Status") == "503" {
			break // no node listens on the fleet subject
		}
		r, err := decodeCheckReply(msg.Data)
		if err != nil {
			broken = append(broken, r)
			continue
		}
		if _, dup := byNode[r.NodeID]; !dup {
			byNode[r.NodeID] = r
		}
	}
	return sorted(byNode, broken), nil
}

// decodeCheckReply decodes strictly; on failure it still returns a reply
// naming the node when a lenient decode finds one, with Error saying why.
func decodeCheckReply(data []byte) (subjects.CheckReply, error) {
	var r subjects.CheckReply
	err := subjects.Decode(data, &r)
	if err == nil && subjects.ValidNodeID(r.NodeID) != nil {
		err = fmt.Errorf("nodeId: %w", subjects.ValidNodeID(r.NodeID))
	}
	if err == nil {
		return r, nil
	}
	var loose struct {
		NodeID string `json:"nodeId"`
	}
	_ = json.Unmarshal(data, &loose)
	return subjects.CheckReply{NodeID: loose.NodeID, Error: "malformed reply: " + err.Error()}, err
}

func sorted(byNode map[string]subjects.CheckReply, broken []subjects.CheckReply) []subjects.CheckReply {
	out := make([]subjects.CheckReply, 0, len(byNode)+len(broken))
	for _, r := range byNode {
		out = append(out, r)
	}
	out = append(out, broken...)
	slices.SortStableFunc(out, func(a, b subjects.CheckReply) int { return strings.Compare(a.NodeID, b.NodeID) })
	return out
}

// knownNodes returns the node ids in the node bucket; none when it cannot
// tell, which turns off the early stop of CheckAll.
func (c *Client) knownNodes(ctx context.Context) []string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	kv, err := c.js.KeyValue(ctx, subjects.Bucket)
	if err != nil {
		return nil
	}
	keys, err := kv.Keys(ctx)
	if err != nil {
		return nil
	}
	return keys
}

// answeredAll reports whether every known node has a reply.
func answeredAll(known []string, byNode map[string]subjects.CheckReply) bool {
	for _, id := range known {
		if _, ok := byNode[id]; !ok {
			return false
		}
	}
	return true
}

// Hosts returns the latest state of every node in the qx_nodes bucket,
// sorted by node id. An entry that cannot be decoded is returned with status
// error and a message saying why, so it stays visible.
func (c *Client) Hosts(ctx context.Context) ([]subjects.NodeState, error) {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	kv, err := c.js.KeyValue(ctx, subjects.Bucket)
	if err != nil {
		return nil, fmt.Errorf("list hosts: bucket %s: %w", subjects.Bucket, err)
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("list hosts: watch %s: %w", subjects.Bucket, err)
	}
	defer w.Stop()
	latest := map[string]subjects.NodeState{}
	for {
		var e jetstream.KeyValueEntry
		select {
		case e = <-w.Updates():
		case <-ctx.Done():
			return nil, fmt.Errorf("list hosts: %w", ctx.Err())
		}
		if e == nil {
			break // every current value has been delivered
		}
		if e.Operation() != jetstream.KeyValuePut {
			delete(latest, e.Key())
			continue
		}
		var st subjects.NodeState
		if err := subjects.Decode(e.Value(), &st); err != nil {
			st = subjects.NodeState{NodeID: e.Key(), Status: subjects.StatusError,
				Message: fmt.Sprintf("bad state in %s: %v", subjects.Bucket, err)}
		}
		latest[e.Key()] = st
	}
	out := make([]subjects.NodeState, 0, len(latest))
	for _, st := range latest {
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b subjects.NodeState) int { return strings.Compare(a.NodeID, b.NodeID) })
	return out, nil
}

// SignedManifest fetches the Update Server's signed envelope for channel,
// verbatim, to send in a CheckRequest. It must be JSON and fit in a message.
func (c *Client) SignedManifest(ctx context.Context, serverURL, channel string) ([]byte, error) {
	if channel == "" {
		return nil, errors.New("fetch signed manifest: empty channel")
	}
	u, err := url.Parse(serverURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("fetch signed manifest: server URL %q is not http(s)://host", serverURL)
	}
	u = u.JoinPath("/api/v1/quantix-os/manifest/signed")
	u.RawQuery = url.Values{"channel": {channel}}.Encode()
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("fetch signed manifest %s: %w", u, err)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch signed manifest %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch signed manifest %s: %s", u, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, subjects.MaxPayload+1))
	if err != nil {
		return nil, fmt.Errorf("fetch signed manifest %s: %w", u, err)
	}
	if len(body) > subjects.MaxPayload {
		return nil, fmt.Errorf("fetch signed manifest %s: larger than %d bytes", u, subjects.MaxPayload)
	}
	if !json.Valid(body) {
		return nil, fmt.Errorf("fetch signed manifest %s: body is not JSON", u)
	}
	return body, nil
}
