package bootsim

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix-os/update-agent/internal/abslot"
	"github.com/quantix-os/update-agent/internal/grubenv"
)

const snippet = "../../deploy/grub/qx-ab.cfg"

// row is one line of the state table in qx-ab.cfg; "-" means unset, or for
// saved, that nothing is written.
type row struct {
	slot, try, tries, boots, saved string
}

// stateTable reads the table from the snippet's comment, so the documented
// states, the Go rule and (by reading) the GRUB script are one and the same.
func stateTable(t *testing.T) []row {
	t.Helper()
	b, err := os.ReadFile(snippet)
	if err != nil {
		t.Fatal(err)
	}
	var rows []row
	in := false
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(strings.TrimPrefix(line, "#"))
		switch {
		case strings.Join(f, " ") == "qx_slot qx_try_slot qx_tries boots saved":
			in = true
		case in && len(f) == 5:
			rows = append(rows, row{f[0], f[1], f[2], f[3], f[4]})
		case in:
			in = false
		}
	}
	if len(rows) < 10 {
		t.Fatalf("found %d rows of the state table in %s", len(rows), snippet)
	}
	return rows
}

func writeEnv(t *testing.T, path string, kv ...string) {
	t.Helper()
	e := grubenv.New()
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] != "-" {
			e.Set(kv[i], kv[i+1])
		}
	}
	if err := grubenv.Write(path, e); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, path, k string) string {
	t.Helper()
	e, err := grubenv.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := e.Get(k)
	if !ok {
		return "-"
	}
	return v
}

func paths(t *testing.T) (env, cmdline string) {
	dir := t.TempDir()
	return filepath.Join(dir, "grubenv"), filepath.Join(dir, "cmdline")
}

func TestStateTable(t *testing.T) {
	for _, r := range stateTable(t) {
		t.Run(strings.Join([]string{r.slot, r.try, r.tries}, ","), func(t *testing.T) {
			env, cmdline := paths(t)
			writeEnv(t, env, VarSlot, r.slot, VarTrySlot, r.try, VarTries, r.tries)
			before, _ := os.ReadFile(env)
			got, err := Boot(env, cmdline)
			if err != nil {
				t.Fatal(err)
			}
			if got != r.boots {
				t.Errorf("booted %s, want %s", got, r.boots)
			}
			after, _ := os.ReadFile(env)
			if r.saved == "-" {
				if !bytes.Equal(before, after) {
					t.Errorf("env rewritten, want it untouched")
				}
			} else if v := get(t, env, VarTries); v != r.saved {
				t.Errorf("qx_tries = %s, want %s", v, r.saved)
			}
			// The other variables are never changed by the boot loader.
			if get(t, env, VarSlot) != r.slot || get(t, env, VarTrySlot) != r.try {
				t.Errorf("qx_slot or qx_try_slot changed")
			}
			// The agent reads the same slot back from the command line.
			if s, err := abslot.BootedSlot(cmdline); err != nil || s != r.boots {
				t.Errorf("BootedSlot = %q, %v; want %s", s, err, r.boots)
			}
		})
	}
}

func TestCmdline(t *testing.T) {
	env, cmdline := paths(t)
	writeEnv(t, env, VarSlot, "b")
	if _, err := Boot(env, cmdline); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(cmdline)
	if err != nil || string(b) != "qx.slot=b quiet\n" {
		t.Fatalf("cmdline = %q, %v", b, err)
	}
}

