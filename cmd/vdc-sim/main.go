// Command vdc-sim stands in for Quantix-vDC and the Update Server: it makes
// signing keys, builds and signs releases, serves them, and drives a fleet of
// agents over NATS.
//
// Usage:
//
//	vdc-sim [-log-level LEVEL] <command> [flags]
//
// `vdc-sim -h` lists the commands, `vdc-sim <command> -h` their flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/lmittmann/tint"
)

// command is one subcommand. Each lives in its own file with its own
// flag.FlagSet and adds itself to commands from an init func, so a new
// command never needs an edit here.
type command struct {
	synopsis string // the arguments, for usage lines: "--out DIR"
	summary  string // one line for the command list
	run      func(ctx context.Context, e *env, args []string) error
}

// commands maps each subcommand name to its command.
var commands = map[string]command{}

// env is what every command gets besides its arguments.
type env struct {
	stdout, stderr io.Writer
	log            *slog.Logger
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage is returned for bad flags or arguments that were already
// reported; the exit status is 2.
var errUsage = errors.New("usage error")

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("vdc-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.Usage = func() { usage(fs, fs.Output()) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "vdc-sim: -log-level %q: want debug, info, warn or error\n", *level)
		return 2
	}
	if fs.NArg() == 0 {
		usage(fs, stderr)
		return 2
	}
	name := fs.Arg(0)
	if name == "help" {
		fs.SetOutput(stdout)
		usage(fs, stdout)
		return 0
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "vdc-sim: unknown command %q\n\n", name)
		usage(fs, stderr)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e := &env{stdout: stdout, stderr: stderr, log: newLogger(stderr, lvl)}
	err := cmd.run(ctx, e, fs.Args()[1:])
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintf(stderr, "vdc-sim %s: %v\n", name, err)
	return 1
}

func usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintf(w, "vdc-sim plays Quantix-vDC and the Update Server.\n\nusage: vdc-sim [flags] <command> [command flags]\n\ncommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, "\nflags:\n")
	fs.PrintDefaults()
	fmt.Fprintf(w, "\nRun 'vdc-sim <command> -h' for a command's flags.\n")
}

// newFlagSet returns the flag set of a command, printing its usage and
// errors to the command's stderr.
func newFlagSet(e *env, name string) *flag.FlagSet {
	fs := flag.NewFlagSet("vdc-sim "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		c := commands[name]
		fmt.Fprintf(fs.Output(), "usage: vdc-sim %s %s\n\n%s\n\nflags:\n", name, c.synopsis, c.summary)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses a command's arguments, which must all be flags. Errors
// are reported here; the caller returns what it gets.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage // the flag package printed the problem and the usage
	}
	if fs.NArg() > 0 {
		return usageError(fs, "unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// usageError reports a bad invocation of fs's command and returns errUsage.
func usageError(fs *flag.FlagSet, format string, args ...any) error {
	fmt.Fprintf(fs.Output(), "%s: %s\n", fs.Name(), fmt.Sprintf(format, args...))
	fmt.Fprintf(fs.Output(), "Run '%s -h' for usage.\n", fs.Name())
	return errUsage
}

// newLogger logs in tint's format, in colour on a terminal only.
func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(tint.NewTextHandler(w, &tint.Options{Level: level, NoColor: !isTerminal(w)}))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
