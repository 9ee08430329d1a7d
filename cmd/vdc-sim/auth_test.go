package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/quantix-os/update-agent/internal/natstest"
	"github.com/quantix-os/update-agent/subjects"
)

// vdc-sim authenticates to a server it did not start from files given by
// flags, never from a secret in the URL.
func TestNATSAuthFlags(t *testing.T) {
	dir := t.TempDir()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	seedFile, passFile, emptyFile := filepath.Join(dir, "vdc.nk"), filepath.Join(dir, "vdc.pass"), filepath.Join(dir, "empty")
	writeFile(t, seedFile, string(seed)+"\n")
	writeFile(t, passFile, "s3cret\n")
	writeFile(t, emptyFile, "")
	if err := os.Chmod(seedFile, 0o600); err != nil {
		t.Fatal(err)
	}
	s := natstest.Start(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "vdc", Password: "s3cret"}}
		o.Nkeys = []*server.NkeyUser{{Nkey: pub}}
	})
	url := s.ClientURL()
	natstest.Provision(t, url, nats.UserInfo("vdc", "s3cret"))

	tests := []struct {
		name string
		args []string
		ok   bool
		want string // in stderr when it fails
	}{
		{"no credentials", nil, false, "Authorization Violation"},
		{"user and password file", []string{"--user", "vdc", "--password-file", passFile}, true, ""},
		{"nkey seed file", []string{"--nkey", seedFile}, true, ""},
		{"wrong password", []string{"--user", "vdc", "--password-file", seedFile}, false, "Authorization Violation"},
		{"user without password", []string{"--user", "vdc"}, false, "--user needs --password-file"},
		{"password without user", []string{"--password-file", passFile}, false, "--password-file needs --user"},
		{"empty password file", []string{"--user", "vdc", "--password-file", emptyFile}, false, "is empty"},
		{"two methods", []string{"--nkey", seedFile, "--user", "vdc", "--password-file", passFile}, false, "use one"},
		{"missing creds file", []string{"--creds", filepath.Join(dir, "nope.creds")}, false, "--creds"},
		{"not a seed", []string{"--nkey", passFile}, false, "--nkey"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"hosts", "--json", "--nats-url", url}, tt.args...)
			out, errOut, code := vdcSim(t, args...)
			if tt.ok {
				if code != 0 || strings.TrimSpace(out) != "[]" { // an empty fleet, read from the bucket
					t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
				}
				return
			}
			if code == 0 || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d, stderr %q; want a failure saying %q", code, errOut, tt.want)
			}
			if strings.Contains(errOut, "s3cret") {
				t.Errorf("stderr shows the password: %q", errOut)
			}
		})
	}

	// serve provisions and coordinates on the server as user vdc.
	srv := startServe(t, "--repo", dir, "--http", "127.0.0.1:0", "--nats-url", url,
		"--user", "vdc", "--password-file", passFile, "--events-max-age", "48h")
	srv.waitLog(t, "using nats server")
	if strings.Contains(srv.logs.String(), "s3cret") {
		t.Errorf("serve logs the password")
	}
	nc, err := nats.Connect(url, nats.UserInfo("vdc", "s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), subjects.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if age := st.CachedInfo().Config.MaxAge; age != 48*time.Hour {
		t.Errorf("QX_EVENTS max age %s, want --events-max-age 48h", age)
	}
	srv.stop(t)

	// The embedded server has no users: credentials for it are a mistake.
	_, errOut, code := vdcSim(t, "serve", "--repo", dir, "--http", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0",
		"--user", "vdc", "--password-file", passFile)
	if code == 0 || !strings.Contains(errOut, "need --nats-url") {
		t.Errorf("serve with credentials for its own server: exit %d, stderr %q", code, errOut)
	}
}
