package journal

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/quantix-os/update-agent/subjects"
)

func TestUpdatePersists(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Update(func(st *State) error {
		st.Seq = 41
		st.Serials["dev"] = 12
		st.Op = &Operation{ID: "op1", Phase: PhaseInstalling, Components: []Component{{Name: "qx-node", Step: StepSwapping}}}
		st.RememberAck(subjects.Ack{Accepted: true, OperationID: "op1"}, st.LastCheck)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s2.View(func(st *State) {
		if st.Seq != 41 || st.Serials["dev"] != 12 || st.Op == nil || st.Op.Components[0].Step != StepSwapping {
			t.Fatalf("reopened state lost data: %+v", st)
		}
		if a, ok := st.FindAck("op1"); !ok || !a.Accepted {
			t.Fatalf("ack not remembered")
		}
	})
}

func TestUpdateErrorKeepsState(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := s.Update(func(st *State) error { st.Seq = 9; st.Serials["x"] = 1; return boom }); !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want boom", err)
	}
	s.View(func(st *State) {
		if st.Seq != 0 || len(st.Serials) != 0 {
			t.Fatalf("failed update leaked into state: %+v", st)
		}
	})
}

func TestOpenCorrupt(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open = %v, want ErrCorrupt", err)
	}
}

func TestLeftoverTempIgnored(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	if err := s.Update(func(st *State) error { st.Seq = 3; return nil }); err != nil {
		t.Fatal(err)
	}
	// A crash between write and rename leaves a temp file: it must not count.
	if err := os.WriteFile(filepath.Join(dir, FileName+".tmp"), []byte(`{"seq":99}`), 0o600); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s2.View(func(st *State) {
		if st.Seq != 3 {
			t.Fatalf("seq = %d, want 3", st.Seq)
		}
	})
	if _, err := os.Stat(filepath.Join(dir, FileName+".tmp")); !os.IsNotExist(err) {
		t.Fatalf("temp file not cleaned: %v", err)
	}
}

func TestCaps(t *testing.T) {
	var st State
	for i := 0; i < MaxHistory+10; i++ {
		st.AddHistory(Entry{OperationID: string(rune('a' + i%26))})
	}
	if len(st.History) != MaxHistory {
		t.Fatalf("history len %d", len(st.History))
	}
	for i := 0; i < MaxAcks+5; i++ {
		st.RememberAck(subjects.Ack{OperationID: "x"}, st.LastCheck)
	}
	if len(st.Acks) != MaxAcks {
		t.Fatalf("acks len %d", len(st.Acks))
	}
}

// sample is a State with every field set, at every level clone copies.
func sample() State {
	ch, on, every := "beta", true, time.Hour
	return State{
		Initialized:    true,
		Versions:       subjects.Versions{OS: "0.0.5", Components: map[string]string{"qx-node": "0.0.5"}},
		CurrentVersion: "0.0.5",
		Serials:        map[string]uint64{"dev": 3},
		Seq:            9,
		Op: &Operation{ID: "op", Kind: "component", Version: "0.0.6", From: "0.0.5", Channel: "dev", Phase: PhaseInstalling,
			ForceReboot: true, Manifest: []byte(`{}`), Attempts: 1, Started: time.Unix(1, 0), Cancelled: "why",
			MaintenanceID: "m", TargetSlot: "b", FromSlot: "a",
			Components: []Component{{Name: "qx-node", Version: "0.0.6", From: "0.0.5", Step: StepSwapping, HadOld: true, Dir: "/d", Staging: "/s", StagingIno: 7, Backup: "/b", Download: "/dl"}}},
		Acks:      []Ack{{Ack: subjects.Ack{Accepted: true, OperationID: "op"}, Time: time.Unix(2, 0)}},
		History:   []Entry{{OperationID: "old", Components: []string{"qx-node"}}},
		Outbox:    []Pending{{Seq: 9, ID: "e9", Payload: []byte(`{"seq":9}`)}},
		Dropped:   1,
		Settings:  Settings{Channel: &ch, AutoCheck: &on, AutoApply: &on, CheckInterval: &every},
		BootSlot:  "a",
		Releases:  []subjects.MaintenanceRelease{{MaintenanceID: "m", NodeID: "n", Outcome: "completed"}},
		LastCheck: time.Unix(3, 0),
	}
}

// clone must copy every field of State deeply: a change to the copy (what
// Update's fn gets) must never reach the state the journal holds.
func TestCloneCopiesEveryField(t *testing.T) {
	st := sample()
	// A field added to State (or to a type clone copies) must be set in
	// sample and handled by clone.
	for _, v := range []reflect.Value{reflect.ValueOf(st), reflect.ValueOf(*st.Op), reflect.ValueOf(st.Op.Components[0]), reflect.ValueOf(st.Settings)} {
		for i := range v.NumField() {
			if v.Field(i).IsZero() {
				t.Errorf("sample leaves %s.%s zero: set it, and make sure clone copies it", v.Type().Name(), v.Type().Field(i).Name)
			}
		}
	}
	before, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	c := clone(st)
	if got, _ := json.Marshal(c); string(got) != string(before) {
		t.Fatalf("clone differs:\n%s\n%s", got, before)
	}
	// Change everything reachable in the copy.
	c.Versions.Components["qx-node"] = "x"
	c.Serials["dev"] = 99
	c.Op.Phase = PhaseRollingBack
	c.Op.Components[0].Step = StepDone
	c.Acks[0].Ack.Accepted = false
	c.History[0].Components[0] = "x"
	c.Outbox[0].Seq = 99
	*c.Settings.Channel = "x"
	*c.Settings.AutoCheck = false
	*c.Settings.AutoApply = false
	*c.Settings.CheckInterval = time.Second
	c.Releases[0].Outcome = "x"
	if after, _ := json.Marshal(st); string(after) != string(before) {
		t.Errorf("changing the clone changed the original:\n%s\n%s", after, before)
	}
	// An empty state clones to usable maps.
	if e := clone(State{}); e.Serials == nil || e.Versions.Components == nil {
		t.Errorf("clone of an empty state has nil maps: %+v", e)
	}
}
