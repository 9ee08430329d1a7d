package journal

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

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
