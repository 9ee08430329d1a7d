package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
)

// natsAuth says how vdc-sim authenticates to a NATS server it did not start:
// from files, so that no secret has to be in a URL, which ps and logs show.
type natsAuth struct {
	creds        string
	nkey         string
	user         string
	passwordFile string
}

func addAuthFlags(fs *flag.FlagSet) *natsAuth {
	a := &natsAuth{}
	fs.StringVar(&a.creds, "creds", "", "authenticate to NATS with the user JWT and nkey seed in `FILE` (a .creds file)")
	fs.StringVar(&a.nkey, "nkey", "", "authenticate to NATS with the nkey seed in `FILE`")
	fs.StringVar(&a.user, "user", "", "authenticate to NATS as user `NAME` (with --password-file)")
	fs.StringVar(&a.passwordFile, "password-file", "", "the password of --user, read from `FILE`")
	return a
}

func (a *natsAuth) set() bool {
	return a.creds != "" || a.nkey != "" || a.user != "" || a.passwordFile != ""
}

// options are the connection options of the flags; an error names a flag
// that is wrong or a file that cannot be read.
func (a *natsAuth) options() ([]nats.Option, error) {
	n := 0
	for _, s := range []string{a.creds, a.nkey, a.user} {
		if s != "" {
			n++
		}
	}
	switch {
	case n > 1:
		return nil, errors.New("--creds, --nkey and --user: use one")
	case a.user != "" && a.passwordFile == "":
		return nil, errors.New("--user needs --password-file")
	case a.passwordFile != "" && a.user == "":
		return nil, errors.New("--password-file needs --user")
	}
	switch {
	case a.creds != "":
		if _, err := os.Stat(a.creds); err != nil {
			return nil, fmt.Errorf("--creds: %w", err)
		}
		return []nats.Option{nats.UserCredentials(a.creds)}, nil
	case a.nkey != "":
		opt, err := nats.NkeyOptionFromSeed(a.nkey)
		if err != nil {
			return nil, fmt.Errorf("--nkey %s: %w", a.nkey, err)
		}
		return []nats.Option{opt}, nil
	case a.user != "":
		b, err := os.ReadFile(a.passwordFile)
		if err != nil {
			return nil, fmt.Errorf("--password-file: %w", err)
		}
		pass := strings.TrimRight(string(b), "\r\n")
		if pass == "" {
			return nil, fmt.Errorf("--password-file %s is empty", a.passwordFile)
		}
		return []nats.Option{nats.UserInfo(a.user, pass)}, nil
	}
	return nil, nil
}
