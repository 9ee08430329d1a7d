// Package bootsim simulates the boot loader of an A/B host: it applies the
// trial-boot rule of deploy/grub/qx-ab.cfg (DESIGN.md section 6) to a GRUB
// environment file and writes the kernel command line the chosen slot boots
// with, so tests and the demo can "reboot" a host without GRUB:
//
//	if qx_try_slot is set and qx_tries > 0:
//	    decrement qx_tries, save it, boot qx_try_slot   (a trial boot)
//	otherwise:
//	    boot qx_slot (a when unset)                     (the committed slot)
//
// It follows the snippet line for line, down to GRUB's quirks: "-gt" compares
// numbers the way GRUB's test command parses them, the count-down only knows
// 3→2, 2→1 and anything else →0 (GRUB script has no arithmetic), and a slot
// name other than a or b falls back to the committed slot, then to a.
// Keep the two in step: a change to one is a change to the other.
package bootsim

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/quantix-os/update-agent/internal/grubenv"
	"github.com/quantix-os/update-agent/internal/journal"
)

// The GRUB environment variables of the boot rule.
const (
	VarSlot    = "qx_slot"     // the committed slot
	VarTrySlot = "qx_try_slot" // the slot to try
	VarTries   = "qx_tries"    // trial boots left
)

// maxBoots bounds the reboots of one Boot call. Every failed trial boot
// lowers qx_tries, so the rule reaches the committed slot within four boots
// (3, 2, 1, 0); the bound only guards against a bug in that reasoning.
const maxBoots = 8

// Option changes how Boot behaves.
type Option func(*options)

type options struct {
	failTrial bool
}

// FailTrial makes every trial boot fail: the try slot's kernel panics and
// the machine resets at once, so the boot loader runs again on the env the
// trial boot left (qx_tries already lowered) until it boots a slot for good.
func FailTrial() Option { return func(o *options) { o.failTrial = true } }

// Decision is what one pass of the boot rule chose.
type Decision struct {
	Slot  string // the slot booted: "a" or "b"
	Trial bool   // the try slot, booted with qx_tries > 0
	Saved bool   // qx_tries was lowered and must be saved
}

// Next applies the boot rule to e once, lowering qx_tries in e on a trial
// boot, as qx-ab.cfg does between load_env and save_env.
func Next(e *grubenv.Env) Decision {
	committed, _ := e.Get(VarSlot)
	if !isSlot(committed) {
		committed = "a"
	}
	try, _ := e.Get(VarTrySlot)
	tries, _ := e.Get(VarTries)
	d := Decision{Slot: committed}
	if try != "" && grubNumber(tries) > 0 {
		switch tries {
		case "3":
			e.Set(VarTries, "2")
		case "2":
			e.Set(VarTries, "1")
		default:
			e.Set(VarTries, "0")
		}
		d.Saved = true
		if isSlot(try) {
			d.Slot, d.Trial = try, true
		}
	}
	return d
}

// Boot applies the rule to the GRUB environment file grubEnvPath (saving
// qx_tries on a trial boot; a missing file boots a, as GRUB's load_env
// leaves the variables unset) and writes the command line the chosen slot's
// kernel gets, "qx.slot=X quiet\n", to cmdlinePath. It returns X.
// A malformed env file is an error here, where GRUB would boot a: in a test
// that is a bug to report, not a state to paper over.
func Boot(grubEnvPath, cmdlinePath string, opts ...Option) (string, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	for range maxBoots {
		d, err := bootOnce(grubEnvPath)
		if err != nil {
			return "", err
		}
		if d.Trial && o.failTrial {
			continue // the trial kernel panicked: the machine resets
		}
		line := fmt.Sprintf("qx.slot=%s quiet\n", d.Slot)
		if err := journal.WriteFileAtomic(cmdlinePath, []byte(line), 0o644); err != nil {
			return "", fmt.Errorf("boot: %w", err)
		}
		return d.Slot, nil
	}
	return "", fmt.Errorf("boot %s: still trial-booting after %d boots", grubEnvPath, maxBoots)
}

func bootOnce(path string) (Decision, error) {
	e, err := grubenv.Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Next(grubenv.New()), nil
	}
	if err != nil {
		return Decision{}, fmt.Errorf("boot: %w", err)
	}
	d := Next(e)
	if d.Saved {
		// save_env qx_tries: the lowered count is on disk before the kernel
		// starts, so a trial that never comes back is not tried again.
		if err := grubenv.Write(path, e); err != nil {
			return Decision{}, fmt.Errorf("boot: %w", err)
		}
	}
	return d, nil
}

func isSlot(s string) bool { return s == "a" || s == "b" }

// grubNumber converts s the way GRUB's test command does for -gt
// (grub_strtosl over grub_strtoull, base 0): a leading '-', then blanks,
// then an optional 0x (hex) or 0 (octal) prefix and digits up to the first
// byte that is not one; no digits is 0, overflow is all ones; the result is
// truncated to a C int. So "" and "junk" are 0, "1x" is 1.
func grubNumber(s string) int32 {
	neg := false
	if s != "" && s[0] == '-' {
		neg, s = true, s[1:]
	}
	for s != "" && (s[0] == ' ' || s[0] == '\t' || s[0] == '\n' || s[0] == '\r') {
		s = s[1:]
	}
	base := uint64(10)
	if len(s) > 1 && s[0] == '0' {
		if s[1] == 'x' {
			base, s = 16, s[2:]
		} else if s[1] >= '0' && s[1] <= '7' {
			base = 8
		}
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		var d uint64
		switch {
		case c >= '0' && c <= '9':
			d = uint64(c - '0')
		case c >= 'a' && c <= 'z':
			d = uint64(c-'a') + 10
		default:
			d = base
		}
		if d >= base {
			break
		}
		if n > (^uint64(0)-d)/base {
			n = ^uint64(0)
			break
		}
		n = n*base + d
	}
	if neg {
		n = -n
	}
	return int32(n)
}
