package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quantix-os/update-agent/internal/bootsim"
	"github.com/quantix-os/update-agent/internal/grubenv"
	"github.com/quantix-os/update-agent/subjects"
)

// fakeMaint is a hand-written maintenance coordinator recording what it was asked.
type fakeMaint struct {
	mu       sync.Mutex
	acquired []subjects.MaintenanceRequest
	released []subjects.MaintenanceRelease
	// acquire decides the answer; nil: draining, then ready.
	acquire func(ctx context.Context, req subjects.MaintenanceRequest, onEvent func(subjects.MaintenanceEvent)) (subjects.MaintenanceEvent, error)
}

func (f *fakeMaint) Acquire(ctx context.Context, req subjects.MaintenanceRequest, onEvent func(subjects.MaintenanceEvent)) (subjects.MaintenanceEvent, error) {
	f.mu.Lock()
	f.acquired = append(f.acquired, req)
	f.mu.Unlock()
	if f.acquire != nil {
		return f.acquire(ctx, req, onEvent)
	}
	two := 2
	onEvent(subjects.MaintenanceEvent{MaintenanceID: "m-1", NodeID: req.NodeID, State: subjects.MaintenanceDraining, VMsRemaining: &two})
	return subjects.MaintenanceEvent{MaintenanceID: "m-1", NodeID: req.NodeID, State: subjects.MaintenanceReady}, nil
}

func (f *fakeMaint) Release(ctx context.Context, rel subjects.MaintenanceRelease) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released = append(f.released, rel)
	return nil
}

func (f *fakeMaint) calls() (int, []subjects.MaintenanceRelease) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.acquired), append([]subjects.MaintenanceRelease(nil), f.released...)
}

type abHost struct {
	*harness
	maint             *fakeMaint
	slotA, slotB, env string
	cmdline, rebooted string
	raw, oldA         []byte
}

// newABHost is a host booted from slot a with a 0.0.6 release carrying a
// 3 MiB system image.
func newABHost(t *testing.T, maint *fakeMaint, mods ...func(*Options)) *abHost {
	t.Helper()
	a := &abHost{maint: maint}
	pre := func(h *harness) {
		a.harness = h
		h.maint = maint
		rng := rand.New(rand.NewSource(1))
		var buf bytes.Buffer
		for buf.Len() < 3<<20 {
			// Compressible like a filesystem: runs of text and some noise.
			fmt.Fprintf(&buf, "block %d of the quantix root filesystem\n", buf.Len())
			if rng.Intn(4) == 0 {
				b := make([]byte, 64)
				rng.Read(b)
				buf.Write(b)
			}
		}
		a.raw = buf.Bytes()
		h.image = filepath.Join(h.dir, "quantix-os.img")
		writeFile(t, h.image, string(a.raw), 0o644)
		a.slotA = filepath.Join(h.dir, "slot-a")
		a.slotB = filepath.Join(h.dir, "slot-b")
		a.oldA = bytes.Repeat([]byte("old system a "), 1000)
		writeFile(t, a.slotA, string(a.oldA), 0o644)
		writeFile(t, a.slotB, "stale b", 0o644)
		a.env = filepath.Join(h.dir, "grubenv")
		env := grubenv.New()
		env.Set(EnvSlot, "a")
		if err := grubenv.Write(a.env, env); err != nil {
			t.Fatal(err)
		}
		a.cmdline = filepath.Join(h.dir, "cmdline")
		writeFile(t, a.cmdline, "BOOT_IMAGE=/vmlinuz qx.slot=a quiet\n", 0o644)
		a.rebooted = filepath.Join(h.dir, "rebooted")
	}
	mods = append([]func(*Options){func(o *Options) {
		o.AB = &AB{Slots: map[string]string{"a": a.slotA, "b": a.slotB}, GrubEnv: a.env, Cmdline: a.cmdline,
			RebootCommand: []string{"/bin/sh", "-c", "echo reboot >>" + a.rebooted}, MaintenanceTimeout: 5 * time.Second}
	}}, mods...)
	newHarnessWith(t, pre, mods...)
	return a
}

