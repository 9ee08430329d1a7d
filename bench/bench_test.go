package bench

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary serve as the infra child, as qx-bench does.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == InfraCommand {
		os.Exit(InfraMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func TestResult(t *testing.T) {
	ratio2 := Target{Kind: MaxRatio, Limit: 2}
	tests := []struct {
		name string
		r    Result
		pass bool
		want []string // substrings of the line
	}{
		{"ratio met", Result{ID: "1a", Name: "x", Unit: "ms", Value: 30, Baseline: 20, Target: ratio2}, true,
			[]string{"1a", "value       30.0 ms", "baseline       20.0 ms", "ratio   1.50", "ratio <= 2.00", "PASS"}},
		{"ratio exactly at the limit", Result{Value: 40, Baseline: 20, Target: ratio2}, true, []string{"PASS"}},
		{"ratio missed", Result{Value: 41, Baseline: 20, Target: ratio2}, false, []string{"ratio   2.05", "FAIL"}},
		{"no baseline", Result{Value: 1, Target: ratio2}, false, []string{"FAIL"}},
		{"value met", Result{Unit: "MiB", Value: 36.5, Baseline: 14.6, Target: Target{Kind: MaxValue, Limit: 64}}, true,
			[]string{"<= 64.0 MiB", "PASS"}},
		{"value missed", Result{Unit: "ms", Value: 51, Baseline: 1, Target: Target{Kind: MaxValue, Limit: 50}}, false, []string{"FAIL"}},
		{"speed-up note", Result{Value: 10, Baseline: 200, Target: Target{Kind: MaxRatio, Limit: 0.1, Note: "(>= 10x faster)"}}, true,
			[]string{"ratio <= 0.10 (>= 10x faster)", "PASS"}},
		{"not measured", failed("5", "events", "ms", Target{Kind: MaxValue, Limit: 50}, errors.New("no server")), false,
			[]string{"value          - ms", "FAIL: no server"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.r.Pass(); got != tt.pass {
				t.Errorf("Pass() = %v, want %v", got, tt.pass)
			}
			line := tt.r.String()
			for _, w := range tt.want {
				if !strings.Contains(line, w) {
					t.Errorf("line %q lacks %q", line, w)
				}
			}
			if strings.Contains(line, "\n") {
				t.Errorf("line %q is more than one line", line)
			}
		})
	}
}

func TestMedianAndPercentile(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3}
	if got := median(ds); got != 3 {
		t.Errorf("median = %v, want 3", got)
	}
	if got := median([]int{4, 1, 6, 2}); got != 3 {
		t.Errorf("median of an even count = %v, want the mean of the middle two, 3", got)
	}
	if got := median[int](nil); got != 0 {
		t.Errorf("median of none = %v", got)
	}
	var hundred []time.Duration
	for i := 1; i <= 100; i++ {
		hundred = append(hundred, time.Duration(i))
	}
	for _, tt := range []struct {
		p    float64
		want time.Duration
	}{{50, 50}, {99, 99}, {100, 100}, {0, 1}} {
		if got := percentile(hundred, tt.p); got != tt.want {
			t.Errorf("p%v = %v, want %v", tt.p, got, tt.want)
		}
	}
	if ds[0] != 5 {
		t.Error("median sorted its argument")
	}
	if !math.IsNaN(Result{Value: 1}.Ratio()) {
		t.Error("ratio without a baseline is not NaN")
	}
}

func TestProcRSS(t *testing.T) {
	rss, hwm, err := procRSS(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if rss <= 0 || hwm < rss {
		t.Errorf("VmRSS %d, VmHWM %d", rss, hwm)
	}
}

// The figures, at toy sizes: the machinery runs end to end against real
// servers, tools and agents, and every figure comes out measured.
func TestFiguresSmall(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(GoRoot(), "src")
	s, err := Open(Options{
		Dir: t.TempDir(), Exe: exe, Fleet: []int{20}, Rounds: 1, Reps: 1,
		ComponentSize: 300 << 10, ImageSize: 4 << 20,
		EventAgents: 4, EventRate: 40, EventSeconds: 1,
		Sources: []string{filepath.Join(src, "strings"), filepath.Join(src, "bytes"), filepath.Join(src, "net")},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var results []Result
	for _, fig := range []func(context.Context) []Result{s.Fleet, s.Component, s.Image, s.Events} {
		start := time.Now()
		rs := fig(ctx)
		t.Logf("%s took %s", rs[0].ID, time.Since(start).Round(time.Millisecond))
		results = append(results, rs...)
	}
	ids := map[string]bool{}
	for _, r := range results {
		ids[r.ID] = true
		if r.Err != nil || !(r.Value > 0) || !(r.Baseline > 0) {
			t.Errorf("%s", r)
		}
	}
	for _, id := range []string{"1a", "1b", "2", "3", "5"} {
		if !ids[id] {
			t.Errorf("no figure %s in %v", id, results)
		}
	}
}
