package main

import (
	"context"
	"fmt"

	"github.com/quantix-os/update-agent/internal/bootsim"
)

func init() {
	commands["boot"] = command{
		synopsis: "--grubenv FILE --cmdline FILE [--fail-trial]",
		summary:  "play an A/B host's boot loader: apply the boot rule to a GRUB env file, write the kernel command line, print the slot",
		run:      runBoot,
	}
}

// runBoot is the demo's and the tests' boot loader: what GRUB running
// deploy/grub/qx-ab.cfg would do to the env block, with the chosen slot's
// "qx.slot=X" command line written where the agent reads it.
func runBoot(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "boot")
	grubEnv := fs.String("grubenv", "", "GRUB environment block `FILE` the rule reads and saves (required)")
	cmdline := fs.String("cmdline", "", "kernel command line `FILE` to write for the booted slot (required)")
	failTrial := fs.Bool("fail-trial", false, "make a trial boot fail (its kernel panics), so the host comes back in the committed slot")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case *grubEnv == "":
		return usageError(fs, "--grubenv is required")
	case *cmdline == "":
		return usageError(fs, "--cmdline is required")
	}
	var opts []bootsim.Option
	if *failTrial {
		opts = append(opts, bootsim.FailTrial())
	}
	slot, err := bootsim.Boot(*grubEnv, *cmdline, opts...)
	if err != nil {
		return err
	}
	e.log.Debug("booted", "slot", slot, "grubenv", *grubEnv, "cmdline", *cmdline, "failTrial", *failTrial)
	_, err = fmt.Fprintln(e.stdout, slot)
	return err
}
