package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quantix-os/update-agent/subjects"
)

// TestServeCoordinator: serve plays vDC's maintenance coordinator from the
// moment it says "nats listening": it drains a node's simulated VMs, keeps
// --max-unavailable nodes in maintenance and queues the rest, and ends a
// node's window when vDC cancels its update.
func TestServeCoordinator(t *testing.T) {
	dir := t.TempDir()
	srv := startServe(t, "--repo", dir, "--http", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0",
		"--store", filepath.Join(dir, "nats"), "--vms-per-node", "2", "--drain-interval", "20ms", "--max-unavailable", "1")
	url := srv.natsURL(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var mu sync.Mutex
	var events []subjects.MaintenanceEvent
	if _, err := nc.Subscribe(subjects.NodeMaintenance("*"), func(m *nats.Msg) {
		var ev subjects.MaintenanceEvent
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Errorf("maintenance event %s: %v", m.Data, err)
		}
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	latest := func(node string) subjects.MaintenanceState {
		mu.Lock()
		defer mu.Unlock()
		for i := len(events) - 1; i >= 0; i-- {
			if events[i].NodeID == node {
				return events[i].State
			}
		}
		return ""
	}
	request := func(node string) subjects.MaintenanceEvent {
		t.Helper()
		b, _ := json.Marshal(subjects.MaintenanceRequest{NodeID: node, TargetVersion: "0.0.6", UpdateType: subjects.UpdateTypeFull, RequiresReboot: true, OperationID: "op-" + node})
		// No retry: the coordinator must answer as soon as serve says it listens.
		m, err := nc.Request(subjects.VDCMaintenanceRequest(node), b, 5*time.Second)
		if err != nil {
			t.Fatalf("maintenance request of %s: %v", node, err)
		}
		var ev subjects.MaintenanceEvent
		if err := subjects.Decode(m.Data, &ev); err != nil {
			t.Fatal(err)
		}
		return ev
	}

	m1 := request("m1")
	if m1.State != subjects.MaintenanceDraining || m1.VMsRemaining == nil || *m1.VMsRemaining != 2 || m1.MaintenanceID == "" {
		t.Fatalf("m1 = %+v; want draining with 2 VMs", m1)
	}
	if m2 := request("m2"); m2.State != subjects.MaintenanceQueued {
		t.Fatalf("m2 = %+v; want queued behind m1 (--max-unavailable 1)", m2)
	}
	waitFor(t, "m1 ready", func() bool { return latest("m1") == subjects.MaintenanceReady })
	if latest("m2") != "" {
		t.Errorf("m2 left the queue while m1 held the only window: %s", latest("m2"))
	}

	b, _ := json.Marshal(subjects.MaintenanceRelease{MaintenanceID: m1.MaintenanceID, NodeID: "m1", Outcome: "completed"})
	m, err := nc.Request(subjects.VDCMaintenanceRelease("m1"), b, 5*time.Second)
	if err != nil || !strings.Contains(string(m.Data), `"accepted":true`) {
		t.Fatalf("release m1: %v %s", err, m.Data)
	}
	waitFor(t, "m2 draining after m1's release", func() bool {
		s := latest("m2")
		return s == subjects.MaintenanceDraining || s == subjects.MaintenanceReady
	})

	// vDC cancelling m2's update (no agent answers here) ends its window too.
	out, errOut, code := vdcSim(t, "cancel", "--node", "m2", "--timeout", "300ms", "--nats-url", url)
	if code != 1 || !strings.Contains(errOut, "node did not answer") {
		t.Errorf("cancel with no agent: exit %d\n%s%s", code, out, errOut)
	}
	waitFor(t, "m2 cancelled", func() bool { return latest("m2") == subjects.MaintenanceCancelled })
	for _, want := range []string{"maintenance coordinator running", "state=draining", "state=released", "reason=completed", "state=cancelled"} {
		if !strings.Contains(srv.logs.String(), want) {
			t.Errorf("serve log lacks %q", want)
		}
	}
	srv.stop(t)
}

func TestServeCoordinatorFlags(t *testing.T) {
	for _, tt := range []struct{ flag, value, want string }{
		{"--vms-per-node", "-1", "--vms-per-node -1: want 0 or more"},
		{"--drain-interval", "0s", "--drain-interval 0s: want a positive duration"},
		{"--max-unavailable", "0", "--max-unavailable 0: want 1 or more"},
	} {
		_, errOut, code := vdcSim(t, "serve", "--repo", t.TempDir(), "--http", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", tt.flag, tt.value)
		if code != 1 || !strings.Contains(errOut, tt.want) {
			t.Errorf("serve %s %s: exit %d, stderr %q; want 1 and %q", tt.flag, tt.value, code, errOut, tt.want)
		}
	}
}
