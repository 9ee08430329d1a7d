// Package engine is the agent's update engine: it checks the signed release
// manifest, downloads and verifies artifacts, installs components (backup,
// swap, restart, health check, rollback), keeps its state in the journal so a
// crash at any step is finished or undone at the next start, and emits every
// state change as an event. Transports (the REST facade, the bus) drive it;
// it knows neither.
package engine

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/quantix-os/update-agent/internal/fetch"
	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/subjects"
)

// Fetcher is what the engine needs of the Update Server client.
type Fetcher interface {
	SignedManifest(ctx context.Context, channel string) ([]byte, error)
	Download(ctx context.Context, artifact, dst string, size int64, sha256hex string, progress fetch.Progress) error
}

// Publisher delivers an event to the bus and returns once the bus acked it.
// The engine keeps events in the journal until Publish succeeds, and hands
// them over in order.
type Publisher interface {
	Publish(ctx context.Context, ev journal.Pending) error
}

// Component is a component this host runs.
type Component struct {
	Dir           string   // absolute install directory
	Service       string   // OpenRC service to restart; empty: none
	Health        []string // argv run after the restart; exit 0 is healthy
	HealthTimeout time.Duration
}

// Options configure an Engine.
type Options struct {
	NodeID     string
	Root       string // host root: "/" in production
	StateDir   string
	Components map[string]Component
	RCService  string // "rc-service"
	// RestartTimeout bounds one service restart.
	RestartTimeout time.Duration
	Keys           []ed25519.PublicKey
	Fetcher        Fetcher
	// Defaults of the runtime settings (the config file's values).
	ServerURL     string
	Channel       string
	AutoCheck     bool
	AutoApply     bool
	CheckInterval time.Duration
	// MaxAttempts bounds how often an operation interrupted by a crash is resumed.
	MaxAttempts  int
	AgentVersion string
	Logger       *slog.Logger
	Now          func() time.Time
	// AB enables full-system updates; nil: components only.
	AB *AB
	// FreeSpace measures the file systems an update writes to before it
	// starts (see checkSpace); nil: statfs(2).
	FreeSpace FreeSpace
	// SpaceReserve is the bytes an update leaves free on each of them: a
	// hypervisor's VMs, logs and the agent's journal share those disks, and
	// an update must not be what fills one (the agent's config says 256 MiB).
	SpaceReserve int64
	// Hooks, for tests: called with a point name at every durable step.
	Failpoint func(name string)
}

// VersionsFile is where the installed versions are published on the host.
const VersionsFile = "etc/quantix/versions.json"

// Engine runs updates. Create with New, then Start.
type Engine struct {
	opts  Options
	log   *slog.Logger
	store *journal.Store
	now   func() time.Time

	applyMu sync.Mutex // serializes Apply so two commands cannot both start
	// cancelMu orders a Cancel against an operation that stops to wait for a
	// reboot, so the cancel reaches either the goroutine or the waiting op.
	cancelMu sync.Mutex

	mu        sync.Mutex
	status    subjects.StatusReport
	checked   map[string]*checked // by channel: last verified manifest
	running   *running
	subs      map[chan subjects.UpdateEvent]struct{}
	lastProg  time.Time
	publisher Publisher
	maint     Maintainer
	ctx       context.Context // set by Start
	started   chan struct{}
	// booted is closed once Start has decided a trial boot it found armed
	// (committed or rolled back, with the versions that result), or at
	// once when there was none; bootOnce guards the close.
	booted   chan struct{}
	bootOnce sync.Once

	kick     chan struct{} // wakes the outbox drainer
	settings chan struct{} // wakes the auto-check loop
	// checkAt is the end of a check answered before its time reached the
	// journal; checkKick wakes the loop that writes it (see recordCheck).
	checkAt   time.Time
	checkKick chan struct{}
	// delivered is the highest event seq the bus acknowledged in this run.
	// Outbox entries up to it are delivered but may still be in the journal
	// (see drainOutbox).
	delivered atomic.Uint64
	wg        sync.WaitGroup
}

type running struct {
	id     string
	cancel context.CancelCauseFunc
	done   chan struct{}
}

