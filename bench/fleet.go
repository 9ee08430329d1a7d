package bench

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quantix-os/update-agent/internal/api"
	"github.com/quantix-os/update-agent/internal/bus"
	"github.com/quantix-os/update-agent/internal/engine"
	"github.com/quantix-os/update-agent/internal/fetch"
	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/subjects"
)

// Figure 1's release: what the fleet has installed and what the check finds.
const (
	fleetChannel   = "fleet"
	fleetInstalled = "1.0.0"
	fleetVersion   = "1.0.1"
	fleetComponent = "qx-node"
	// floorSubject is where the floor's responders listen; no agent does.
	floorSubject = "bench.floor.check"
	// restInFlight is how many checks the seed's vDC had in flight.
	restInFlight = 64
	// setupWorkers bound the parallel start-up of nodes and responders.
	setupWorkers = 32
	// gatherTimeout bounds one round; warmTimeout one try of a warm-up
	// round, which is tried again until every node is subscribed.
	gatherTimeout = 60 * time.Second
	warmTimeout   = 3 * time.Second
)

// fleetNode is one simulated host: the agent's engine, its bus connection
// (the real bus.Conn.Serve), and for the REST baseline its facade.
type fleetNode struct {
	id      string
	eng     *engine.Engine
	hc      *http.Client // the engine's Update Server client
	stopEng context.CancelFunc

	conn    *bus.Conn
	stopBus context.CancelFunc
	busDone chan struct{}

	restURL  string
	stopREST context.CancelFunc
	restDone chan struct{}
}

// fleet is figure 1's world: nodes, the floor's responders and vDC's connection.
type fleet struct {
	s      *Site
	nodes  []*fleetNode
	floors []*nats.Conn
	vdc    *nats.Conn
	req    []byte // the broadcast: a CheckRequest carrying the signed manifest
}

// Fleet measures figure 1 for every size in Options.Fleet: the median of
// Rounds broadcasts until every reply is in, agents against the bare NATS
// floor (rounds alternate), then the seed's REST model with 64 in flight.
func (s *Site) Fleet(ctx context.Context) []Result {
	f := &fleet{s: s}
	defer f.close()
	var results []Result
	ids := []string{"1a", "1b", "1c", "1d", "1e", "1f"}
	floorTarget := Target{Kind: MaxRatio, Limit: 2.0}
	restTarget := Target{Kind: MaxRatio, Limit: 0.1, Note: "(>= 10x faster)"}
	fail := func(err error) []Result {
		for i, n := range s.opts.Fleet {
			if len(results) <= 2*i {
				results = append(results, failed(ids[2*i], fmt.Sprintf("fleet check, %d nodes, vs bare NATS floor", n), "ms", floorTarget, err))
			}
			if len(results) <= 2*i+1 {
				results = append(results, failed(ids[2*i+1], fmt.Sprintf("fleet check, %d nodes, vs REST, %d in flight", n, restInFlight), "ms", restTarget, err))
			}
		}
		return results
	}
	if len(s.opts.Fleet) > len(ids)/2 {
		return fail(fmt.Errorf("at most %d fleet sizes", len(ids)/2))
	}
	if err := f.setup(ctx); err != nil {
		return fail(err)
	}
	agentMed := make([]time.Duration, len(s.opts.Fleet))
	floorMed := make([]time.Duration, len(s.opts.Fleet))
	for i, n := range s.opts.Fleet {
		a, fl, err := f.natsRounds(ctx, n)
		if err != nil {
			return fail(fmt.Errorf("%d nodes: %w", n, err))
		}
		agentMed[i], floorMed[i] = a, fl
		s.log.Info("fleet check over NATS", "nodes", n, "agents", a, "floor", fl)
	}
	// The seed's model has no bus: close it (and the floor) so the facades'
	// sockets fit in the file descriptor limit.
	f.closeNATS()
	for i, n := range s.opts.Fleet {
		r, err := f.restRounds(ctx, n)
		if err != nil {
			return fail(fmt.Errorf("%d nodes over REST: %w", n, err))
		}
		s.log.Info("fleet check over REST", "nodes", n, "median", r)
		results = append(results,
			Result{ID: ids[2*i], Name: fmt.Sprintf("fleet check, %d nodes, vs bare NATS floor", n), Unit: "ms",
				Value: ms(agentMed[i]), Baseline: ms(floorMed[i]), Target: floorTarget},
			Result{ID: ids[2*i+1], Name: fmt.Sprintf("fleet check, %d nodes, vs REST, %d in flight", n, restInFlight), Unit: "ms",
				Value: ms(agentMed[i]), Baseline: ms(r), Target: restTarget})
	}
	return results
}