func (a *abHost) envVar(k string) string {
	env, err := grubenv.Read(a.env)
	if err != nil {
		a.t.Fatal(err)
	}
	v, _ := env.Get(k)
	return v
}

func (a *abHost) waitStatus(want subjects.Status) {
	a.t.Helper()
	waitFor(a.t, "status "+string(want), func() bool { return a.eng.Status().Status == want })
}

// reboot restarts the agent the way a reboot would: the boot simulator
// applies the GRUB rule and writes the new command line.
func (a *abHost) reboot(failTrial bool) string {
	a.t.Helper()
	a.cancel()
	a.eng.Wait()
	slot, err := bootsim.Boot(a.env, a.cmdline)
	if err != nil {
		a.t.Fatal(err)
	}
	if failTrial {
		// The trial kernel panics before the agent runs: the machine resets
		// and GRUB, with no tries left, boots the committed slot.
		if slot, err = bootsim.Boot(a.env, a.cmdline); err != nil {
			a.t.Fatal(err)
		}
	}
	a.start()
	return slot
}

func TestFullUpdateTrialBootCommits(t *testing.T) {
	a := newABHost(t, &fakeMaint{})
	reply, err := a.eng.Check(context.Background(), subjects.CheckRequest{})
	if err != nil || !reply.FullImageAvailable {
		t.Fatalf("check %+v %v", reply, err)
	}
	ack, err := a.eng.Apply(context.Background(), subjects.ApplyCommand{OperationID: "full-1", ForceReboot: true})
	if err != nil || !ack.Accepted {
		t.Fatal(ack, err)
	}
	a.waitStatus(subjects.StatusRebootRequired)
	if !isClosed(a.eng.Booted()) {
		t.Error("Booted not closed after a start with no trial armed")
	}
	if got, _ := os.ReadFile(a.slotB); !bytes.Equal(got, a.raw) {
		t.Fatalf("slot b does not hold the image (%d bytes, want %d)", len(got), len(a.raw))
	}
	if got, _ := os.ReadFile(a.slotA); !bytes.Equal(got, a.oldA) {
		t.Fatal("the active slot a was touched")
	}
	if a.envVar(EnvTrySlot) != "b" || a.envVar(EnvTries) != "1" || a.envVar(EnvSlot) != "a" {
		t.Fatalf("grub env try=%q tries=%q slot=%q", a.envVar(EnvTrySlot), a.envVar(EnvTries), a.envVar(EnvSlot))
	}
	if _, err := os.Stat(a.rebooted); err != nil {
		t.Fatalf("reboot command not run: %v", err)
	}
	if n, rel := a.maint.calls(); n != 1 || len(rel) != 0 {
		t.Fatalf("maintenance acquired %d, released %v before the reboot", n, rel)
	}
	// Another command while the trial waits is refused.
	if _, err := a.eng.Apply(context.Background(), subjects.ApplyCommand{OperationID: "other"}); !errors.Is(err, ErrBusy) {
		t.Errorf("apply while awaiting reboot: %v", err)
	}

	if slot := a.reboot(false); slot != "b" {
		t.Fatalf("booted %s, want b", slot)
	}
	// The agent announces itself once the trial is decided: by then the
	// versions are the new ones.
	select {
	case <-a.eng.Booted():
	case <-time.After(10 * time.Second):
		t.Fatal("Booted not closed after the trial boot")
	}
	if v := a.eng.Versions(); v.OS != "0.0.6" {
		t.Errorf("versions when Booted closed: %+v, want OS 0.0.6", v)
	}
	ev := a.wait()
	if ev.Type != subjects.EventCompleted {
		t.Fatalf("after the trial boot: %+v", ev)
	}
	if a.envVar(EnvSlot) != "b" || a.envVar(EnvTrySlot) != "" || a.envVar(EnvTries) != "" {
		t.Errorf("not committed: slot=%q try=%q tries=%q", a.envVar(EnvSlot), a.envVar(EnvTrySlot), a.envVar(EnvTries))
	}
	if v := a.eng.Versions(); v.OS != "0.0.6" || v.Components["qx-node"] != "0.0.6" {
		t.Errorf("versions %+v", v)
	}
	waitFor(t, "maintenance release", func() bool { _, rel := a.maint.calls(); return len(rel) == 1 })
	if _, rel := a.maint.calls(); rel[0].Outcome != "completed" || rel[0].MaintenanceID != "m-1" {
		t.Errorf("release %+v", rel)
	}
}

