// Package qxtest holds helpers shared by the project's tests, in the spirit
// of tailscale's tstest. It imports nothing of the project's own, so any test
// package can use it without an import cycle.
package qxtest

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// Poll intervals for WaitFor: start short so a condition that is almost true
// costs little, then back off so a slow one does not spin the CPU (which
// would slow the very goroutines it waits on, notably under -race).
const (
	firstPoll = time.Millisecond
	maxPoll   = 20 * time.Millisecond
)

// WaitFor polls cond until it returns true, failing the test with
// t.Fatalf if that has not happened within timeout. what names the awaited
// condition in the failure message ("timed out after 5s waiting for what").
// Like t.Fatalf, it must be called from the goroutine running the test.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for wait := firstPoll; !cond(); wait = min(2*wait, maxPoll) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(wait)
	}
}

// SyncBuffer is a bytes.Buffer safe for concurrent use: a log sink that a
// child process's output copiers or a server's goroutines write to while the
// test reads it. The zero value is an empty buffer ready to use.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p to the buffer.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