// TestUpdateFlow walks the two outcomes of DESIGN.md section 6 the way the
// agent drives them.
func TestUpdateFlow(t *testing.T) {
	env, cmdline := paths(t)
	writeEnv(t, env, VarSlot, "a")
	if s, _ := Boot(env, cmdline); s != "a" {
		t.Fatalf("first boot: %s", s)
	}

	// The agent writes slot b and arms one trial.
	try := func() {
		err := grubenv.Update(env, func(e *grubenv.Env) error {
			e.Set(VarTrySlot, "b")
			e.Set(VarTries, "1")
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	try()
	if s, _ := Boot(env, cmdline); s != "b" {
		t.Fatalf("trial boot: %s, want b", s)
	}
	if v := get(t, env, VarTries); v != "0" {
		t.Fatalf("qx_tries after the trial boot = %s, want 0", v)
	}
	// Not committed (the agent found b unhealthy, or never ran): the next
	// boot is the committed slot again.
	if s, _ := Boot(env, cmdline); s != "a" {
		t.Fatalf("boot after an uncommitted trial: %s, want a", s)
	}

	// Second attempt, committed this time.
	try()
	if s, _ := Boot(env, cmdline); s != "b" {
		t.Fatalf("trial boot: %s, want b", s)
	}
	err := grubenv.Update(env, func(e *grubenv.Env) error {
		e.Set(VarSlot, "b")
		e.Unset(VarTrySlot)
		e.Unset(VarTries)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if s, _ := Boot(env, cmdline); s != "b" {
			t.Fatalf("boot after commit: %s, want b", s)
		}
	}
}

func TestFailTrial(t *testing.T) {
	tests := []struct{ tries, boots string }{{"1", "a"}, {"3", "a"}, {"0", "a"}}
	for _, tt := range tests {
		env, cmdline := paths(t)
		writeEnv(t, env, VarSlot, "a", VarTrySlot, "b", VarTries, tt.tries)
		s, err := Boot(env, cmdline, FailTrial())
		if err != nil || s != tt.boots {
			t.Fatalf("tries=%s: Boot = %q, %v; want %s", tt.tries, s, err, tt.boots)
		}
		if v := get(t, env, VarTries); v != "0" {
			t.Fatalf("tries=%s: qx_tries = %s after the failed trials, want 0", tt.tries, v)
		}
		if b, _ := os.ReadFile(cmdline); string(b) != "qx.slot=a quiet\n" {
			t.Fatalf("cmdline = %q", b)
		}
	}
	// Without a trial, FailTrial changes nothing.
	env, cmdline := paths(t)
	writeEnv(t, env, VarSlot, "b")
	if s, err := Boot(env, cmdline, FailTrial()); err != nil || s != "b" {
		t.Fatalf("Boot = %q, %v; want b", s, err)
	}
}

func TestBootMissingEnv(t *testing.T) {
	env, cmdline := paths(t)
	if s, err := Boot(env, cmdline); err != nil || s != "a" {
		t.Fatalf("Boot = %q, %v; want a", s, err)
	}
	if _, err := os.Stat(env); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("Boot created the env file")
	}
}

func TestBootErrors(t *testing.T) {
	env, cmdline := paths(t)
	if err := os.WriteFile(env, []byte("not a grub env"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Boot(env, cmdline); !errors.Is(err, grubenv.ErrFormat) {
		t.Fatalf("corrupt env: err = %v, want grubenv.ErrFormat", err)
	}
	writeEnv(t, env, VarSlot, "a")
	if _, err := Boot(env, filepath.Join(env+".d", "cmdline")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("bad cmdline path: err = %v, want fs.ErrNotExist", err)
	}
}

func TestGrubNumber(t *testing.T) {
	tests := []struct {
		in   string
		want int32
	}{
		{"", 0}, {"0", 0}, {"1", 1}, {"3", 3}, {"junk", 0}, {"1x", 1},
		{" 2", 2}, {"\t7", 7}, {"-1", -1}, {"- 3", -3}, {"0x10", 16}, {"0X10", 0},
		{"010", 8}, {"08", 8}, {"0x", 0}, {"FF", 0},
		{"4294967296", 0}, {"4294967297", 1}, // truncated to a C int
		{"99999999999999999999999", -1}, // overflow: all ones
	}
	for _, tt := range tests {
		if got := grubNumber(tt.in); got != tt.want {
			t.Errorf("grubNumber(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

// TestSnippet checks what can be checked of qx-ab.cfg without booting GRUB:
// it parses (grub-script-check, from grub-common), and it holds the lines
// that carry the rule. Their meaning is reviewed by reading, against the
// comments in the file and the Go rule above.
func TestSnippet(t *testing.T) {
	bin, err := exec.LookPath("grub-script-check")
	if err != nil {
		t.Fatal("grub-script-check not found: install grub-common")
	}
	if out, err := exec.Command(bin, snippet).CombinedOutput(); err != nil {
		t.Fatalf("grub-script-check %s: %v: %s", snippet, err, out)
	}
	b, err := os.ReadFile(snippet)
	if err != nil {
		t.Fatal(err)
	}
	var code []string
	for line := range strings.Lines(string(b)) {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			code = append(code, l)
		}
	}
	body := strings.Join(code, "\n")
	for _, want := range []string{
		"load_env qx_slot qx_try_slot qx_tries",
		`if [ -n "$qx_try_slot" -a "$qx_tries" -gt 0 ]; then`,
		"if [ \"$qx_tries\" = 3 ]; then\nset qx_tries=2\nelif [ \"$qx_tries\" = 2 ]; then\nset qx_tries=1\nelse\nset qx_tries=0\nfi\nsave_env qx_tries\nset qx_boot=\"$qx_try_slot\"\nelse\nset qx_boot=\"$qx_committed\"\nfi",
		`set default="qx-$qx_boot"`,
		`menuentry "Quantix-OS (slot a)" --id qx-a {`,
		`menuentry "Quantix-OS (slot b)" --id qx-b {`,
		"root=PARTLABEL=qx-a qx.slot=a ",
		"root=PARTLABEL=qx-b qx.slot=b ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("%s lacks:\n%s", snippet, want)
		}
	}
	// save_env writes only the count, and only on a trial boot.
	if n := strings.Count(body, "save_env"); n != 1 {
		t.Errorf("%s calls save_env %d times, want once", snippet, n)
	}
}
