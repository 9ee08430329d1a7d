package engine

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/subjects"
)

// requireExchange fails the test when the file system of dir cannot swap
// two trees in one rename: the tests below are about that swap.
func requireExchange(t *testing.T, dir string) {
	t.Helper()
	a, b := filepath.Join(dir, "xa"), filepath.Join(dir, "xb")
	for _, p := range []string{a, b} {
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := exchange(a, b); err != nil {
		t.Fatalf("the file system of %s (TMPDIR) cannot do renameat2(RENAME_EXCHANGE): %v; run the tests on ext4, xfs, btrfs or tmpfs", dir, err)
	}
	os.Remove(a)
	os.Remove(b)
}

// A component's install dir exists at every step of its update: the swap
// exchanges the trees in one rename.
func TestInstallDirNeverAbsent(t *testing.T) {
	requireExchange(t, t.TempDir())
	var mu sync.Mutex
	var absent []string
	var dirs []string
	h := newHarness(t, func(o *Options) {
		for _, c := range o.Components {
			dirs = append(dirs, c.Dir)
		}
		o.Failpoint = func(name string) {
			for _, d := range dirs {
				if !exists(d) {
					mu.Lock()
					absent = append(absent, name+": "+d)
					mu.Unlock()
				}
			}
		}
	})
	if ev := h.apply(subjects.ApplyCommand{OperationID: "op-swap"}); ev.Type != subjects.EventCompleted {
		t.Fatalf("apply: %+v", ev)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(absent) > 0 {
		t.Errorf("install dir absent at %q", absent)
	}
	for _, c := range []string{"qx-node", "qx-console"} {
		if got := h.read("opt/quantix/" + c + "/bin/" + c); got != "new "+c+"\n" {
			t.Errorf("%s = %q", c, got)
		}
	}
}

// restoreOne puts the old tree back from every state a swap can be cut
// off in, by either swap, and again after being cut off itself.
func TestRestoreOne(t *testing.T) {
	requireExchange(t, t.TempDir())
	tests := []struct {
		name string
		// lay arranges the trees; old and new are directories holding
		// "old" and "new" files, to be moved to the component's paths.
		lay       func(t *testing.T, c journal.Component, old, new string)
		legacy    bool // a journal without the staging inode
		wantError bool
	}{
		{"before the swap", func(t *testing.T, c journal.Component, old, new string) {
			mv(t, old, c.Dir)
			mv(t, new, c.Staging)
		}, false, false},
		{"exchanged", func(t *testing.T, c journal.Component, old, new string) {
			mv(t, new, c.Dir)
			mv(t, old, c.Staging)
		}, false, false},
		{"exchanged and backed up", func(t *testing.T, c journal.Component, old, new string) {
			mv(t, new, c.Dir)
			mv(t, old, c.Backup)
		}, false, false},
		{"restore cut off after exchanging back", func(t *testing.T, c journal.Component, old, new string) {
			mv(t, old, c.Dir)
			mv(t, new, c.Backup)
		}, false, false},
		{"two renames: backed up", func(t *testing.T, c journal.Component, old, new string) {
			mv(t, old, c.Backup)
			mv(t, new, c.Staging)
		}, false, false},
		{"legacy journal: swapped", func(t *testing.T, c journal.Component, old, new string) {
			mv(t, new, c.Dir)
			mv(t, old, c.Backup)
		}, true, false},
		{"legacy journal: backed up", func(t *testing.T, c journal.Component, old, new string) {
			mv(t, old, c.Backup)
			mv(t, new, c.Staging)
		}, true, false},
		{"install dir replaced by something else", func(t *testing.T, c journal.Component, old, new string) {
			mv(t, old, c.Backup)
			mv(t, new, c.Staging)
			if err := os.Mkdir(c.Dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			old, new := filepath.Join(dir, "src-old"), filepath.Join(dir, "src-new")
			writeFile(t, filepath.Join(old, "which"), "old", 0o644)
			writeFile(t, filepath.Join(new, "which"), "new", 0o644)
			ino, err := inode(new)
			if err != nil {
				t.Fatal(err)
			}
			c := journal.Component{Name: "qx-node", Step: journal.StepSwapped, HadOld: true, StagingIno: ino,
				Dir: filepath.Join(dir, "qx-node"), Staging: filepath.Join(dir, ".qx-node.staging"), Backup: filepath.Join(dir, ".qx-node.backup")}
			if tt.legacy {
				c.StagingIno = 0
			}
			tt.lay(t, c, old, new)
			for i := range 2 { // idempotent: a crash during recovery recovers by running it again
				err := restoreOne(c)
				if tt.wantError {
					if err == nil {
						t.Fatal("restoreOne accepted an install dir that is neither tree")
					}
					if b, _ := os.ReadFile(filepath.Join(c.Backup, "which")); string(b) != "old" {
						t.Errorf("the old tree left its backup: %q", b)
					}
					return
				}
				if err != nil {
					t.Fatalf("restoreOne #%d: %v", i+1, err)
				}
				if b, err := os.ReadFile(filepath.Join(c.Dir, "which")); err != nil || string(b) != "old" {
					t.Errorf("after restoreOne #%d the install dir holds %q (%v), want the old tree", i+1, b, err)
				}
				for _, p := range []string{c.Staging, c.Backup} {
					if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("after restoreOne #%d %s is still there", i+1, p)
					}
				}
			}
		})
	}
}

func mv(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}