func TestFullUpdateTrialBootFallsBack(t *testing.T) {
	a := newABHost(t, &fakeMaint{})
	a.apply2(t, subjects.ApplyCommand{OperationID: "full-2", ForceReboot: true})
	a.waitStatus(subjects.StatusRebootRequired)
	if slot := a.reboot(true); slot != "a" {
		t.Fatalf("after a failed trial booted %s, want a", slot)
	}
	ev := a.wait()
	if ev.Type != subjects.EventRolledBack || !strings.Contains(ev.Message, "slot b failed") {
		t.Fatalf("event %+v", ev)
	}
	if a.envVar(EnvSlot) != "a" || a.envVar(EnvTrySlot) != "" {
		t.Errorf("slot=%q try=%q", a.envVar(EnvSlot), a.envVar(EnvTrySlot))
	}
	if a.eng.CurrentVersion() != "0.0.5" {
		t.Errorf("current %s", a.eng.CurrentVersion())
	}
	waitFor(t, "maintenance release", func() bool { _, rel := a.maint.calls(); return len(rel) == 1 })
	if _, rel := a.maint.calls(); rel[0].Outcome != "rolled_back" {
		t.Errorf("release %+v", rel)
	}
}

func (a *abHost) apply2(t *testing.T, cmd subjects.ApplyCommand) {
	t.Helper()
	ack, err := a.eng.Apply(context.Background(), cmd)
	if err != nil || !ack.Accepted {
		t.Fatal(ack, err)
	}
}

func TestFullUpdateWithoutForceRebootWaits(t *testing.T) {
	a := newABHost(t, &fakeMaint{})
	a.apply2(t, subjects.ApplyCommand{OperationID: "full-3"})
	a.waitStatus(subjects.StatusRebootRequired)
	if _, err := os.Stat(a.rebooted); !os.IsNotExist(err) {
		t.Fatal("rebooted without forceReboot")
	}
	// An agent restart without a reboot keeps waiting.
	a.cancel()
	a.eng.Wait()
	a.start()
	a.waitStatus(subjects.StatusRebootRequired)
	// The operator cancels instead: the trial is disarmed, slot a stays.
	ack, err := a.eng.Cancel(context.Background(), subjects.CancelCommand{})
	if err != nil || !ack.Accepted {
		t.Fatal(ack, err)
	}
	if ev := a.wait(); ev.Type != subjects.EventCancelled {
		t.Fatalf("event %+v", ev)
	}
	if a.envVar(EnvTrySlot) != "" || a.envVar(EnvSlot) != "a" {
		t.Errorf("trial still armed")
	}
}

