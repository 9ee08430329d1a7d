package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quantix-os/update-agent/internal/vdc"
	"github.com/quantix-os/update-agent/subjects"
)

// The load tests drive the real agent binary with many commands at once and
// with a stream of status requests while it updates. The update's artifact
// comes through a proxy that paces it to loadBandwidth, as a link of fixed
// bandwidth would: an update then lasts a known time, and what load adds to
// it is the agent's own slowdown.

// loadBandwidth is the paced artifact bandwidth, bytes per second.
const loadBandwidth = 1 << 20

// loadProfile is one status-load run: rate requests per second (half REST,
// half NATS) for dur, and the largest update slowdown accepted.
type loadProfile struct {
	name     string
	rate     int
	dur      time.Duration
	maxRatio float64
}

// loadProfiles: the short run for `make test`, and with QX_SOAK=1 the
// issue's full one. The short run's 200 req/s barely loads the agent but
// shares two cores with the race-enabled test process and the other
// packages' tests, so it allows 25%; the soak run holds the 10%.
func loadProfileFromEnv() loadProfile {
	if os.Getenv("QX_SOAK") == "1" {
		return loadProfile{name: "soak", rate: 1000, dur: 30 * time.Second, maxRatio: 1.10}
	}
	return loadProfile{name: "short", rate: 200, dur: 5 * time.Second, maxRatio: 1.25}
}

// loadPaced is a reverse proxy to the Update Server at target that sends
// artifact bodies at bandwidth bytes per second, on a schedule: a chunk
// sent late is caught up on, so the proxy's own scheduling delays do not
// add up. When gate is not nil, artifact requests wait until it is closed.
// Manifests pass at once and at full speed.
func loadPaced(t *testing.T, target string, bandwidth int, gate <-chan struct{}) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorLog = log.New(io.Discard, "", 0)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/releases/") {
			if gate != nil {
				select {
				case <-gate:
				case <-r.Context().Done():
					return
				}
			}
			w = &loadPacedWriter{ResponseWriter: w, bandwidth: bandwidth}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

type loadPacedWriter struct {
	http.ResponseWriter
	bandwidth int
	start     time.Time
	sent      int
}

func (w *loadPacedWriter) Write(b []byte) (int, error) {
	if w.start.IsZero() {
		w.start = time.Now()
	}
	n := 0
	for len(b) > 0 {
		k := min(len(b), 16<<10)
		due := w.start.Add(time.Duration(float64(w.sent+k) / float64(w.bandwidth) * float64(time.Second)))
		time.Sleep(time.Until(due))
		m, err := w.ResponseWriter.Write(b[:k])
		n += m
		w.sent += m
		if err != nil {
			return n, err
		}
		w.Flush()
		b = b[k:]
	}
	return n, nil
}

func (w *loadPacedWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *loadPacedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// loadClient is an HTTP client that keeps enough connections for the load.
func loadClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256}}
}

// loadEntry is an entry of the agent's update history.
type loadEntry struct {
	OperationID string    `json:"operationId"`
	Result      string    `json:"result"`
	StartedAt   time.Time `json:"startedAt"`
	FinishedAt  time.Time `json:"finishedAt"`
}