func (f *fleet) setup(ctx context.Context) error {
	if _, err := f.s.publishSmall(ctx, fleetChannel, fleetVersion, fleetComponent); err != nil {
		return err
	}
	signed, err := f.s.signed(fleetChannel)
	if err != nil {
		return err
	}
	f.req, err = json.Marshal(subjects.CheckRequest{Channel: fleetChannel, SignedManifest: signed})
	if err != nil {
		return err
	}
	f.vdc, err = nats.Connect(f.s.in.nats, nats.Name("bench-vdc"))
	if err != nil {
		return fmt.Errorf("vdc connection: %w", err)
	}
	return nil
}

// natsRounds grows the fleet to n nodes and n floor responders, warms both
// up, and returns the median of Rounds alternating rounds of each.
func (f *fleet) natsRounds(ctx context.Context, n int) (agents, floor time.Duration, err error) {
	if err := f.addNodes(ctx, n); err != nil {
		return 0, 0, err
	}
	// Warm-up: every node subscribed, every engine has verified the
	// manifest once (the "cached signed manifest" answers after that).
	var replySize int
	sent := time.Now()
	if err := waitFor(ctx, fmt.Sprintf("all %d agents answering", n), gatherTimeout, func() error {
		_, msgs, err := gather(f.vdc, subjects.FleetCheck(), f.req, n, warmTimeout)
		if err != nil {
			return err
		}
		replySize, err = checkReplies(msgs, n)
		return err
	}); err != nil {
		return 0, 0, err
	}
	if err := f.settle(ctx, sent); err != nil {
		return 0, 0, err
	}
	f.s.log.Info("fleet check sizes", "request", len(f.req), "reply", replySize)
	if err := f.addFloors(n, replySize); err != nil {
		return 0, 0, err
	}
	if err := waitFor(ctx, fmt.Sprintf("all %d floor responders answering", n), gatherTimeout, func() error {
		_, _, err := gather(f.vdc, floorSubject, f.req, n, warmTimeout)
		return err
	}); err != nil {
		return 0, 0, err
	}
	var a, fl []time.Duration
	for range f.s.opts.Rounds {
		runtime.GC()
		d, _, err := gather(f.vdc, floorSubject, f.req, n, gatherTimeout)
		if err != nil {
			return 0, 0, fmt.Errorf("floor: %w", err)
		}
		fl = append(fl, d)
		runtime.GC()
		sent := time.Now()
		d, msgs, err := gather(f.vdc, subjects.FleetCheck(), f.req, n, gatherTimeout)
		if err != nil {
			return 0, 0, fmt.Errorf("agents: %w", err)
		}
		if _, err := checkReplies(msgs, n); err != nil {
			return 0, 0, fmt.Errorf("agents: %w", err)
		}
		a = append(a, d)
		if err := f.settle(ctx, sent); err != nil {
			return 0, 0, err
		}
	}
	f.s.log.Info("fleet rounds", "nodes", n, "agents", a, "floor", fl)
	return median(a), median(fl), nil
}

// settle waits until every node has journaled the time of a check sent at
// or after since. A node writes it a moment after it answered (see
// engine.recordCheck); on a real host that runs on the host's own CPU and
// disk, here on the same two cores as the next round, so the next round waits.
func (f *fleet) settle(ctx context.Context, since time.Time) error {
	return waitFor(ctx, "the nodes to journal the check", 30*time.Second, func() error {
		for _, nd := range f.nodes {
			var last time.Time
			nd.eng.Journal().View(func(s *journal.State) { last = s.LastCheck })
			if last.Before(since) {
				return fmt.Errorf("node %s last journaled a check at %s", nd.id, last.Format(time.RFC3339Nano))
			}
		}
		return nil
	})
}

// gather broadcasts req on subject with a fresh reply inbox and returns the
// time from the publish until the n-th reply arrived, and the replies. The
// same code times the agents and the floor, so they differ only in who answers.
func gather(nc *nats.Conn, subject string, req []byte, n int, timeout time.Duration) (time.Duration, []*nats.Msg, error) {
	inbox := nc.NewInbox()
	// Buffered for every reply: a full channel would drop replies as a slow consumer.
	ch := make(chan *nats.Msg, n+64)
	sub, err := nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return 0, nil, err
	}
	defer sub.Unsubscribe()
	_ = sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		return 0, nil, err
	}
	msgs := make([]*nats.Msg, 0, n)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	start := time.Now()
	if err := nc.PublishRequest(subject, inbox, req); err != nil {
		return 0, nil, err
	}
	for len(msgs) < n {
		select {
		case m := <-ch:
			msgs = append(msgs, m)
		case <-timer.C:
			return 0, msgs, fmt.Errorf("%d of %d replies after %s", len(msgs), n, timeout)
		}
	}
	return time.Since(start), msgs, nil
}

