// Command qx-bench runs the agent's benchmarks (`make bench`): it prints one
// line per figure (value, baseline, ratio, target, PASS or FAIL) and exits 1
// when any figure fails. docs/performance.md describes the figures and a run.
//
//	qx-bench [--agent bin/agent] [--only 1,2,3,4,5] [--fleet 1000,5000] [--rounds 5] [--reps 6] [--dir /tmp] [-v]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/quantix-os/update-agent/bench"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == bench.InfraCommand {
		return bench.InfraMain(args[1:], stdout, stderr)
	}

	fs := flag.NewFlagSet("qx-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	agent := fs.String("agent", "bin/agent", "the agent binary (figure 4)")
	only := fs.String("only", "1,2,3,4,5", "figures to run")
	fleet := fs.String("fleet", "1000,5000", "fleet sizes (figure 1)")
	rounds := fs.Int("rounds", 5, "timed rounds per fleet size (median)")
	reps := fs.Int("reps", 6, "runs of each side of figures 2 and 3, even: each side goes first in half (median)")
	compMB := fs.Int64("component-mb", 200, "least compressed size of the component archive, MB (figure 2)")
	imageMiB := fs.Int64("image-mib", 1024, "raw image size, MiB (figures 3 and 4)")
	evAgents := fs.Int("event-agents", 100, "agents emitting events (figure 5)")
	evRate := fs.Int("event-rate", 1000, "events a second, all agents together (figure 5)")
	evSeconds := fs.Int("event-seconds", 10, "seconds of events per side (figure 5)")
	settle := fs.Duration("settle", 3*time.Minute, "longest wait for file creation to be fast before figure 2")
	tmp := fs.String("dir", os.TempDir(), "where the run's files go (removed at the end)")
	keep := fs.Bool("keep", false, "keep the run's files")
	verbose := fs.Bool("v", false, "log progress to stderr")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the run to this file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	sizes, err := ints(*fleet)
	if err != nil {
		fmt.Fprintln(stderr, "qx-bench: --fleet:", err)
		return 2
	}
	figs, err := ints(*only)
	if err != nil {
		fmt.Fprintln(stderr, "qx-bench: --only:", err)
		return 2
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "qx-bench:", err)
		return 1
	}
	agentPath, err := filepath.Abs(*agent)
	if err != nil {
		fmt.Fprintln(stderr, "qx-bench:", err)
		return 1
	}
	dir, err := os.MkdirTemp(*tmp, "qx-bench-")
	if err != nil {
		fmt.Fprintln(stderr, "qx-bench:", err)
		return 1
	}
	if !*keep {
		defer func() {
			fmt.Fprintln(stderr, cleanupNote)
			os.RemoveAll(dir)
		}()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Fprintf(stdout, "qx-bench: %d cores, %s memory, %s, %s/%s, files in %s\n",
		runtime.NumCPU(), bench.MemTotal(), runtime.Version(), runtime.GOOS, runtime.GOARCH, dir)
	fmt.Fprintf(stdout, "qx-bench: at start: %s\n", bench.Conditions(dir))
	site, err := bench.Open(bench.Options{
		Dir: dir, Exe: exe, Agent: agentPath, Fleet: sizes, Rounds: *rounds, Reps: *reps,
		ComponentSize: *compMB * 1000 * 1000, ImageSize: *imageMiB << 20,
		EventAgents: *evAgents, EventRate: *evRate, EventSeconds: *evSeconds,
		Sources: bench.DefaultSources(), InodeSettle: *settle, Logger: log,
	})
	if err != nil {
		fmt.Fprintln(stderr, "qx-bench:", err)
		return 1
	}
	defer site.Close()

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "qx-bench:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "qx-bench:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	failedAny := false
	report := func(rs []bench.Result) {
		for _, r := range rs {
			fmt.Fprintln(stdout, r)
			failedAny = failedAny || !r.Pass()
		}
	}
	// The disk-bound figures first: figures 5 and 1 replace journal files
	// tens of thousands of times, and ext4 then allocates inodes slowly for
	// minutes (docs/performance.md).
	steps := []struct {
		fig int
		run func(context.Context) []bench.Result
	}{
		{2, site.Component},
		{3, site.Image},
		{4, site.Memory},
		{5, site.Events},
		{1, site.Fleet},
	}
	for _, st := range steps {
		if !slices.Contains(figs, st.fig) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		t := time.Now()
		report(st.run(ctx))
		log.Info("figure done", "figure", st.fig, "took", time.Since(t).Round(time.Second))
	}
	fmt.Fprintf(stdout, "qx-bench: done in %s; at the end: %s\n", time.Since(start).Round(time.Second), bench.Conditions(dir))
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "qx-bench: interrupted")
		return 1
	}
	if failedAny {
		return 1
	}
	return 0
}

// cleanupNote is printed before the run's files go: see docs/performance.md.
const cleanupNote = "qx-bench: removing the run's files; for about five minutes after, this kind of file system creates files slowly"

func ints(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}
