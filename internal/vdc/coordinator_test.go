package vdc

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quantix-os/update-agent/internal/maintenance"
	"github.com/quantix-os/update-agent/internal/natstest"
	"github.com/quantix-os/update-agent/internal/qxtest"
	"github.com/quantix-os/update-agent/subjects"
)

func startCoordinator(t *testing.T, o CoordinatorOptions) (*nats.Conn, *Coordinator) {
	t.Helper()
	s := natstest.Start(t)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c := NewCoordinator(nc, o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	// Run subscribes asynchronously: wait until a status request is answered.
	qxtest.WaitFor(t, 5*time.Second, "the coordinator serving", func() bool {
		_, err := nc.Request(subjects.VDCMaintenanceStatus("probe"), []byte(`{"maintenanceId":"x"}`), 200*time.Millisecond)
		return err == nil
	})
	return nc, c
}

func nodeClient(t *testing.T, url, node string) *maintenance.Client {
	nc, err := nats.Connect(url, nats.CustomInboxPrefix(subjects.InboxPrefix(node)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c := maintenance.New(nc, node, nil)
	c.Poll = 100 * time.Millisecond
	return c
}

func TestMaintenanceDrainReadyRelease(t *testing.T) {
	nc, coord := startCoordinator(t, CoordinatorOptions{VMsPerNode: 3, DrainInterval: 20 * time.Millisecond, MaxUnavailable: 1})
	cl := nodeClient(t, nc.ConnectedUrl(), "node-1")
	var seen []subjects.MaintenanceEvent
	ev, err := cl.Acquire(context.Background(), subjects.MaintenanceRequest{NodeID: "node-1", TargetVersion: "0.0.7", UpdateType: subjects.UpdateTypeFull, RequiresReboot: true, OperationID: "op"},
		func(e subjects.MaintenanceEvent) { seen = append(seen, e) })
	if err != nil || ev.State != subjects.MaintenanceReady {
		t.Fatalf("Acquire = %+v, %v", ev, err)
	}
	if len(seen) == 0 || seen[0].State != subjects.MaintenanceDraining {
		t.Fatalf("events on the way: %+v", seen)
	}
	for i := 1; i < len(seen); i++ {
		if *seen[i].VMsRemaining >= *seen[i-1].VMsRemaining {
			t.Errorf("VMs did not drain: %+v", seen)
		}
	}
	if err := cl.Release(context.Background(), subjects.MaintenanceRelease{MaintenanceID: ev.MaintenanceID, NodeID: "node-1", Outcome: "completed"}); err != nil {
		t.Fatal(err)
	}
	st := coord.States()
	if len(st) != 1 || st[0].State != subjects.MaintenanceReleased {
		t.Fatalf("states %+v", st)
	}
	// A release of someone else's maintenance is refused.
	if err := cl.Release(context.Background(), subjects.MaintenanceRelease{MaintenanceID: "nope", NodeID: "node-1"}); !errors.Is(err, maintenance.ErrRefused) {
		t.Errorf("bogus release: %v", err)
	}
}

func TestMaintenanceMaxUnavailable(t *testing.T) {
	nc, coord := startCoordinator(t, CoordinatorOptions{VMsPerNode: 1, DrainInterval: 30 * time.Millisecond, MaxUnavailable: 1})
	nodes := []string{"node-1", "node-2", "node-3"}
	var mu sync.Mutex
	inMaint, maxIn := 0, 0
	var wg sync.WaitGroup
	for _, n := range nodes {
		cl := nodeClient(t, nc.ConnectedUrl(), n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev, err := cl.Acquire(context.Background(), subjects.MaintenanceRequest{NodeID: n, TargetVersion: "1.0.0", UpdateType: subjects.UpdateTypeFull, OperationID: "op-" + n}, nil)
			if err != nil {
				t.Errorf("%s: %v", n, err)
				return
			}
			mu.Lock()
			inMaint++
			maxIn = max(maxIn, inMaint)
			mu.Unlock()
			time.Sleep(50 * time.Millisecond) // "reboot"
			mu.Lock()
			inMaint--
			mu.Unlock()
			if err := cl.Release(context.Background(), subjects.MaintenanceRelease{MaintenanceID: ev.MaintenanceID, NodeID: n, Outcome: "completed"}); err != nil {
				t.Errorf("%s release: %v", n, err)
			}
		}()
	}
	wg.Wait()
	if maxIn != 1 {
		t.Fatalf("%d nodes in maintenance at once, want 1", maxIn)
	}
	for _, s := range coord.States() {
		if s.State != subjects.MaintenanceReleased {
			t.Errorf("%s ended %s", s.NodeID, s.State)
		}
	}
}

func TestMaintenanceCancelledAndImpersonation(t *testing.T) {
	nc, coord := startCoordinator(t, CoordinatorOptions{VMsPerNode: 50, DrainInterval: time.Second, MaxUnavailable: 1})
	cl := nodeClient(t, nc.ConnectedUrl(), "node-1")
	errc := make(chan error, 1)
	go func() {
		_, err := cl.Acquire(context.Background(), subjects.MaintenanceRequest{NodeID: "node-1", TargetVersion: "1.0.0", UpdateType: subjects.UpdateTypeFull, OperationID: "op"}, nil)
		errc <- err
	}()
	qxtest.WaitFor(t, 5*time.Second, "the maintenance request", func() bool { return len(coord.States()) > 0 })
	if !coord.Cancel("node-1", "operator said no") {
		t.Fatal("nothing to cancel")
	}
	select {
	case err := <-errc:
		if !errors.Is(err, maintenance.ErrCancelled) {
			t.Fatalf("Acquire after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Acquire did not end on cancel")
	}
	// A request whose nodeId is not the subject's node is refused.
	cl2 := nodeClient(t, nc.ConnectedUrl(), "node-2")
	_, err := cl2.Acquire(context.Background(), subjects.MaintenanceRequest{NodeID: "node-1", TargetVersion: "1.0.0", OperationID: "x"}, nil)
	if !errors.Is(err, maintenance.ErrFailed) {
		t.Fatalf("impersonating request: %v", err)
	}
}

func TestMaintenanceTimeout(t *testing.T) {
	nc, _ := startCoordinator(t, CoordinatorOptions{VMsPerNode: 100, DrainInterval: time.Second})
	cl := nodeClient(t, nc.ConnectedUrl(), "node-1")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := cl.Acquire(ctx, subjects.MaintenanceRequest{NodeID: "node-1", TargetVersion: "1.0.0", OperationID: "op"}, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire = %v, want deadline exceeded", err)
	}
}
