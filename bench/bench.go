// Package bench measures the agent against baselines run in the same process
// or the same run, for `make bench` (cmd/qx-bench):
//
//  1. fleet check: N nodes, each the agent's real engine and bus code on its
//     own NATS connection, answering a broadcast carrying the signed manifest,
//     against a bare NATS scatter-gather (the floor) and against the seed's
//     model, REST calls to every node's facade with 64 in flight;
//  2. component pipeline: download, verification and install of a tar.zst of
//     real files over loopback HTTP, against curl, sha256sum, zstd | tar, sync;
//  3. image write: a 1 GiB image into a slot file with read-back, against
//     zstd -dc | dd conv=fsync and sha256sum;
//  4. memory: the agent binary's peak and idle RSS through a full A/B update;
//  5. events: progress event to JetStream consumer latency at 1,000 events a
//     second from 100 agents, against bare JetStream publishes.
//
// Every figure is a Result: one line with the value, the baseline, their
// ratio, the target and PASS or FAIL. docs/performance.md explains where the
// time goes.
package bench

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Kind says how a Result's target is judged.
type Kind int

// Target kinds.
const (
	// MaxRatio passes when Value/Baseline <= Limit.
	MaxRatio Kind = iota
	// MaxValue passes when Value <= Limit (in the Result's unit); the
	// baseline is shown for scale.
	MaxValue
)

// Target is what a figure must reach.
type Target struct {
	Kind  Kind
	Limit float64
	Note  string // shown after the target, e.g. "(>= 10x faster)"
}

// Result is one measured figure.
type Result struct {
	ID       string // "1a", "2", ...
	Name     string // what was measured
	Unit     string // "ms", "s", "MiB"
	Value    float64
	Baseline float64
	Target   Target
	// Err is set when the figure could not be measured; it fails.
	Err error
}

// Ratio is Value/Baseline, or NaN without a baseline.
func (r Result) Ratio() float64 {
	if r.Baseline <= 0 {
		return math.NaN()
	}
	return r.Value / r.Baseline
}

// Pass reports whether the figure met its target.
func (r Result) Pass() bool {
	if r.Err != nil || math.IsNaN(r.Value) {
		return false
	}
	switch r.Target.Kind {
	case MaxRatio:
		ratio := r.Ratio()
		return !math.IsNaN(ratio) && ratio <= r.Target.Limit
	case MaxValue:
		return r.Value <= r.Target.Limit
	}
	return false
}

// String is the figure's one line: value, baseline, ratio, target, verdict.
func (r Result) String() string {
	verdict := "PASS"
	if !r.Pass() {
		verdict = "FAIL"
	}
	var target string
	switch r.Target.Kind {
	case MaxRatio:
		target = fmt.Sprintf("ratio <= %.2f", r.Target.Limit)
	case MaxValue:
		target = fmt.Sprintf("<= %s %s", num(r.Target.Limit), r.Unit)
	}
	if r.Target.Note != "" {
		target += " " + r.Target.Note
	}
	line := fmt.Sprintf("%-3s %-72s value %10s %-3s  baseline %10s %-3s  ratio %6.2f  target %-35s %s",
		r.ID, r.Name, num(r.Value), r.Unit, num(r.Baseline), r.Unit, r.Ratio(), target, verdict)
	if r.Err != nil {
		line += ": " + r.Err.Error()
	}
	return line
}

// num formats a figure with three significant digits or so.
func num(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// failed is a Result for a figure that could not be measured.
func failed(id, name, unit string, t Target, err error) Result {
	return Result{ID: id, Name: name, Unit: unit, Value: math.NaN(), Baseline: math.NaN(), Target: t, Err: err}
}

// median of xs (the mean of the middle two of an even count); zero for none.
func median[T ~int | ~int64](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentile p (0-100) of ds by nearest rank; zero for none.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

func ms(d time.Duration) float64  { return float64(d) / float64(time.Millisecond) }
func sec(d time.Duration) float64 { return d.Seconds() }

// MiB is a byte count in mebibytes.
func MiB(n int64) float64 { return float64(n) / (1 << 20) }