// checkReplies decodes the agents' replies as vDC would: n distinct nodes,
// each offering the release. It returns the median reply size.
func checkReplies(msgs []*nats.Msg, n int) (int, error) {
	seen := make(map[string]bool, n)
	sizes := make([]int, 0, len(msgs))
	for _, m := range msgs {
		var r subjects.CheckReply
		if err := subjects.Decode(m.Data, &r); err != nil {
			return 0, fmt.Errorf("reply: %w", err)
		}
		switch {
		case r.Error != "":
			return 0, fmt.Errorf("node %s: %s", r.NodeID, r.Error)
		case !r.Available || r.AvailableVersion != fleetVersion:
			return 0, fmt.Errorf("node %s: available %v version %q, want %s", r.NodeID, r.Available, r.AvailableVersion, fleetVersion)
		case seen[r.NodeID]:
			return 0, fmt.Errorf("node %s answered twice", r.NodeID)
		}
		seen[r.NodeID] = true
		sizes = append(sizes, len(m.Data))
	}
	if len(seen) != n {
		return 0, fmt.Errorf("%d nodes answered, want %d", len(seen), n)
	}
	return median(sizes), nil
}

// addNodes starts nodes until there are n, each with its engine started and
// its bus serving, as cmd/agent wires them.
func (f *fleet) addNodes(ctx context.Context, n int) error {
	from := len(f.nodes)
	if n <= from {
		return nil
	}
	nodes := make([]*fleetNode, n-from)
	err := parallel(n-from, func(i int) error {
		nd, err := f.newNode(ctx, fmt.Sprintf("node-%05d", from+i))
		nodes[i] = nd
		return err
	})
	for _, nd := range nodes {
		if nd != nil {
			f.nodes = append(f.nodes, nd)
		}
	}
	return err
}

func (f *fleet) newNode(ctx context.Context, id string) (*fleetNode, error) {
	nd := &fleetNode{id: id, hc: agentHTTPClient()}
	// Each host has its own root: the engine rewrites versions.json there.
	dir := filepath.Join(f.s.opts.Dir, "fleet", id)
	root := filepath.Join(dir, "root")
	if err := hostRoot(root, fleetInstalled, fleetComponent); err != nil {
		return nil, err
	}
	fc, err := fetch.New(f.s.in.http, fetch.Options{HTTPClient: nd.hc})
	if err != nil {
		return nil, err
	}
	eng, err := engine.New(engine.Options{
		NodeID: id, Root: root, StateDir: filepath.Join(dir, "state"),
		Components: map[string]engine.Component{fleetComponent: {Dir: filepath.Join(root, "opt/quantix", fleetComponent)}},
		Keys:       []ed25519.PublicKey{f.s.pub}, Fetcher: fc, ServerURL: f.s.in.http, Channel: fleetChannel,
	})
	if err != nil {
		return nil, err
	}
	nd.eng = eng
	conn, err := bus.Connect(ctx, bus.Options{NodeID: id, URL: f.s.in.nats, BootSlot: eng.BootSlot})
	if err != nil {
		return nil, err
	}
	nd.conn = conn
	eng.SetPublisher(conn)
	ectx, stop := context.WithCancel(context.Background())
	nd.stopEng = stop
	eng.Start(ectx)
	bctx, stopBus := context.WithCancel(context.Background())
	nd.stopBus, nd.busDone = stopBus, make(chan struct{})
	go func() {
		defer close(nd.busDone)
		conn.Serve(bctx, eng)
	}()
	return nd, nil
}

// agentHTTPClient is the Update Server client each node's fetch uses: the
// settings of fetch's default, but owned here so its sockets can be closed.
func agentHTTPClient() *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Client{Transport: &http.Transport{
		DialContext: d.DialContext, ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout: 90 * time.Second, MaxIdleConns: 16,
	}}
}

