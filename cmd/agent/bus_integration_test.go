package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix-os/update-agent/subjects"
)

// vdcJSON runs a vdc-sim client command with --json against the site's NATS
// and decodes its output into v.
func (s *site) vdcJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	args = append(args, "--json", "--nats-url", s.nats)
	out, err := exec.Command(filepath.Join(binDir, "vdc-sim"), args...).Output()
	if err != nil {
		t.Fatalf("vdc-sim %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("vdc-sim %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

type storedEvent struct {
	Subject string                `json:"subject"`
	Update  *subjects.UpdateEvent `json:"update"`
	Agent   *subjects.AgentEvent  `json:"agent"`
}

func (e storedEvent) seq() uint64 {
	if e.Update != nil {
		return e.Update.Seq
	}
	if e.Agent != nil {
		return e.Agent.Seq
	}
	return 0
}

// checkSeq asserts a node's stored events run 1, 2, 3... with no gap or
// duplicate and returns the last update event.
func checkSeq(t *testing.T, evs []storedEvent) subjects.UpdateEvent {
	t.Helper()
	var last subjects.UpdateEvent
	for i, e := range evs {
		if e.seq() != uint64(i+1) {
			t.Fatalf("event %d has seq %d: gap or duplicate in %v", i, e.seq(), seqs(evs))
		}
		if e.Update != nil {
			last = *e.Update
		}
	}
	return last
}

func seqs(evs []storedEvent) []uint64 {
	var out []uint64
	for _, e := range evs {
		out = append(out, e.seq())
	}
	return out
}

// TestFleetOverNATS is the bus capability tried as a new user would: three
// agents, a fleet check, an apply followed to the end, the events and the hosts.
func TestFleetOverNATS(t *testing.T) {
	s := newSite(t)
	s.release(t, "0.0.6")
	hosts := map[string]*host{}
	for _, n := range []string{"node-1", "node-2", "node-3"} {
		hosts[n] = newHost(t, s, n, s.nats)
	}
	waitFor(t, "three hosts in the KV bucket", func() bool {
		var hs []subjects.NodeState
		s.vdcJSON(t, &hs, "hosts")
		return len(hs) == 3
	})

	var replies []subjects.CheckReply
	s.vdcJSON(t, &replies, "check", "--all", "--timeout", "10s")
	if len(replies) != 3 {
		t.Fatalf("%d nodes answered the fleet check, want 3: %+v", len(replies), replies)
	}
	for _, r := range replies {
		if !r.Available || r.AvailableVersion != "0.0.6" || len(r.Components) != 2 {
			t.Errorf("%s: %+v", r.NodeID, r)
		}
	}
	// With the signed manifest in the request, nodes answer from it.
	replies = nil
	s.vdcJSON(t, &replies, "check", "--all", "--with-manifest", "--server", s.url, "--channel", "dev", "--timeout", "10s")
	if len(replies) != 3 || !replies[0].Available {
		t.Fatalf("check --with-manifest: %+v", replies)
	}

	out, err := exec.Command(filepath.Join(binDir, "vdc-sim"), "apply", "--node", "node-2", "--wait", "--nats-url", s.nats).CombinedOutput()
	if err != nil {
		t.Fatalf("apply --wait: %v\n%s", err, out)
	}
	if got := hosts["node-2"].file(t, "opt/quantix/qx-node/bin/qx-node"); got != "qx-node 0.0.6\n" {
		t.Errorf("node-2 qx-node = %q", got)
	}
	if got := hosts["node-1"].file(t, "opt/quantix/qx-node/bin/qx-node"); got != "qx-node 0.0.5\n" {
		t.Errorf("node-1 changed: %q", got)
	}

	var evs []storedEvent
	s.vdcJSON(t, &evs, "events", "--node", "node-2")
	if last := checkSeq(t, evs); last.Type != subjects.EventCompleted || last.Version != "0.0.6" {
		t.Fatalf("last event %+v", last)
	}
	if evs[0].Agent == nil || evs[0].Agent.Type != subjects.EventOnline {
		t.Errorf("first event is not the agent coming online: %+v", evs[0])
	}

	waitFor(t, "node-2 at 0.0.6 in hosts", func() bool {
		var hs []subjects.NodeState
		s.vdcJSON(t, &hs, "hosts")
		for _, h := range hs {
			if h.NodeID == "node-2" {
				return h.CurrentVersion == "0.0.6" && h.Status == subjects.StatusComplete
			}
		}
		return false
	})

	// vDC's REST side.
	resp, err := httpPost(s.url+"/api/v1/updates/hosts/node-3/apply", `{"forceReboot": false}`)
	if err != nil || resp != 202 {
		t.Fatalf("POST hosts/node-3/apply = %d, %v", resp, err)
	}
	hosts["node-3"].waitStatus(t, "complete")
}