// New opens the journal, imports the installed versions on first start, and
// puts back any component an interrupted install left half-swapped, so the
// host is whole before anything else runs.
func New(opts Options) (*Engine, error) {
	if err := subjects.ValidNodeID(opts.NodeID); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	if opts.Fetcher == nil {
		return nil, errors.New("engine: no fetcher")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.RCService == "" {
		opts.RCService = "rc-service"
	}
	if opts.RestartTimeout == 0 {
		opts.RestartTimeout = time.Minute
	}
	if opts.MaxAttempts == 0 {
		opts.MaxAttempts = 3
	}
	if opts.CheckInterval == 0 {
		opts.CheckInterval = time.Hour
	}
	if opts.Channel == "" {
		opts.Channel = "dev"
	}
	if opts.FreeSpace == nil {
		opts.FreeSpace = statFS
	}
	if opts.Failpoint == nil {
		opts.Failpoint = func(string) {}
	}
	st, err := journal.Open(opts.StateDir)
	if err != nil {
		return nil, err
	}
	e := &Engine{
		opts:      opts,
		log:       opts.Logger.With("component", "engine"),
		store:     st,
		now:       opts.Now,
		checked:   map[string]*checked{},
		subs:      map[chan subjects.UpdateEvent]struct{}{},
		started:   make(chan struct{}),
		booted:    make(chan struct{}),
		kick:      make(chan struct{}, 1),
		settings:  make(chan struct{}, 1),
		checkKick: make(chan struct{}, 1),
	}
	if err := e.importVersions(); err != nil {
		return nil, err
	}
	if err := e.recover(); err != nil {
		return nil, err
	}
	e.status = subjects.StatusReport{NodeID: opts.NodeID, Status: subjects.StatusIdle}
	st.View(func(s *journal.State) {
		if s.Op != nil {
			e.status.Status = phaseStatus(s.Op.Phase)
			e.status.OperationID = s.Op.ID
		}
	})
	return e, nil
}

// SetPublisher attaches the bus. Call before Start.
func (e *Engine) SetPublisher(p Publisher) { e.publisher = p }

// Start runs the engine's background work until ctx is done: the operation a
// crash interrupted, the auto-check loop, and the outbox drainer. Wait waits
// for all of it.
func (e *Engine) Start(ctx context.Context) {
	e.mu.Lock()
	e.ctx = ctx
	e.mu.Unlock()
	close(e.started)
	op := e.op()
	trial := op != nil && op.Kind == subjects.UpdateTypeFull && op.Phase == journal.PhaseRebooting && op.Cancelled == ""
	e.resume()
	if !trial {
		e.markBooted()
	}
	e.wg.Add(1)
	go func() {
		// Never hold the announcement past shutdown.
		defer e.wg.Done()
		select {
		case <-ctx.Done():
			e.markBooted()
		case <-e.booted:
		}
	}()
	var releases int
	e.store.View(func(s *journal.State) { releases = len(s.Releases) })
	if releases > 0 {
		// Windows a crash kept from vDC: hand them back.
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.flushReleases()
		}()
	}
	e.wg.Add(2)
	go func() {
		defer e.wg.Done()
		e.autoCheckLoop(ctx)
	}()
	go func() {
		defer e.wg.Done()
		e.checkTimeLoop(ctx)
	}()
	if e.publisher != nil {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.drainOutbox(ctx)
		}()
	}
}

// Booted is closed once the agent knows what it booted: after Start decided
// a trial boot of a full-system update (commit or fall back, see afterBoot)
// and recorded the outcome, or at once when no trial was armed. The bus
// announces the agent after it, so the online event carries the versions
// that now run.
func (e *Engine) Booted() <-chan struct{} { return e.booted }

func (e *Engine) markBooted() { e.bootOnce.Do(func() { close(e.booted) }) }

// Wait blocks until every goroutine Start began has returned.
func (e *Engine) Wait() { e.wg.Wait() }

// NodeID is the node this engine updates.
func (e *Engine) NodeID() string { return e.opts.NodeID }

// Status is the current status, with the installed versions.
func (e *Engine) Status() subjects.StatusReport {
	e.mu.Lock()
	s := e.status
	if s.Progress != nil {
		p := *s.Progress
		s.Progress = &p
	}
	e.mu.Unlock()
	s.Versions = e.Versions()
	return s
}

// Versions are the installed versions.
func (e *Engine) Versions() subjects.Versions {
	var v subjects.Versions
	e.store.View(func(s *journal.State) {
		v.OS = s.Versions.OS
		v.Components = make(map[string]string, len(s.Versions.Components))
		for k, c := range s.Versions.Components {
			v.Components[k] = c
		}
	})
	return v
}

// CurrentVersion is the release version last fully installed.
func (e *Engine) CurrentVersion() string {
	var v string
	e.store.View(func(s *journal.State) { v = s.CurrentVersion })
	return v
}

// History is the update history, oldest first.
func (e *Engine) History() []journal.Entry {
	var h []journal.Entry
	e.store.View(func(s *journal.State) { h = append(h, s.History...) })
	return h
}

// Journal exposes the store, for the bus (seq, outbox) and tests.
func (e *Engine) Journal() *journal.Store { return e.store }

// Subscribe returns a channel of every event the engine emits from now on.
// A subscriber that falls behind loses events rather than slowing updates.
func (e *Engine) Subscribe() (<-chan subjects.UpdateEvent, func()) {
	ch := make(chan subjects.UpdateEvent, 256)
	e.mu.Lock()
	e.subs[ch] = struct{}{}
	e.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			e.mu.Lock()
			delete(e.subs, ch)
			e.mu.Unlock()
		})
	}
}

func phaseStatus(p journal.Phase) subjects.Status {
	switch p {
	case journal.PhaseDownloading, journal.PhaseMaintenance:
		return subjects.StatusDownloading
	case journal.PhaseRebooting:
		return subjects.StatusRebootRequired
	default:
		return subjects.StatusApplying
	}
}

// importVersions reads {root}/etc/quantix/versions.json on the first start;
// after that the journal is the truth and the file is rewritten from it.
func (e *Engine) importVersions() error {
	var done bool
	e.store.View(func(s *journal.State) { done = s.Initialized })
	if done {
		return nil
	}
	v, err := readVersions(filepath.Join(e.opts.Root, VersionsFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("engine: %w", err)
	}
	return e.store.Update(func(s *journal.State) error {
		s.Initialized = true
		s.Versions = v
		if s.Versions.Components == nil {
			s.Versions.Components = map[string]string{}
		}
		s.CurrentVersion = v.OS
		return nil
	})
}

// newID returns a fresh event or operation id.
func newID() string { return uuid.NewString() }
