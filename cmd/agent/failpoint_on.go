//go:build failpoint

package main

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// failpointHook, in the test build only (-tags failpoint), kills the agent
// where a crash hurts most: QX_FAILPOINT=name[:n] sends SIGKILL to the agent
// itself at the n-th hit (default 1) of the engine failpoint name, syncing
// nothing first, as a power cut or the OOM killer would stop it.
// The crash tests (crash_test.go) restart it and check the host.
func failpointHook(log *slog.Logger) func(string) {
	spec := os.Getenv("QX_FAILPOINT")
	if spec == "" {
		return nil
	}
	name, count, hasCount := strings.Cut(spec, ":")
	n := 1
	if hasCount {
		var err error
		if n, err = strconv.Atoi(count); err != nil || n < 1 {
			n = 0
		}
	}
	if name == "" || n < 1 {
		fmt.Fprintf(os.Stderr, "agent: QX_FAILPOINT %q: want name[:n] with n >= 1\n", spec)
		os.Exit(2)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log.Warn("failpoint armed", "point", name, "hit", n)
	var mu sync.Mutex
	hits := 0
	return func(point string) {
		if point != name {
			return
		}
		mu.Lock()
		hits++
		hit := hits == n
		mu.Unlock()
		if !hit {
			return
		}
		log.Warn("failpoint hit: killing the agent", "point", name, "hit", n)
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // nothing after the failpoint runs
	}
}
