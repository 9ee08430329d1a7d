package engine

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/subjects"
)

// reserve is what the space tests keep free: the agent's default.
const reserve = 256 << 20

// fakeDisks gives the state dir and the host root file systems of their own,
// or one shared, with the free space the test sets.
type fakeDisks struct {
	state, root         string
	stateFree, rootFree uint64
	shared              bool // one device: stateFree is its space
}

func (d *fakeDisks) freeSpace(p string) (uint64, uint64, error) {
	switch {
	case d.shared && (strings.HasPrefix(p, d.state) || strings.HasPrefix(p, d.root)):
		return d.stateFree, 1, nil
	case strings.HasPrefix(p, d.state):
		return d.stateFree, 1, nil
	case strings.HasPrefix(p, d.root):
		return d.rootFree, 2, nil
	}
	return 0, 0, errors.New("fakeDisks: no disk for " + p)
}

// releaseSizes are the summed download and unpacked sizes of the harness's
// release.
func releaseSizes(t *testing.T, h *harness) (size, raw int64) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.repo, "channels/dev/manifest.signed.json"))
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := manifest.Verify(b, []ed25519.PublicKey{h.pub})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range m.Components {
		size += c.Size
		raw += c.RawSize
	}
	return size, raw
}

// An update that would leave a disk with less than the reserve free stops
// before it writes anything; on one device the needs add up.
func TestApplyChecksFreeSpace(t *testing.T) {
	const plenty = 1 << 40
	tests := []struct {
		name string
		// set the disks, given the release's download and unpacked sizes
		set  func(d *fakeDisks, size, raw int64)
		want string // in the failure; "" for a completed update
	}{
		{"room everywhere", func(d *fakeDisks, size, raw int64) { d.stateFree, d.rootFree = plenty, plenty }, ""},
		{"state dir full", func(d *fakeDisks, size, raw int64) {
			d.stateFree, d.rootFree = reserve+uint64(size)-1, plenty
		}, "disk space on " + "STATE"},
		{"root full", func(d *fakeDisks, size, raw int64) {
			d.stateFree, d.rootFree = plenty, reserve+uint64(raw)-1
		}, "disk space on " + "ROOT"},
		{"just enough on each", func(d *fakeDisks, size, raw int64) {
			d.stateFree, d.rootFree = reserve+uint64(size), reserve+uint64(raw)
		}, ""},
		{"one disk, not enough for both", func(d *fakeDisks, size, raw int64) {
			d.shared, d.stateFree = true, reserve+uint64(max(size, raw))
		}, "not enough free space"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			disks := &fakeDisks{}
			h := newHarnessWith(t, func(h *harness) {
				disks.state, disks.root = h.state, h.root
			}, func(o *Options) { o.FreeSpace, o.SpaceReserve = disks.freeSpace, reserve })
			size, raw := releaseSizes(t, h)
			tt.set(disks, size, raw)
			before := tree(t, h.root)
			ev := h.apply(subjects.ApplyCommand{OperationID: "op-space"})
			if tt.want == "" {
				if ev.Type != subjects.EventCompleted {
					t.Fatalf("update = %+v, want completed", ev)
				}
				return
			}
			want := strings.NewReplacer("STATE", h.state, "ROOT", filepath.Join(h.root, "opt/quantix")).Replace(tt.want)
			if ev.Type != subjects.EventFailed || !strings.Contains(ev.Message, want) || !strings.Contains(ev.Message, ErrNoSpace.Error()) {
				t.Fatalf("update = %s %q, want failed saying %q", ev.Type, ev.Message, want)
			}
			sameTree(t, before, tree(t, h.root))
			if entries, _ := os.ReadDir(filepath.Join(h.state, "downloads")); len(entries) > 0 {
				t.Errorf("downloads written despite the full disk: %v", entries)
			}
		})
	}
}

// A full update checks the room for its image before it asks vDC to drain
// the host.
func TestFullUpdateChecksFreeSpace(t *testing.T) {
	disks := &fakeDisks{stateFree: reserve, rootFree: 1 << 40}
	maint := &fakeMaint{}
	a := newABHost(t, maint, func(o *Options) {
		o.SpaceReserve = reserve
		o.FreeSpace = func(p string) (uint64, uint64, error) {
			if strings.HasPrefix(p, o.StateDir) {
				return disks.stateFree, 1, nil
			}
			return disks.rootFree, 2, nil
		}
	})
	ev := a.apply(subjects.ApplyCommand{OperationID: "full-space", ForceReboot: true})
	if ev.Type != subjects.EventFailed || !strings.Contains(ev.Message, "not enough free space") {
		t.Fatalf("update = %s %q, want failed for want of space", ev.Type, ev.Message)
	}
	if n, _ := maint.calls(); n != 0 {
		t.Errorf("maintenance asked %d times for an update that cannot download", n)
	}
}

