package main

import (
	"context"
	"fmt"
	"os"

	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/internal/release"
)

func init() {
	commands["keygen"] = command{
		synopsis: "--out DIR",
		summary:  "create an ed25519 release signing key pair: DIR/update.key and DIR/update.pub",
		run:      runKeygen,
	}
}

func runKeygen(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "keygen")
	out := fs.String("out", "", "directory for update.key (private, mode 0600) and update.pub (required; made if missing)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return usageError(fs, "--out is required")
	}
	pubPath, keyPath, err := release.GenerateKey(*out)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(pubPath)
	if err != nil {
		return err
	}
	pub, err := manifest.ParsePublicKey(string(b))
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "private key: %s\npublic key:  %s\nkeyId:       %s\n\nAgents trust it with:\n  updates:\n    publicKeys: [%q]\n",
		keyPath, pubPath, manifest.KeyID(pub), manifest.EncodePublicKey(pub))
	return nil
}