// addFloors starts floor responders until there are n, each on its own
// connection, answering every request with size bytes at once.
func (f *fleet) addFloors(n, size int) error {
	from := len(f.floors)
	if n <= from {
		return nil
	}
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = 'x'
	}
	conns := make([]*nats.Conn, n-from)
	err := parallel(n-from, func(i int) error {
		nc, err := nats.Connect(f.s.in.nats, nats.Name(fmt.Sprintf("bench-floor-%05d", from+i)))
		if err != nil {
			return err
		}
		conns[i] = nc
		if _, err := nc.Subscribe(floorSubject, func(m *nats.Msg) { _ = m.Respond(payload) }); err != nil {
			return err
		}
		return nc.Flush()
	})
	for _, nc := range conns {
		if nc != nil {
			f.floors = append(f.floors, nc)
		}
	}
	return err
}

// restRounds starts the facades of the first n nodes and returns the median
// of Rounds passes of vDC calling GET /api/v1/updates/check on each, 64 in flight.
func (f *fleet) restRounds(ctx context.Context, n int) (time.Duration, error) {
	if err := parallel(n, func(i int) error { return f.nodes[i].startREST() }); err != nil {
		return 0, err
	}
	urls := make([]string, n)
	for i := range urls {
		urls[i] = f.nodes[i].restURL + "/api/v1/updates/check"
	}
	// vDC's client: the standard transport (at most 100 idle connections).
	hc := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone(), Timeout: 30 * time.Second}
	defer hc.CloseIdleConnections()
	if _, err := restRound(ctx, hc, urls); err != nil { // warm-up
		return 0, err
	}
	var ds []time.Duration
	for range f.s.opts.Rounds {
		runtime.GC()
		d, err := restRound(ctx, hc, urls)
		if err != nil {
			return 0, err
		}
		ds = append(ds, d)
	}
	f.s.log.Debug("rest rounds", "nodes", n, "times", ds)
	return median(ds), nil
}

// restRound checks every URL, restInFlight at a time, and returns how long all took.
func restRound(ctx context.Context, hc *http.Client, urls []string) (time.Duration, error) {
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range restInFlight {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(urls) {
					return
				}
				if err := restCheck(ctx, hc, urls[i]); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start), firstErr
}

func restCheck(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	var r struct {
		Available     bool   `json:"available"`
		LatestVersion string `json:"latestVersion"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	if !r.Available || r.LatestVersion != fleetVersion {
		return fmt.Errorf("GET %s: available %v version %q, want %s", url, r.Available, r.LatestVersion, fleetVersion)
	}
	return nil
}

// startREST serves the node's REST facade on a loopback port.
func (nd *fleetNode) startREST() error {
	if nd.stopREST != nil {
		return nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("node %s: listen: %w", nd.id, err)
	}
	srv := api.New(nd.eng, api.Options{Gatherer: prometheus.NewRegistry()})
	ctx, stop := context.WithCancel(context.Background())
	nd.restURL = "http://" + ln.Addr().String()
	nd.stopREST, nd.restDone = stop, make(chan struct{})
	go func() {
		defer close(nd.restDone)
		srv.Serve(ctx, ln, "", "")
	}()
	return nil
}

func (nd *fleetNode) closeBus() {
	if nd.stopBus != nil {
		nd.stopBus()
		<-nd.busDone
		nd.conn.Close()
		nd.stopBus = nil
	}
}

func (f *fleet) closeNATS() {
	_ = parallel(len(f.floors), func(i int) error { f.floors[i].Close(); return nil })
	f.floors = nil
	_ = parallel(len(f.nodes), func(i int) error { f.nodes[i].closeBus(); return nil })
}

func (f *fleet) close() {
	f.closeNATS()
	_ = parallel(len(f.nodes), func(i int) error {
		nd := f.nodes[i]
		if nd.stopREST != nil {
			nd.stopREST()
			<-nd.restDone
		}
		nd.stopEng()
		nd.eng.Wait()
		nd.hc.CloseIdleConnections()
		return nil
	})
	f.nodes = nil
	if f.vdc != nil {
		f.vdc.Close()
	}
}

// parallel runs fn(0..n-1) on setupWorkers goroutines and returns the first error.
func parallel(n int, fn func(i int) error) error {
	var next atomic.Int64
	errs := make([]error, setupWorkers)
	var wg sync.WaitGroup
	for w := range setupWorkers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || errs[w] != nil {
					return
				}
				errs[w] = fn(i)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// waitFor retries fn until it succeeds or timeout passes, and returns its
// last error. An error wrapping errStopped ends the wait at once.
func waitFor(ctx context.Context, what string, timeout time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) || errors.Is(err, errStopped) {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}