// The reserve is the host's to choose: none, or another size.
func TestSpaceReserveOption(t *testing.T) {
	tests := []struct {
		reserve int64
		extra   uint64 // free beyond the update's needs
		want    string // in the failure; "" for a completed update
	}{
		{0, 0, ""},
		{1 << 20, 1<<20 - 1, "keeps 1.0 MiB free"},
		{1 << 20, 1 << 20, ""},
		{reserve, reserve - 1, "keeps 256.0 MiB free"},
	}
	for _, tt := range tests {
		disks := &fakeDisks{}
		h := newHarnessWith(t, func(h *harness) { disks.state, disks.root = h.state, h.root },
			func(o *Options) { o.FreeSpace, o.SpaceReserve = disks.freeSpace, tt.reserve })
		size, raw := releaseSizes(t, h)
		disks.stateFree, disks.rootFree = uint64(size)+tt.extra, uint64(raw)+tt.extra
		ev := h.apply(subjects.ApplyCommand{OperationID: "op-reserve"})
		switch {
		case tt.want == "" && ev.Type != subjects.EventCompleted:
			t.Errorf("reserve %d, %d spare: %s %q, want completed", tt.reserve, tt.extra, ev.Type, ev.Message)
		case tt.want != "" && (ev.Type != subjects.EventFailed || !strings.Contains(ev.Message, tt.want)):
			t.Errorf("reserve %d, %d spare: %s %q, want failed saying %q", tt.reserve, tt.extra, ev.Type, ev.Message, tt.want)
		}
	}
}

func TestStatFS(t *testing.T) {
	dir := t.TempDir()
	free, dev, err := statFS(dir)
	if err != nil || free == 0 {
		t.Fatalf("statFS(%s) = %d, %d, %v", dir, free, dev, err)
	}
	if _, dev2, _ := statFS(filepath.Join(dir, ".")); dev2 != dev {
		t.Errorf("one directory, two devices: %d, %d", dev, dev2)
	}
	if _, _, err := statFS(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("statFS of a missing path: %v", err)
	}
	if got := existingAncestor(filepath.Join(dir, "a", "b", "c")); got != dir {
		t.Errorf("existingAncestor = %s, want %s", got, dir)
	}
}

// A disk that fills up after the space check (another writer on it) fails
// the download with the kernel's error, on a real 2 MiB tmpfs: the update
// ends in a clear error, the partial download is gone, nothing installed
// changed, and the journal still works.
func TestDiskFillsDuringDownload(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestDiskFillsDuringDownload mounts a tmpfs as the state dir: run it as root (CI does)")
	}
	h := newHarnessWith(t, func(h *harness) {
		if err := os.MkdirAll(h.state, 0o700); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", h.state).CombinedOutput(); err != nil {
			t.Fatalf("mount tmpfs on %s: %v\n%s", h.state, err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("umount", h.state).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v\n%s", h.state, err, out)
			}
		})
		// 3 MiB that do not compress: the download cannot fit.
		noise := make([]byte, 3<<20)
		rand.Read(noise)
		writeFile(t, filepath.Join(h.dir, "src/qx-node/blob"), string(noise), 0o644)
	}, func(o *Options) {
		// The space was there when the update looked.
		o.FreeSpace = func(string) (uint64, uint64, error) { return 1 << 40, 1, nil }
	})
	before := tree(t, h.root)
	ev := h.apply(subjects.ApplyCommand{OperationID: "op-enospc"})
	if ev.Type != subjects.EventFailed || !strings.Contains(ev.Message, "download qx-node") || !strings.Contains(ev.Message, "no space left on device") {
		t.Fatalf("update = %s %q, want failed: download qx-node ... no space left on device", ev.Type, ev.Message)
	}
	sameTree(t, before, tree(t, h.root))
	var left []string
	filepath.WalkDir(h.state, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), "journal.json") {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("the state dir still holds %v", left)
	}
	if st := h.eng.Status(); st.Status != subjects.StatusError {
		t.Errorf("status after the failure: %+v", st)
	}
}
