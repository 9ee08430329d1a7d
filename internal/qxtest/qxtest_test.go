package qxtest_test

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quantix-os/update-agent/internal/qxtest"
)

// fakeTB records what WaitFor reports instead of failing the real test. Its
// Fatalf ends the calling goroutine as testing.T's does, so the fake must run
// WaitFor on a goroutine of its own. Methods it does not override fall through
// to the embedded real testing.TB; WaitFor should call none of them.
type fakeTB struct {
	testing.TB
	helper atomic.Int32
	fatal  string
}

func (f *fakeTB) Helper() { f.helper.Add(1) }

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls WaitFor with f on a new goroutine and waits for it to end,
// whether by returning or by Fatalf. It reports whether WaitFor returned.
func (f *fakeTB) run(timeout time.Duration, what string, cond func() bool) (returned bool) {
	done := make(chan bool)
	go func() {
		ok := false
		defer func() { done <- ok }()
		qxtest.WaitFor(f, timeout, what, cond)
		ok = true
	}()
	return <-done
}

func TestWaitForTrueAtOnce(t *testing.T) {
	f := &fakeTB{TB: t}
	var calls atomic.Int32
	start := time.Now()
	if !f.run(time.Minute, "nothing", func() bool { calls.Add(1); return true }) {
		t.Fatalf("WaitFor did not return: %q", f.fatal)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("cond called %d times, want 1", n)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("WaitFor took %s with cond already true", d)
	}
	if f.helper.Load() == 0 {
		t.Error("WaitFor did not call t.Helper")
	}
}

func TestWaitForOtherGoroutine(t *testing.T) {
	var ready atomic.Bool
	go func() {
		time.Sleep(30 * time.Millisecond)
		ready.Store(true)
	}()
	start := time.Now()
	qxtest.WaitFor(t, 10*time.Second, "the flag", ready.Load)
	if !ready.Load() {
		t.Fatal("WaitFor returned before cond held")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("WaitFor took %s to notice a flag set after 30ms", d)
	}
}

func TestWaitForTimeout(t *testing.T) {
	f := &fakeTB{TB: t}
	var calls atomic.Int32
	const timeout = 200 * time.Millisecond
	start := time.Now()
	if f.run(timeout, "the thing", func() bool { calls.Add(1); return false }) {
		t.Fatal("WaitFor returned although cond never held")
	}
	if d := time.Since(start); d < timeout {
		t.Errorf("WaitFor gave up after %s, before its %s timeout", d, timeout)
	}
	if want := "timed out after 200ms waiting for the thing"; f.fatal != want {
		t.Errorf("Fatalf(%q), want %q", f.fatal, want)
	}
	// Backing off to at most 20ms leaves room for about a dozen polls in
	// 200ms; a few is enough to show it polls rather than sleeping it out.
	if n := calls.Load(); n < 4 {
		t.Errorf("cond polled %d times in %s, want several", n, timeout)
	}
	if f.helper.Load() == 0 {
		t.Error("WaitFor did not call t.Helper")
	}
}

func TestSyncBufferConcurrent(t *testing.T) {
	var b qxtest.SyncBuffer
	if got := b.String(); got != "" {
		t.Fatalf("zero SyncBuffer holds %q", got)
	}
	const writers, lines = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range lines {
				line := fmt.Sprintf("w%d-%d\n", w, i)
				if n, err := b.Write([]byte(line)); n != len(line) || err != nil {
					t.Errorf("Write(%q) = %d, %v", line, n, err)
				}
				_ = b.String() // a reader racing the writers
			}
		}()
	}
	wg.Wait()

	got := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(got) != writers*lines {
		t.Fatalf("%d lines, want %d", len(got), writers*lines)
	}
	seen := make(map[string]bool, len(got))
	for _, l := range got {
		if seen[l] {
			t.Fatalf("line %q written twice", l)
		}
		seen[l] = true
	}
	for w := range writers {
		for i := range lines {
			if l := fmt.Sprintf("w%d-%d", w, i); !seen[l] {
				t.Fatalf("line %q missing (writes interleaved?)", l)
			}
		}
	}
}