// loadHistory is the agent's update history, newest first.
func loadHistory(t *testing.T, h *host) []loadEntry {
	t.Helper()
	resp, err := http.Get(h.url + "/api/v1/updates/history")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		History []loadEntry `json:"history"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("history: %v", err)
	}
	return out.History
}

// TestLoadConcurrentApply sends 100 apply commands with distinct operation
// ids at once, half over REST and half over NATS, while nothing runs: one
// is accepted, the 99 others are refused as busy, and the history holds
// one operation.
func TestLoadConcurrentApply(t *testing.T) {
	s := newSite(t)
	releaseRandom(t, s, "0.0.6", 256<<10)
	// The download waits until every command is answered, so each arrives
	// while the accepted update runs, however slowly this machine answers.
	gate := make(chan struct{})
	var openGate sync.Once
	defer openGate.Do(func() { close(gate) })
	h := newHost(t, s.withServer(loadPaced(t, s.url, 16*loadBandwidth, gate)), "node-1", s.nats)
	nc := natsClient(t, s.nats)
	waitAnswering(t, nc, "node-1")
	vc, err := vdc.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	client := loadClient()
	defer client.CloseIdleConnections()

	const n = 100
	type answer struct {
		op               string
		accepted, busy   bool
		detail           string
		elapsed          time.Duration
		overREST, failed bool
	}
	answers := make([]answer, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			a := &answers[i]
			<-start
			start := time.Now()
			defer func() { a.elapsed = time.Since(start) }()
			if i%2 == 0 {
				a.op, a.overREST = fmt.Sprintf("rest-%03d", i), true
				req, _ := http.NewRequest("POST", h.url+"/api/v1/updates/apply", strings.NewReader(`{"operationId":"`+a.op+`"}`))
				req.Header.Set("Authorization", "Bearer "+h.token)
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					a.failed, a.detail = true, err.Error()
					return
				}
				defer resp.Body.Close()
				var body struct {
					OperationID string `json:"operationId"`
					Error       struct{ Code, Message string }
				}
				json.NewDecoder(resp.Body).Decode(&body)
				a.accepted = resp.StatusCode == http.StatusAccepted && body.OperationID == a.op
				a.busy = resp.StatusCode == http.StatusConflict && body.Error.Code == "busy" && strings.Contains(body.Error.Message, "in progress")
				a.detail = fmt.Sprintf("%d %s %s", resp.StatusCode, body.Error.Code, body.Error.Message)
				return
			}
			a.op = fmt.Sprintf("nats-%03d", i)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			ack, err := vc.Apply(ctx, "node-1", subjects.ApplyCommand{OperationID: a.op})
			if err != nil {
				a.failed, a.detail = true, err.Error()
				return
			}
			a.accepted = ack.Accepted && ack.OperationID == a.op
			a.busy = !ack.Accepted && ack.OperationID == a.op && strings.Contains(ack.Reason, "in progress")
			a.detail = ack.Reason
		})
	}
	close(start)
	wg.Wait()
	openGate.Do(func() { close(gate) })

	var accepted []string
	busy := 0
	var slowest time.Duration
	for _, a := range answers {
		slowest = max(slowest, a.elapsed)
		switch {
		case a.accepted:
			accepted = append(accepted, a.op)
		case a.busy:
			busy++
		default:
			t.Errorf("%s: neither accepted nor refused as busy: %s", a.op, a.detail)
		}
	}
	t.Logf("load: %d concurrent applies (50 REST, 50 NATS): %d accepted %v, %d refused as busy; slowest answer %v",
		n, len(accepted), accepted, busy, slowest.Round(time.Millisecond))
	if len(accepted) != 1 || busy != n-1 {
		t.Fatalf("%d accepted, %d busy; want 1 and %d", len(accepted), busy, n-1)
	}

	if st := h.waitStatus(t, "complete", "error"); st["status"] != "complete" {
		t.Fatalf("the accepted update ended with %v", st)
	}
	hist := loadHistory(t, h)
	if len(hist) != 1 || hist[0].OperationID != accepted[0] || hist[0].Result != "completed" {
		t.Fatalf("history %+v, want the one operation %s completed", hist, accepted[0])
	}
}

// loadStats is what a status load did.
type loadStats struct {
	sent, failed, dropped int
	elapsed               time.Duration
	rest, nats            []time.Duration // latencies of the answered requests
	statuses              map[string]int  // status values seen
	firstFailure          string
}

func (s *loadStats) achieved() float64 {
	return float64(s.sent-s.dropped-s.failed) / s.elapsed.Seconds()
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func (s *loadStats) String() string {
	return fmt.Sprintf("%d sent in %v (%.0f/s answered), %d failed, %d dropped by the generator; REST p50 %v p99 %v max %v; NATS p50 %v p99 %v max %v; statuses %v",
		s.sent, s.elapsed.Round(time.Millisecond), s.achieved(), s.failed, s.dropped,
		percentile(s.rest, 0.5), percentile(s.rest, 0.99), percentile(s.rest, 1),
		percentile(s.nats, 0.5), percentile(s.nats, 0.99), percentile(s.nats, 1), s.statuses)
}

// loadStatus asks node for its status rate times a second for d, even
// requests over REST and odd ones over NATS, from 64 workers. A request
// that cannot start within a second of its time (every worker busy) is
// dropped and counted.
func loadStatus(h *host, nc *nats.Conn, node string, rate int, d time.Duration) *loadStats {
	client := loadClient()
	defer client.CloseIdleConnections()
	type sample struct {
		overNATS bool
		lat      time.Duration
		status   string
		err      error
	}
	jobs := make(chan int, rate)
	samples := make(chan sample, 1024)
	var workers sync.WaitGroup
	for range 64 {
		workers.Go(func() {
			for i := range jobs {
				start := time.Now()
				sm := sample{overNATS: i%2 == 1}
				var st subjects.StatusReport
				if sm.overNATS {
					m, err := nc.Request(subjects.UpdateStatus(node), nil, 10*time.Second)
					if err == nil {
						err = subjects.Decode(m.Data, &st)
					}
					if err == nil && st.NodeID != node {
						err = fmt.Errorf("status of node %q", st.NodeID)
					}
					sm.err = err
				} else {
					resp, err := client.Get(h.url + "/api/v1/updates/status")
					if err == nil {
						if resp.StatusCode != http.StatusOK {
							err = fmt.Errorf("HTTP %d", resp.StatusCode)
						} else {
							err = json.NewDecoder(resp.Body).Decode(&st)
						}
						resp.Body.Close()
					}
					sm.err = err
				}
				sm.lat, sm.status = time.Since(start), string(st.Status)
				samples <- sm
			}
		})
	}
	stats := &loadStats{statuses: map[string]int{}}
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for sm := range samples {
			switch {
			case sm.err != nil:
				stats.failed++
				if stats.firstFailure == "" {
					stats.firstFailure = sm.err.Error()
				}
			case sm.overNATS:
				stats.nats = append(stats.nats, sm.lat)
			default:
				stats.rest = append(stats.rest, sm.lat)
			}
			if sm.err == nil {
				stats.statuses[sm.status]++
			}
		}
	}()
	start := time.Now()
	for {
		el := time.Since(start)
		if el >= d {
			break
		}
		for due := int(el.Seconds() * float64(rate)); stats.sent < due; stats.sent++ {
			select {
			case jobs <- stats.sent:
			default:
				stats.dropped++
			}
		}
		time.Sleep(time.Millisecond)
	}
	close(jobs)
	workers.Wait()
	stats.elapsed = time.Since(start)
	close(samples)
	<-collected
	return stats
}

// loadTimedUpdate applies the release on h and returns how long the agent
// says the update took (its history's start and finish). during, if set,
// runs from the moment the apply was accepted until it returns.
func loadTimedUpdate(t *testing.T, h *host, during func()) time.Duration {
	t.Helper()
	code, ack := h.do(t, "POST", "/api/v1/updates/apply", h.token, nil)
	if code != http.StatusAccepted {
		t.Fatalf("apply = %d %v", code, ack)
	}
	var wg sync.WaitGroup
	if during != nil {
		wg.Go(during)
	}
	// Polled slowly, the same way for every run, so the waiting adds no load.
	deadline := time.Now().Add(5 * time.Minute)
	var hist []loadEntry
	for len(hist) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("update did not finish")
		}
		time.Sleep(250 * time.Millisecond)
		hist = loadHistory(t, h)
	}
	wg.Wait()
	if hist[0].Result != "completed" {
		t.Fatalf("update ended %s: %+v", hist[0].Result, h.status(t))
	}
	return hist[0].FinishedAt.Sub(hist[0].StartedAt)
}

// TestLoadStatusDuringUpdate polls a node's status over REST and NATS while
// it downloads and installs an update, and compares that update's duration
// with the same update on identical nodes without load, one run before and
// one after: the slowdown must stay within the profile's ratio.
func TestLoadStatusDuringUpdate(t *testing.T) {
	prof := loadProfileFromEnv()
	s := newSite(t)
	// The download alone lasts a second longer than the load.
	releaseRandom(t, s, "0.0.6", int((prof.dur+time.Second).Seconds()*loadBandwidth))
	via := s.withServer(loadPaced(t, s.url, loadBandwidth, nil))
	nodes := []string{"node-before", "node-loaded", "node-after"}
	hosts := map[string]*host{}
	for _, n := range nodes {
		hosts[n] = newHost(t, via, n, s.nats)
	}
	nc := natsClient(t, s.nats)
	waitAnswering(t, nc, nodes...)

	before := loadTimedUpdate(t, hosts["node-before"], nil)
	var stats *loadStats
	loaded := loadTimedUpdate(t, hosts["node-loaded"], func() {
		stats = loadStatus(hosts["node-loaded"], nc, "node-loaded", prof.rate, prof.dur)
	})
	after := loadTimedUpdate(t, hosts["node-after"], nil)

	baseline := (before + after) / 2
	ratio := loaded.Seconds() / baseline.Seconds()
	t.Logf("load %s: %d status req/s for %v: %s", prof.name, prof.rate, prof.dur, stats)
	t.Logf("load %s: update %v under load, %v and %v without (baseline %v): slowdown ratio %.3f (limit %.2f)",
		prof.name, loaded.Round(time.Millisecond), before.Round(time.Millisecond), after.Round(time.Millisecond),
		baseline.Round(time.Millisecond), ratio, prof.maxRatio)

	if stats.failed > 0 {
		t.Errorf("%d status requests failed; first: %s", stats.failed, stats.firstFailure)
	}
	if got := stats.achieved(); got < 0.95*float64(prof.rate) {
		t.Errorf("%.0f status requests a second answered, want at least 95%% of %d", got, prof.rate)
	}
	if stats.statuses["downloading"] == 0 {
		t.Errorf("no status request saw the download: %v", stats.statuses)
	}
	if ratio > prof.maxRatio {
		t.Errorf("the update took %.3f times as long under load, limit %.2f", ratio, prof.maxRatio)
	}
}
