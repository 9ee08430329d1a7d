package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quantix-os/update-agent/internal/grubenv"
)

func TestBoot(t *testing.T) {
	armed := func(t *testing.T) (env, cmdline string) {
		dir := t.TempDir()
		env, cmdline = filepath.Join(dir, "grubenv"), filepath.Join(dir, "cmdline")
		e := grubenv.New()
		e.Set("qx_slot", "a")
		e.Set("qx_try_slot", "b")
		e.Set("qx_tries", "1")
		if err := grubenv.Write(env, e); err != nil {
			t.Fatal(err)
		}
		return env, cmdline
	}
	tries := func(t *testing.T, env string) string {
		e, err := grubenv.Read(env)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := e.Get("qx_tries")
		return v
	}
	cmdlineOf := func(t *testing.T, p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	t.Run("trial then committed", func(t *testing.T) {
		env, cmdline := armed(t)
		if out := mustRun(t, "boot", "--grubenv", env, "--cmdline", cmdline); out != "b\n" {
			t.Errorf("first boot printed %q, want the trial slot b", out)
		}
		if got := cmdlineOf(t, cmdline); got != "qx.slot=b quiet\n" {
			t.Errorf("cmdline %q", got)
		}
		if got := tries(t, env); got != "0" {
			t.Errorf("qx_tries after the trial boot = %q, want 0 saved", got)
		}
		// The trial was not committed: the next boot is the committed slot.
		if out := mustRun(t, "boot", "--grubenv", env, "--cmdline", cmdline); out != "a\n" {
			t.Errorf("second boot printed %q, want a", out)
		}
		if got := cmdlineOf(t, cmdline); got != "qx.slot=a quiet\n" {
			t.Errorf("cmdline %q", got)
		}
	})
	t.Run("fail trial", func(t *testing.T) {
		env, cmdline := armed(t)
		if out := mustRun(t, "boot", "--grubenv", env, "--cmdline", cmdline, "--fail-trial"); out != "a\n" {
			t.Errorf("boot --fail-trial printed %q, want a", out)
		}
		if got := tries(t, env); got != "0" {
			t.Errorf("qx_tries = %q, want 0", got)
		}
	})
	t.Run("errors", func(t *testing.T) {
		dir := t.TempDir()
		bad := filepath.Join(dir, "bad")
		writeFile(t, bad, "not a grub environment block")
		for _, tt := range []struct {
			args []string
			code int
			want string
		}{
			{[]string{"boot"}, 2, "--grubenv is required"},
			{[]string{"boot", "--grubenv", bad}, 2, "--cmdline is required"},
			{[]string{"boot", "--grubenv", bad, "--cmdline", filepath.Join(dir, "c")}, 1, "vdc-sim boot: boot: "},
		} {
			out, errOut, code := vdcSim(t, tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.want) || out != "" {
				t.Errorf("vdc-sim %s: exit %d, stdout %q, stderr %q; want %d and %q", strings.Join(tt.args, " "), code, out, errOut, tt.code, tt.want)
			}
		}
	})
}

func TestRedactURLs(t *testing.T) {
	got := redactURLs("nats://vdc:s3cret@127.0.0.1:4222,nats://127.0.0.1:4223")
	if strings.Contains(got, "s3cret") || !strings.Contains(got, "127.0.0.1:4223") {
		t.Fatalf("redactURLs = %q", got)
	}
}
