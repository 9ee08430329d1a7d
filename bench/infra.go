package bench

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quantix-os/update-agent/internal/bus"
	"github.com/quantix-os/update-agent/internal/updatesrv"
)

// InfraCommand is the qx-bench subcommand that runs Infra in a child process.
const InfraCommand = "infra"

// Infra runs what the agents talk to: one nats-server with JetStream storing
// into store, and the Update Server serving the release repository repo, both
// on 127.0.0.1. It writes "nats URL" and "http URL" lines to out once both
// accept connections, and runs until ctx ends.
//
// It runs in a child process so that the server's sockets count against the
// child's file descriptor limit, not the bench's (5,000 nodes and 5,000 floor
// responders take 10,000 on each side), and so that its CPU shows apart.
func Infra(ctx context.Context, store, repo string, out io.Writer) error {
	ns, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  store,
		NoLog:     true,
		NoSigs:    true,
	})
	if err != nil {
		return fmt.Errorf("infra: nats server: %w", err)
	}
	ns.Start()
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()
	if !ns.ReadyForConnections(30 * time.Second) {
		return errors.New("infra: nats server not ready after 30s")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("infra: http listen: %w", err)
	}
	hs := &http.Server{Handler: updatesrv.Handler(repo, nil), ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	defer hs.Close()
	fmt.Fprintf(out, "nats %s\nhttp http://%s\n", ns.ClientURL(), ln.Addr())
	<-ctx.Done()
	return nil
}

// InfraMain is the infra child's main: it runs Infra with the --store and
// --repo flags in args until its stdin closes (the parent closes it, or dies),
// and returns the exit code.
func InfraMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("qx-bench "+InfraCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	store := fs.String("store", "", "JetStream store directory")
	repo := fs.String("repo", "", "release repository the Update Server serves")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *store == "" || *repo == "" {
		fmt.Fprintln(stderr, "qx-bench infra: --store and --repo are required")
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	signal.Ignore(os.Interrupt) // a Ctrl-C reaches the parent, which stops us
	if err := Infra(ctx, *store, *repo, stdout); err != nil {
		fmt.Fprintln(stderr, "qx-bench infra:", err)
		return 1
	}
	return 0
}

// infra is the child process running Infra.
type infra struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan error
	nats  string // nats://127.0.0.1:port
	http  string // http://127.0.0.1:port, the Update Server
}

// startInfra runs `exe infra` with its store under dir and waits for its
// URLs. The child ends when its stdin closes, so it never outlives the bench.
func startInfra(exe, dir, repo string) (*infra, error) {
	cmd := exec.Command(exe, InfraCommand, "--store", dir, "--repo", repo)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start infra: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start infra: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start infra %s: %w", exe, err)
	}
	in := &infra{cmd: cmd, stdin: stdin, done: make(chan error, 1)}
	lines := make(chan string, 2)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		in.done <- cmd.Wait()
	}()
	timeout := time.After(60 * time.Second)
	for in.nats == "" || in.http == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				return nil, errors.New("start infra: the child exited before printing its URLs")
			}
			if u, ok := strings.CutPrefix(l, "nats "); ok {
				in.nats = u
			}
			if u, ok := strings.CutPrefix(l, "http "); ok {
				in.http = u
			}
		case <-timeout:
			in.stop()
			return nil, errors.New("start infra: no URLs after 60s")
		}
	}
	if err := in.provision(); err != nil {
		in.stop()
		return nil, err
	}
	return in, nil
}

// provision creates the event stream and the node bucket, as vdc-sim does.
func (in *infra) provision() error {
	nc, err := nats.Connect(in.nats)
	if err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return bus.Provision(ctx, js, bus.Storage{Replicas: 1})
}

// stop closes the child's stdin and waits for it, killing it after 30s.
func (in *infra) stop() {
	in.stdin.Close()
	select {
	case <-in.done:
	case <-time.After(30 * time.Second):
		in.cmd.Process.Kill()
		<-in.done
	}
}