func TestFullUpdateMaintenanceRefused(t *testing.T) {
	tests := []struct {
		name    string
		acquire func(ctx context.Context, req subjects.MaintenanceRequest, onEvent func(subjects.MaintenanceEvent)) (subjects.MaintenanceEvent, error)
		want    string
	}{
		{"cancelled", func(ctx context.Context, req subjects.MaintenanceRequest, onEvent func(subjects.MaintenanceEvent)) (subjects.MaintenanceEvent, error) {
			return subjects.MaintenanceEvent{MaintenanceID: "m-9", State: subjects.MaintenanceCancelled}, errors.New("operator cancelled the drain")
		}, "operator cancelled the drain"},
		{"timed out", func(ctx context.Context, req subjects.MaintenanceRequest, onEvent func(subjects.MaintenanceEvent)) (subjects.MaintenanceEvent, error) {
			onEvent(subjects.MaintenanceEvent{MaintenanceID: "m-8", NodeID: req.NodeID, State: subjects.MaintenanceQueued})
			<-ctx.Done()
			return subjects.MaintenanceEvent{}, ctx.Err()
		}, "maintenance not ready after"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newABHost(t, &fakeMaint{acquire: tt.acquire}, func(o *Options) { o.AB.MaintenanceTimeout = 300 * time.Millisecond })
			a.apply2(t, subjects.ApplyCommand{OperationID: "full-m", ForceReboot: true})
			ev := a.wait()
			if ev.Type != subjects.EventFailed || !strings.Contains(ev.Message, tt.want) {
				t.Fatalf("event %+v, want failed naming %q", ev, tt.want)
			}
			if got, _ := os.ReadFile(a.slotB); string(got) != "stale b" {
				t.Error("slot b written although maintenance never became ready")
			}
			if a.envVar(EnvTrySlot) != "" {
				t.Error("trial armed")
			}
			if _, err := os.Stat(a.rebooted); !os.IsNotExist(err) {
				t.Error("rebooted")
			}
		})
	}
}

func TestFullUpdateKilledDuringImageWrite(t *testing.T) {
	var mu sync.Mutex
	killed := false
	var a *abHost
	a = newABHost(t, &fakeMaint{}, func(o *Options) {
		o.Failpoint = func(name string) {
			mu.Lock()
			defer mu.Unlock()
			if name == "writing" && !killed {
				// Killed with the slot half written: the first MiB of the image
				// is there, the rest is what the slot held before.
				killed = true
				writeFile(t, a.slotB, string(a.raw[:1<<20]), 0o644)
				runtime.Goexit()
			}
		}
	})
	a.apply2(t, subjects.ApplyCommand{OperationID: "full-k", ForceReboot: true})
	waitFor(t, "the kill", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return killed && (a.eng.Done() == nil || isClosed(a.eng.Done()))
	})
	if got, _ := os.ReadFile(a.slotA); !bytes.Equal(got, a.oldA) {
		t.Fatal("the active slot was touched")
	}
	a.cancel()
	a.start()
	a.waitStatus(subjects.StatusRebootRequired)
	if !isClosed(a.eng.Booted()) {
		t.Error("Booted not closed after a start with no trial armed")
	}
	if got, _ := os.ReadFile(a.slotB); !bytes.Equal(got, a.raw) {
		t.Fatal("slot b does not hold the image after the resumed write")
	}
	if got, _ := os.ReadFile(a.slotA); !bytes.Equal(got, a.oldA) {
		t.Fatal("the active slot was touched")
	}
	if a.reboot(false) != "b" {
		t.Fatal("did not boot b")
	}
	if ev := a.wait(); ev.Type != subjects.EventCompleted {
		t.Fatalf("event %+v", ev)
	}
}

// While vDC drains the host the image is already downloaded and verified:
// the status says the update is being applied, and why it waits.
func TestFullUpdateStatusWhileDraining(t *testing.T) {
	var a *abHost
	var during subjects.StatusReport
	maint := &fakeMaint{acquire: func(ctx context.Context, req subjects.MaintenanceRequest, onEvent func(subjects.MaintenanceEvent)) (subjects.MaintenanceEvent, error) {
		one := 1
		onEvent(subjects.MaintenanceEvent{MaintenanceID: "m-1", NodeID: req.NodeID, State: subjects.MaintenanceDraining, VMsRemaining: &one})
		during = a.eng.Status()
		return subjects.MaintenanceEvent{MaintenanceID: "m-1", NodeID: req.NodeID, State: subjects.MaintenanceReady}, nil
	}}
	a = newABHost(t, maint)
	if _, err := a.eng.Apply(context.Background(), subjects.ApplyCommand{OperationID: "full-drain", ForceReboot: false}); err != nil {
		t.Fatal(err)
	}
	a.waitStatus(subjects.StatusRebootRequired)
	if during.Status != subjects.StatusApplying || during.Message != "maintenance draining (1 VMs remaining)" {
		t.Errorf("status while draining = %q %q, want applying with the drain's state", during.Status, during.Message)
	}
}
